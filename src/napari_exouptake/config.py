"""Assay configuration: one frozen, validated object shared by every face.

The same :class:`AssayConfig` drives the napari widgets, the ``exouptake`` command and the
Python API, so a setting tuned by clicking gives the very same numbers in a headless batch.
It round-trips to YAML (:func:`load_config`, :func:`save_config`, :func:`dump_config`).

Every user mistake (an unknown key, a wrong type, a missing channel role) raises
:class:`ConfigError`, a :class:`ValueError` whose message names the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RADIUS_PX",
    "AssayConfig",
    "ChannelsConfig",
    "CollagenConfig",
    "ConfigError",
    "MarkerConfig",
    "PositivityConfig",
    "PositivityRule",
    "ResolvedChannels",
    "SegmentationConfig",
    "SpotsConfig",
    "TubesConfig",
    "config_hash",
    "dump_config",
    "load_config",
    "resolve_channel",
    "save_config",
    "template_config",
]

ChannelRef = Union[int, str]

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")

#: punctum radius in pixels (sqrt(2) x the PSF's Gaussian sigma) when none is given or measured:
#: the default of ``spots.radius_px``; the one place this number is written
DEFAULT_RADIUS_PX = 1.8


class ConfigError(ValueError):
    """A user mistake in an assay config: the message names the key and what is allowed."""


def _allows_bool(annotation: Any) -> bool:
    """True when a field's type admits true/false (bool, Any, or a union holding bool)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_allows_bool(a) for a in get_args(annotation) if a is not None)


class _Frozen(BaseModel):
    # allow_inf_nan=False: .inf / .nan are refused for every float (finite numbers only)
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: Any) -> Any:
        """``radius_px: true`` would otherwise be read as 1.0: refuse true/false for numbers."""
        items = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(v, bool) for v in items):
            field = cls.model_fields.get(info.field_name)
            if field is not None and not _allows_bool(field.annotation):
                if get_origin(field.annotation) is Literal:
                    return value
                raise ValueError("true/false is not allowed here (a number is expected)")
        return value


def _check_channel_ref(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a channel is a 0-based index or a channel name, not true/false")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"channel index must be >= 0, got {value}")
    if isinstance(value, str) and not value.strip():
        raise ValueError("channel name must not be empty")
    return value


def _check_threshold(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("threshold must be 'auto' or a number")
    return float(value)


Threshold = Annotated[Union[Literal["auto"], float], BeforeValidator(_check_threshold)]


def _check_radius(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("radius_px must be 'auto' or a number of pixels")
    if not np.isfinite(value):
        raise ValueError(f"radius_px must be a finite number of pixels, got {value}")
    if value <= 0:
        raise ValueError(f"radius_px must be greater than 0 (pixels), got {value}")
    return float(value)


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
CheckedChannel = Annotated[ChannelRef, BeforeValidator(lambda v: _check_channel_ref(v))]


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


class MarkerConfig(_Frozen):
    """One immunofluorescence marker channel (e.g. CD31, VEGF-A, Collagen I)."""

    channel: CheckedChannel
    kind: Literal["angiogenesis", "collagen", "other"] = "other"
    positivity: PositivityRule | None = None


class ResolvedChannels(_Frozen):
    """Channel roles resolved to 0-based indices for one image."""

    nucleus: int | None = None
    cell: int | None = None
    exosome: int | None = None
    markers: dict[str, int] = Field(default_factory=dict)


def resolve_channel(ref: ChannelRef | None, channel_names: Sequence[str], key: str) -> int | None:
    """Resolve one channel reference (0-based index or channel name) to an index.

    Parameters
    ----------
    ref : int, str or None
    channel_names : sequence of str
        The image's channel names.
    key : str
        The config key the reference came from, named in the error (``channels.exosome``,
        ``tubes.channel`` ...).

    Raises
    ------
    ConfigError
        When the index is out of range or no channel has that name (case-insensitive).
    """
    if ref is None:
        return None
    names = list(channel_names)
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(names)) or "none"
    if isinstance(ref, int):
        if ref >= len(names):
            raise ConfigError(
                f"{key}: channel {ref} does not exist: the image has "
                f"{len(names)} channel(s) ({listing})"
            )
        return ref
    folded = [n.casefold() for n in names]
    if ref.casefold() in folded:
        return folded.index(ref.casefold())
    if ref.isdigit() and int(ref) < len(names):
        return int(ref)
    raise ConfigError(f"{key}: no channel named {ref!r}; the image's channels are ({listing})")


class ChannelsConfig(_Frozen):
    """Channel roles: each a 0-based index or a channel name from the file's metadata."""

    nucleus: ChannelRef | None = None
    cell: ChannelRef | None = None
    exosome: ChannelRef | None = None
    markers: dict[str, MarkerConfig] = Field(default_factory=dict)

    @field_validator("nucleus", "cell", "exosome", mode="before")
    @classmethod
    def _ref(cls, v: Any) -> Any:
        return None if v is None else _check_channel_ref(v)

    @field_validator("markers")
    @classmethod
    def _marker_names(cls, v: dict[str, MarkerConfig]) -> dict[str, MarkerConfig]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(
                    f"marker name {name!r} must start with a letter and use only letters, digits "
                    "and '_' (it becomes a column prefix such as cd31_mean_intensity)"
                )
        return v

    def resolve(self, channel_names: Sequence[str]) -> ResolvedChannels:
        """Resolve every role to a channel index of an image.

        Parameters
        ----------
        channel_names : sequence of str
            The image's channel names, one per channel (``ImageData.channel_names``).

        Returns
        -------
        ResolvedChannels

        Raises
        ------
        ConfigError
            When an index is out of range or a name is not among ``channel_names``.
        """
        names = list(channel_names)

        def one(role: str, ref: ChannelRef | None) -> int | None:
            return resolve_channel(ref, names, f"channels.{role}")

        return ResolvedChannels(
            nucleus=one("nucleus", self.nucleus),
            cell=one("cell", self.cell),
            exosome=one("exosome", self.exosome),
            markers={k: one(f"markers.{k}.channel", m.channel) for k, m in self.markers.items()},
        )


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


class AssayConfig(_Frozen):
    """Everything that defines one assay analysis.

    Build it from YAML with :func:`load_config`, from a dict with :meth:`from_dict`, or with
    keyword arguments. It is immutable: use ``cfg.model_copy(update={...})`` or
    :meth:`with_updates` for variants.
    """

    channels: ChannelsConfig = ChannelsConfig()
    pixel_size_um: float | None = Field(None, gt=0)
    axes: str | None = None
    segmentation: SegmentationConfig = SegmentationConfig()
    spots: SpotsConfig = SpotsConfig()
    positivity: PositivityConfig = PositivityConfig()
    tubes: TubesConfig | None = None
    collagen: CollagenConfig | None = None
    conditions: dict[str, str] = Field(default_factory=dict)
    big_image_px: int = Field(40_000_000, ge=0)

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: str | None) -> str | None:
        if v is None:
            return v
        up = v.upper()
        letters_ok = re.fullmatch(r"[TCZYXS]+", up) and len(set(up)) == len(up)
        if not letters_ok or not {"Y", "X"} <= set(up):
            raise ValueError(
                f"axes {v!r} must use each of the letters T, C, Z, Y, X (S for RGB samples) at "
                "most once and include Y and X, e.g. 'CYX', 'ZCYX', 'TZCYX'"
            )
        return up

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AssayConfig:
        """Validate a plain mapping (e.g. parsed YAML); raise :class:`ConfigError` on mistakes."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"an assay config is a mapping of keys (channels, segmentation, ...), got "
                f"{type(data).__name__}"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc)) from None

    def with_updates(self, **sections: Any) -> AssayConfig:
        """Return a validated copy with top-level keys replaced (dicts are merged one level)."""
        data = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                merged = dict(data[key])
                merged.update(value)
                value = merged
            data[key] = value
        return AssayConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe dict that :meth:`from_dict` turns back into an equal config."""
        return self.model_dump(mode="json")

    def image_level_only(self) -> bool:
        """True when only image-level readouts (tubes, collagen) run: ``segmentation.mode:
        none``, or no nucleus/cell/exosome/marker channel given while tubes or collagen is."""
        if self.segmentation.mode == "none":
            return True
        ch = self.channels
        no_cells = ch.nucleus is None and ch.cell is None and ch.exosome is None
        return no_cells and not ch.markers and (self.tubes is not None or self.collagen is not None)

    def check_roles(self, task: Literal["segment", "analyze", "quantify"] = "analyze") -> None:
        """Raise :class:`ConfigError` when a channel role that ``task`` needs is missing.

        ``segment`` needs the roles of ``segmentation.mode`` (``nuclei``/``expand``: nucleus;
        ``cells``: cell or nucleus); ``analyze`` needs those and ``exosome``; ``quantify``
        (labels given, no segmentation) needs only ``exosome``. An image-level-only config
        (:meth:`image_level_only`) needs ``tubes`` or ``collagen`` and nothing to segment.
        """
        if task == "analyze" and self.image_level_only():
            if self.tubes is None and self.collagen is None:
                raise ConfigError(
                    "segmentation.mode 'none' analyses no cells: give an image-level readout "
                    "(tubes: {channel: ...} or collagen: {channel: ...})"
                )
            return
        if task == "segment" and self.segmentation.mode == "none":
            raise ConfigError(
                "segmentation.mode 'none' segments nothing: choose cells, nuclei or expand"
            )
        if task in ("segment", "analyze"):
            mode = self.segmentation.mode
            if mode in ("nuclei", "expand") and self.channels.nucleus is None:
                raise ConfigError(
                    f"segmentation.mode {mode!r} needs channels.nucleus (the nuclear stain "
                    "channel): give its 0-based index or its name"
                )
            if mode == "cells" and self.channels.cell is None and self.channels.nucleus is None:
                raise ConfigError(
                    "segmentation.mode 'cells' needs channels.cell (cytoplasm/membrane stain) "
                    "or at least channels.nucleus: give a 0-based index or a channel name"
                )
        if task in ("analyze", "quantify"):
            self.require("exosome")

    def require(self, *roles: str) -> None:
        """Raise :class:`ConfigError` unless every named channel role is set.

        Parameters
        ----------
        roles : str
            ``"nucleus"``, ``"cell"`` or ``"exosome"``.
        """
        missing = [r for r in roles if getattr(self.channels, r) is None]
        if missing:
            raise ConfigError(
                "missing required channel role(s): "
                + ", ".join(f"channels.{r}" for r in missing)
                + " (give a 0-based channel index or the channel's name)"
            )


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # drop pydantic's union-branch tags such as "int" / "literal['auto']" / "function-after"
        key = ".".join(p for p in loc if not _is_union_tag(p)) or "(top level)"
        etype = err["type"]
        if etype == "extra_forbidden":
            parent = _model_at(AssayConfig, [p for p in loc[:-1] if not _is_union_tag(p)])
            allowed = ", ".join(parent.model_fields) if parent is not None else "see the template"
            lines.append(f"unknown config key {key!r}; allowed here: {allowed}")
        elif etype == "missing":
            lines.append(f"config key {key!r} is required")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            got = err.get("input")
            if isinstance(got, (dict, list)):
                lines.append(f"config key {key!r}: {msg}")
            else:
                lines.append(f"config key {key!r}: {msg} (got {got!r})")
    # de-duplicate messages from union branches while keeping order
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
    return "; ".join(seen)


def _is_union_tag(part: str) -> bool:
    return part in {"int", "str", "float", "bool"} or part.startswith(("literal[", "function-"))


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    current: Any = model
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if part in current.model_fields:
            current = _unwrap_model(current.model_fields[part].annotation)
        elif current is ChannelsConfig or current is None:
            return None
        else:
            # a key of a dict-valued field (e.g. a marker name)
            current = _unwrap_model(current)
    if current is None:
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


# -- YAML --------------------------------------------------------------------------------------


#: Largest config file or YAML string, bytes (a full config is a few kB).
MAX_CONFIG_BYTES = 1024**2
#: Deepest nesting of mappings and lists in a config (the real one needs 4).
MAX_CONFIG_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and deep nesting (one-line errors)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"line {mark.line + 1}: nested deeper than {MAX_CONFIG_DEPTH} levels; "
                    "an assay config needs a few"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor says so
                break
            if first is not None:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} appears twice (first on "
                    f"line {first}); keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(raw: bytes | str, origin: str) -> Any:
    """Size limit, UTF-8 check, then YAML with the hardened loader."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{origin}: {len(raw):,} bytes is too large for an assay config "
            f"(limit {MAX_CONFIG_BYTES:,} bytes)"
        )
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{origin}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at position "
                f"{exc.start}); save the file as UTF-8"
            ) from None
    else:
        text = raw
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply") from None


def load_config(source: str | Path | Mapping[str, Any]) -> AssayConfig:
    """Load an assay config from a YAML file path, a YAML string or a mapping.

    YAML is read with a safe loader that refuses duplicate keys, nesting deeper than
    ``MAX_CONFIG_DEPTH`` and text larger than ``MAX_CONFIG_BYTES`` or not UTF-8.

    Raises
    ------
    ConfigError
        For a missing file, invalid YAML or any invalid key or value (the message names it).
    """
    if isinstance(source, Mapping):
        return AssayConfig.from_dict(source)
    raw: bytes | str
    origin: str
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"{path}: {size:,} bytes is too large for an assay config "
                    f"(limit {MAX_CONFIG_BYTES:,} bytes)"
                )
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror or exc}") from None
        origin = str(path)
    else:
        raw = str(source)
        origin = "<string>"
    data = _parse_yaml(raw, origin)
    try:
        return AssayConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def dump_config(config: AssayConfig) -> str:
    """YAML text of a config; :func:`load_config` of it gives an equal config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def save_config(config: AssayConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML to ``path`` and return the path."""
    path = Path(path)
    path.write_text(dump_config(config), encoding="utf-8")
    return path


def config_hash(config: AssayConfig) -> str:
    """SHA-256 (hex) of the config's canonical JSON; equal configs give equal hashes."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


TEMPLATE = """\
# napari-exouptake assay configuration (YAML).
# Load with `exouptake analyze IMAGES --config THIS_FILE --out DIR` or the napari widget.

channels:                 # 0-based channel index, or the channel name from the file's metadata
  nucleus: 0              # nuclear stain (DAPI/Hoechst); needed for modes nuclei and expand
  cell: 1                 # cytoplasm/membrane stain (CellMask, phalloidin); used by mode cells
  exosome: 2              # labelled-exosome channel (PKH26/PKH67/DiI/DiD or CD63-GFP)
  markers:                # optional immunofluorescence markers: name -> channel and kind
    cd31:
      channel: 3
      kind: angiogenesis  # angiogenesis | collagen | other
    col1:
      channel: 4
      kind: collagen
pixel_size_um: null       # um per pixel; null = read from the file's metadata
axes: null                # override the axis order read from the file, e.g. CYX, ZCYX, TCZYX

segmentation:
  mode: cells             # cells (cytoplasm + nucleus) | nuclei | expand (cells grown from nuclei)
                          # | none (image-level readouts only: tubes/collagen; implied when no
                          # nucleus/cell/exosome/marker channel is given)
  model: demo-cells       # demo-cells | demo-nuclei | cyto3 | nuclei | cpsam | path to a model file
  nuclei_model: null      # model for nuclei; null = demo-nuclei for demo models, else nuclei
  diameter_px: 30         # typical cell diameter in pixels; null = let Cellpose estimate it
  device: auto            # auto (CUDA > MPS > CPU) | cpu | cuda | cuda:N | mps
  expand_method: distance # mode expand: distance (fixed growth) | watershed (on cytoplasm signal)
  expand_um: 5.0          # mode expand: how far cells reach beyond the nucleus, in um
  do_3d: false            # z-stacks: true = 3D segmentation
  stitch_threshold: 0.0   # z-stacks: > 0 = 2D per plane, stitched at this IoU
  flow_threshold: 0.4     # Cellpose flow error threshold (higher = more, looser cells)
  cellprob_threshold: 0.0 # Cellpose cell probability threshold (lower = larger cells)
  batch_size: 8           # tiles per network pass (GPU memory)
  min_size_px: 15         # drop objects smaller than this many pixels
  resample: false         # Cellpose resample (slower, smoother outlines)
  tile_overlap: 0.1       # fraction of overlap between tiles
  normalize: true         # percentile-normalise channels before the network
  block_size_px: 4096     # bigger images: segmented in blocks of this size (+ 2 diameters of
                          # context) and stitched, bounding memory; null = always whole

spots:
  radius_px: {radius_px}          # punctum radius in pixels, sqrt(2) x the PSF's Gaussian sigma;
                          # auto = measured on the image's own puncta (recorded in run.json)
  threshold: auto         # auto (decoy false-discovery control, never below SNR 5), or a
                          # number (amplitude above local background, image units)
  fdr: 0.05               # sensitivity of the auto threshold: accepted false-discovery rate
  background_radius_px: null  # local background window; null = derived from radius_px
  min_distance_px: null   # minimum distance between puncta; null = derived from radius_px
  cluster_estimate: true  # estimate EVs per bright aggregate from the typical single punctum
  exclude_border_px: 0    # ignore puncta this close to the image border

positivity:                 # see docs/positivity.md
  control_condition: null   # e.g. dye_only: with no exosome rule below, EV-positive = more
                            # puncta than the 95th percentile of this condition's cells
  # exosome:                # uncomment to set the uptake rule yourself; default without a
  #   method: fixed         # control: exo_spot_count >= 1. fixed | auto | control
  #   value: 1
  #   metric: exo_spot_count  # or exo_spot_estimate, exo_integrated_intensity ...
  #   percentile: 95.0      # control: cut-off = this percentile of the control's cells
  markers:                  # default rule for every marker without its own positivity
    method: auto            # auto: two-population fit on log intensity (warns when the run
    value: null             # has no separate positive population); fixed; control
    metric: mean_intensity
    percentile: 95.0

tubes: null               # e.g. {channel: 3}: tube-formation network analysis on that channel;
                          # brightfield/phase contrast: {channel: 0, polarity: auto} (auto |
                          # bright | dark; the well's rim is excluded when found)
collagen: null            # e.g. {channel: 4}: collagen area and fibre architecture

conditions: {}            # file-name glob -> condition, e.g. {"*ctrl*": untreated, "*EV*": ev}
big_image_px: 40000000    # planes larger than this (pixels) are analysed tile by tile in
                          # bounded memory (puncta and per-cell table; docs/big_images.md)
"""


def template_config() -> str:
    """The fully commented default config printed by ``exouptake config --template``."""
    return TEMPLATE.replace("{radius_px}", f"{DEFAULT_RADIUS_PX:g}")
