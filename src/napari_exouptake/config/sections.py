"""The settings sections besides channels: segmentation, spots (retired keys accepted with a
warning), positivity rules, tubes and collagen; one frozen model per section."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .fields import DEFAULT_RADIUS_PX, CheckedChannel, Threshold, _check_radius, _Frozen

# the name of the module these models came from: log lines read "napari_exouptake.config"
logger = logging.getLogger("napari_exouptake.config")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")

_RETIRED_SPOT_KEYS = frozenset(
    {
        "auto_method",
        "threshold_k",
        "max_width_factor",
        "min_relative_amplitude",
        "split_merged",
        "residual_pass",
        "whiten",
    }
)


class PositivityRule(_Frozen):
    """How a cell is called positive for one readout.

    Attributes
    ----------
    method : {"fixed", "auto", "control"}
        ``fixed``: ``metric >= value``. ``auto``: threshold found from the data (see
        :mod:`napari_exouptake.measure`). ``control``: the ``percentile`` of the metric in the
        cells of the control condition (for example dye-only control cells).
    value : float or None
        The threshold for ``fixed``.
    metric : str
        Column the rule applies to (``exo_spot_count``, ``mean_intensity`` ...).
    percentile : float
        Percentile (0-100) of control cells for ``control`` (default 95: at most 5 % of the
        control's cells are called positive).
    """

    method: Literal["fixed", "auto", "control"] = "auto"
    value: float | None = None
    metric: str = "mean_intensity"
    percentile: float = Field(95.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> PositivityRule:
        if self.method == "fixed" and self.value is None:
            raise ValueError("method 'fixed' needs a number in 'value'")
        return self


class SegmentationConfig(_Frozen):
    """Cellpose segmentation settings (see :mod:`napari_exouptake.segmentation`)."""

    mode: Literal["cells", "nuclei", "expand", "none"] = "cells"
    model: str = "demo-cells"
    nuclei_model: str | None = None
    diameter_px: float | None = Field(30.0, gt=0)
    device: str = "auto"
    expand_method: Literal["distance", "watershed"] = "distance"
    expand_um: float = Field(5.0, ge=0)
    do_3d: bool = False
    stitch_threshold: float = Field(0.0, ge=0.0, le=1.0)
    flow_threshold: float = Field(0.4, ge=0.0)
    cellprob_threshold: float = 0.0
    batch_size: int = Field(8, ge=1)
    min_size_px: int = Field(15, ge=0)
    resample: bool = False
    tile_overlap: float = Field(0.1, ge=0.0, le=0.9)
    normalize: bool = True
    #: images larger than this on a side are segmented in blocks of at most this size (plus
    #: twice the diameter of context on every side) and the labels stitched
    #: (:mod:`napari_exouptake.segmentation.blocks`); null: always the whole image at once
    block_size_px: int | None = Field(4096, ge=128)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return v


class SpotsConfig(_Frozen):
    """Exosome punctum detection settings (see :mod:`napari_exouptake.spots`).

    Settings of earlier versions that the detector no longer has (``auto_method``,
    ``threshold_k``, ``max_width_factor``, ``min_relative_amplitude``, ``split_merged``,
    ``residual_pass``, ``whiten``) are accepted and ignored with a warning.
    """

    radius_px: Annotated[Union[Literal["auto"], float], BeforeValidator(_check_radius)] = (
        DEFAULT_RADIUS_PX
    )
    threshold: Threshold = "auto"
    fdr: float = Field(0.05, gt=0, lt=1)
    background_radius_px: float | None = Field(None, gt=0)
    min_distance_px: float | None = Field(None, gt=0)
    cluster_estimate: bool = True
    exclude_border_px: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = sorted(set(data) & _RETIRED_SPOT_KEYS)
            if old:
                logger.warning(
                    "spots: %s no longer exist(s) in the detector and is ignored",
                    ", ".join(old),
                )
                data = {k: v for k, v in data.items() if k not in _RETIRED_SPOT_KEYS}
        return data


#: the uptake rule implied by ``positivity.control_condition`` when no ``exosome`` rule is given
CONTROL_EXO_RULE = {"method": "control", "metric": "exo_spot_count", "percentile": 95.0}


class PositivityConfig(_Frozen):
    """Positivity calls for uptake and markers.

    ``exosome`` defaults to "at least one punctum"; ``markers`` is the default rule for every
    marker without its own ``positivity``. ``control_condition`` names the condition whose cells
    set ``control`` thresholds (for PKH-type dyes, the dye-only control).
    """

    exosome: PositivityRule = PositivityRule(method="fixed", value=1, metric="exo_spot_count")
    markers: PositivityRule = PositivityRule(method="auto", metric="mean_intensity")
    control_condition: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _control_sets_uptake_cutoff(cls, data: Any) -> Any:
        """With a ``control_condition`` and no ``exosome`` rule, the control sets the cut-off:
        EV-positive = more puncta than the control's 95th percentile (``CONTROL_EXO_RULE``)."""
        if isinstance(data, Mapping) and data.get("control_condition") and "exosome" not in data:
            data = {**data, "exosome": CONTROL_EXO_RULE}
        return data


class TubesConfig(_Frozen):
    """Tube-formation network analysis on one channel (see :mod:`napari_exouptake.tubes`)."""

    channel: CheckedChannel
    polarity: Literal["auto", "bright", "dark"] = "auto"
    bright_tubes: bool | None = None
    method: Literal["ridge", "intensity"] = "ridge"
    tube_width_px: tuple[float, float] = (2.0, 12.0)
    ridge_k: float = Field(4.0, gt=0)
    clump_min_diameter_px: float | None = Field(None, ge=0)
    exclude_rim: Literal["auto"] | bool = "auto"
    max_side_px: int | None = Field(2048, ge=64)
    smoothing_sigma_px: float = Field(2.0, ge=0)
    threshold: Threshold = "auto"
    min_segment_length_px: float = Field(10.0, ge=0)
    min_mesh_area_px: float = Field(100.0, ge=0)
    background_radius_px: float | None = Field(25.0, gt=0)
    min_object_area_px: float | None = Field(None, ge=0)
    junction_merge_px: float | None = Field(None, ge=0)


class CollagenConfig(_Frozen):
    """Collagen area and fibre architecture on one channel (:mod:`napari_exouptake.collagen`)."""

    channel: CheckedChannel
    threshold: Threshold = "auto"
    tensor_sigma_px: float = Field(2.0, gt=0)
    ridge_sigma_px: float = Field(2.0, gt=0)
    ring_width_px: float = Field(10.0, ge=0)
    threshold_method: Literal["otsu", "li", "triangle"] = "otsu"
    bright_collagen: bool = True
    smoothing_sigma_px: float = Field(1.0, ge=0)
    gradient_sigma_px: float = Field(1.0, gt=0)
    ridge_threshold: Threshold = "auto"
    min_fibre_length_px: float = Field(10.0, ge=0)
    n_angle_bins: int = Field(12, ge=2)
    #: images with a longer side above this are analysed binned (``collagen_analysis_binning``)
    max_side_px: int | None = Field(2048, ge=64)
