"""Input checks shared by the measurement steps: labels, channels, an ``ImageData``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_EXO = "exosome"


def _check_labels(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D (Y, X) or 3D (Z, Y, X) label image, got {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); 0 is background")
    return arr


def _check_channel(arr: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == len(shape) + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == len(shape) - 1 and len(shape) == 3 and shape[0] == 1:
        a = a[None]
    if a.shape != shape:
        raise ValueError(f"channel {name!r} has shape {a.shape} but the labels have shape {shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"channel {name!r} must be real numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"channel {name!r} contains NaN or infinite pixels")
    return a


def _channels_dict(channels: Any, resolved: Any) -> dict[str, np.ndarray]:
    """Turn a mapping, or an ``ImageData`` plus ``ResolvedChannels``, into name -> array."""
    if isinstance(channels, Mapping):
        return dict(channels)
    if hasattr(channels, "data") and hasattr(channels, "channel_names"):
        if resolved is None:
            raise ValueError(
                "measure_cells got an ImageData: pass resolved=cfg.channels.resolve(...)"
            )
        data = np.asarray(channels.data)
        if data.ndim != 4:
            raise ValueError(f"ImageData.data must be (C, Z, Y, X), got shape {data.shape}")
        out: dict[str, np.ndarray] = {}
        if resolved.exosome is not None:
            out[_EXO] = data[resolved.exosome]
        for name, idx in resolved.markers.items():
            out[name] = data[idx]
        return out
    raise ValueError(
        "channels must be a dict name -> (Z, Y, X) array or an ImageData, got "
        f"{type(channels).__name__}"
    )


def _squeeze_like(arr: np.ndarray, ndim: int) -> np.ndarray:
    if arr.ndim == 3 and ndim == 2 and arr.shape[0] == 1:
        return arr[0]
    return arr
