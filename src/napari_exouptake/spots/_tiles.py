"""Tiles of a big image for the tiled detector: geometry with halos, reading, the whole-image
sample grid, on-disk storage of filtered tiles, and the clipping level of the tiles together."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .filters import BandPass
from .noise import NOISE_BLOCK, grid_index

#: the local noise map's Gaussian window (px), as in local_noise_map
_NOISE_SCALE = 10.0
#: the spike test reads pixels up to this far (5 x 5 background window)
_SPIKE_REACH = 2
#: a plateau of at least this many pixels at the image's maximum counts as clipped
_MIN_CLIPPED = 4


def _gauss_radius(sigma: float) -> int:
    """scipy.ndimage.gaussian_filter's kernel radius (truncate 4)."""
    return int(4.0 * float(sigma) + 0.5)


def _halo(bp: BandPass, min_dist: np.ndarray) -> int:
    """Halo (px, a multiple of the noise block) covering the reach of every local step."""
    g = max(_gauss_radius(s) for s in np.r_[bp.s1, bp.s2])
    render = max(_gauss_radius(np.sqrt(p**2 + s**2)) for p, s in zip(bp.psf, bp.s2, strict=True))
    noise = NOISE_BLOCK * (_gauss_radius(_NOISE_SCALE / NOISE_BLOCK) + 2)
    clear = int(np.ceil(bp.radius.max()))
    ring = int(np.ceil(max(bp.bg_radius.max(), 2 * bp.radius.max() + 3)))
    local = max(
        noise + max(render, clear),
        2 * int(np.ceil(min_dist.max())) + 2,
        int(np.ceil(bp.reach)) + 1,
        4 * int(np.ceil(2 * bp.radius.max())) + ring + 2,
    )
    h = _SPIKE_REACH + g + local + 2
    return -(-h // NOISE_BLOCK) * NOISE_BLOCK


@dataclass(frozen=True)
class _Tile:
    core: tuple[int, int, int, int]  #: y0, y1, x0, x1 (global)
    ext: tuple[int, int, int, int]  #: the core with its halo, clipped to the image

    def inner(self) -> tuple[slice, slice]:
        """The core as slices of the extended tile."""
        y0, y1, x0, x1 = self.core
        return slice(y0 - self.ext[0], y1 - self.ext[0]), slice(x0 - self.ext[2], x1 - self.ext[2])

    def in_core(self, pos: np.ndarray) -> np.ndarray:
        y0, y1, x0, x1 = self.core
        return (pos[:, 0] >= y0) & (pos[:, 0] < y1) & (pos[:, 1] >= x0) & (pos[:, 1] < x1)

    def in_ext(self, pos: np.ndarray, margin: int = 0) -> np.ndarray:
        y0, y1, x0, x1 = self.ext
        return (
            (pos[:, 0] >= y0 - margin)
            & (pos[:, 0] < y1 + margin)
            & (pos[:, 1] >= x0 - margin)
            & (pos[:, 1] < x1 + margin)
        )

    @property
    def origin(self) -> np.ndarray:
        return np.array([self.ext[0], self.ext[2]])


def _tiles(shape: tuple[int, int], tile: int, halo: int) -> list[_Tile]:
    h, w = shape
    out = []
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            core = (y0, min(y0 + tile, h), x0, min(x0 + tile, w))
            ext = (
                max(y0 - halo, 0),
                min(core[1] + halo, h),
                max(x0 - halo, 0),
                min(core[3] + halo, w),
            )
            out.append(_Tile(core, ext))
    return out


def _read(arr: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return np.asarray(arr[y0:y1, x0:x1])


def _flat(pos: np.ndarray, width: int) -> np.ndarray:
    return pos[:, 0].astype(np.int64) * width + pos[:, 1]


def _grid_sample(
    values: np.ndarray, keep: np.ndarray | None, t: _Tile, s: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Values (and global flat index) of the core's pixels on the sample grid of step ``s``."""
    y0, y1, x0, x1 = t.core
    idx = grid_index(2, s, (y0, x0))
    core = values[t.inner()][idx]
    yy = np.arange(y0, y1)[idx[0]]
    xx = np.arange(x0, x1)[idx[1]]
    flat = yy[:, None].astype(np.int64) * width + xx[None, :]
    if keep is None:
        return core.ravel(), flat.ravel()
    k = keep[t.inner()][idx]
    return core[k], flat[k]


def _ordered(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Concatenated samples in the whole image's raster order."""
    if not parts:
        return np.zeros(0, np.float32)
    vals = np.concatenate([p[0] for p in parts])
    flat = np.concatenate([p[1] for p in parts])
    return vals[np.argsort(flat, kind="stable")]


class _Store:
    """The extended tiles' cleaned, band-passed and smoothed arrays, kept on disk (plain
    files read back whole: no memory map, so they never count as resident memory)."""

    def __init__(self, workdir: str | Path | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="exouptake-tiles-", dir=workdir))

    def put(self, i: int, **arrays: np.ndarray) -> None:
        for k, a in arrays.items():
            np.save(self.dir / f"{i}_{k}.npy", a)

    def get(self, i: int, *keys: str) -> list[np.ndarray]:
        return [np.load(self.dir / f"{i}_{k}.npy") for k in keys]

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _cat(parts: list[np.ndarray], shape_tail: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, *shape_tail), dtype)


def _raster(pos: np.ndarray, width: int, *others: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(_flat(pos, width), kind="stable")
    return [pos[order], *(o[order] for o in others)]


def _within(pos: np.ndarray, box: tuple[int, int, int, int], margin: int) -> np.ndarray:
    y0, y1, x0, x1 = box
    return (
        (pos[:, 0] >= y0 - margin)
        & (pos[:, 0] < y1 + margin)
        & (pos[:, 1] >= x0 - margin)
        & (pos[:, 1] < x1 + margin)
    )


def _finite(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(
            "image contains NaN or infinite pixel(s); replace them (e.g. np.nan_to_num) "
            "before detecting puncta"
        )
    return arr


def _top(arr: np.ndarray) -> tuple[float, int, float]:
    top = float(arr.max())
    return top, int(np.count_nonzero(arr == top)), float(arr.min())


def _plateau(tops: list[tuple[float, int, float]]) -> tuple[float, int]:
    """The image's maximum and the size of its clipped plateau (0: none), from the tiles'."""
    top = max(t[0] for t in tops)
    low = min(t[2] for t in tops)
    n = sum(t[1] for t in tops if t[0] == top)
    return top, (n if top > low and n >= _MIN_CLIPPED else 0)


def f_at(tiles: list[_Tile], store: _Store, pos: np.ndarray) -> np.ndarray:
    """Band-passed values at global positions ``pos`` (each read from its tile's core)."""
    out = np.zeros(len(pos), np.float32)
    for i, t in enumerate(tiles):
        own = t.in_core(pos)
        if own.any():
            (f,) = store.get(i, "f")
            out[own] = f[tuple((pos[own] - t.origin).T)]
    return out
