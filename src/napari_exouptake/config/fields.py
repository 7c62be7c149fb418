"""What every config section shares: the frozen base model, channel and threshold field
types with their checks, and ``DEFAULT_RADIUS_PX``."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator

ChannelRef = Union[int, str]

#: punctum radius in pixels (sqrt(2) x the PSF's Gaussian sigma) when none is given or measured:
#: the default of ``spots.radius_px``; the one place this number is written
DEFAULT_RADIUS_PX = 1.8


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


CheckedChannel = Annotated[ChannelRef, BeforeValidator(lambda v: _check_channel_ref(v))]
