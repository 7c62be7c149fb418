"""Array helpers shared by the detection steps: input checks, per-axis sizes, ellipsoid
neighbourhoods and gathering pixel values around points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_image(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D (Y, X) or 3D (Z, Y, X), got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise ValueError(f"{name} is empty, shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite pixel(s); replace them (e.g. "
            "np.nan_to_num) before detecting puncta"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def per_axis(value: float | Sequence[float], ndim: int, name: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=float))
    if v.size == 1:
        v = np.repeat(v, ndim)
    if v.size != ndim:
        raise ValueError(f"{name} needs 1 or {ndim} values for a {ndim}D image, got {v.size}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be > 0, got {value}")
    return v


def ellipse_offsets(
    radius: np.ndarray, inner: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets inside an ellipsoid of per-axis ``radius`` (outside ``inner``).

    Returns offsets ``(K, ndim)`` int and their normalised distance ``(K,)`` (1 = on the
    ellipsoid of ``radius``), sorted by distance.
    """
    r_int = np.floor(radius).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in r_int], indexing="ij")
    off = np.stack([g.ravel() for g in grids], axis=1)
    d = np.sqrt(((off / radius) ** 2).sum(axis=1))
    keep = d <= 1.0 + 1e-9
    if inner is not None:
        d_in = np.sqrt(((off / inner) ** 2).sum(axis=1))
        keep &= d_in > 1.0 + 1e-9
    order = np.argsort(d[keep], kind="stable")
    return off[keep][order], d[keep][order]


def gather(
    image: np.ndarray, coords: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values of ``image`` at ``coords[:, None] + offsets`` (N, K), validity mask, flat index."""
    pos = coords[:, None, :] + offsets[None, :, :]
    shape = np.asarray(image.shape)
    valid = np.all((pos >= 0) & (pos < shape), axis=2)
    pos = np.clip(pos, 0, shape - 1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(pos, 2, 0)), image.shape)
    vals = image.ravel()[flat]
    return vals, valid, flat


def clear_around(keep: np.ndarray, peaks: np.ndarray, offsets: np.ndarray) -> None:
    """Set ``keep`` to False at ``peaks[:, None] + offsets`` (inside the image), in chunks of
    ~10^6 gathered pixels so that the index arrays stay small for many peaks or wide discs."""
    if len(peaks) == 0:
        return
    for part in np.array_split(peaks, -(-len(peaks) * len(offsets) // 1_000_000)):
        _, valid, flat = gather(keep, part, offsets)
        keep.ravel()[flat[valid]] = False
