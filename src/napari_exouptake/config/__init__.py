"""Assay configuration: one frozen, validated object shared by every face.

The same :class:`AssayConfig` drives the napari widgets, the ``exouptake`` command and the
Python API, so a setting tuned by clicking gives the very same numbers in a headless batch.
It round-trips to YAML (:func:`load_config`, :func:`save_config`, :func:`dump_config`).

Every user mistake (an unknown key, a wrong type, a missing channel role) raises
:class:`ConfigError`, a :class:`ValueError` whose message names the key and what is allowed.
"""

from __future__ import annotations

from .assay import AssayConfig
from .channels import ChannelsConfig, MarkerConfig, ResolvedChannels, resolve_channel
from .errors import ConfigError
from .fields import DEFAULT_RADIUS_PX, ChannelRef, CheckedChannel, Threshold
from .sections import (
    CONTROL_EXO_RULE,
    CollagenConfig,
    PositivityConfig,
    PositivityRule,
    SegmentationConfig,
    SpotsConfig,
    TubesConfig,
)
from .template import TEMPLATE, template_config
from .yaml_io import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    config_hash,
    dump_config,
    load_config,
    save_config,
)

__all__ = [
    "CONTROL_EXO_RULE",
    "DEFAULT_RADIUS_PX",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "TEMPLATE",
    "AssayConfig",
    "ChannelRef",
    "ChannelsConfig",
    "CheckedChannel",
    "CollagenConfig",
    "ConfigError",
    "MarkerConfig",
    "PositivityConfig",
    "PositivityRule",
    "ResolvedChannels",
    "SegmentationConfig",
    "SpotsConfig",
    "Threshold",
    "TubesConfig",
    "config_hash",
    "dump_config",
    "load_config",
    "resolve_channel",
    "save_config",
    "template_config",
]
