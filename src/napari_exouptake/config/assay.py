"""``AssayConfig``: every section in one frozen object, built from a mapping with one-line
errors (pydantic's validation errors turned into messages that name the key)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from .channels import ChannelsConfig
from .errors import ConfigError
from .fields import _Frozen
from .sections import (
    CollagenConfig,
    PositivityConfig,
    SegmentationConfig,
    SpotsConfig,
    TubesConfig,
)


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
