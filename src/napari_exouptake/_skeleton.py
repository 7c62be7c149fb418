"""Helpers shared by the image-level readouts (:mod:`.tubes`, :mod:`.collagen`): input and
parameter checks, skeleton pruning and smoothed path lengths, Otsu without a crash on flat
data, and an 8-bit display of an image for QC pictures."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "at_analysed_scale",
    "bin_mean",
    "binned_plane",
    "binning_for",
    "is_dask_array",
    "check_image2d",
    "check_params",
    "check_pixel_size",
    "check_thresholds",
    "otsu_or_none",
    "path_lengths_smoothed",
    "prune_skeleton",
    "to_rgb_uint8",
]


def prune_skeleton(skel: np.ndarray, min_len: float, max_iter: int = 5) -> np.ndarray:
    """Iteratively remove spurs and short isolated pieces shorter than ``min_len`` px."""
    import skan
    from skimage.morphology import skeletonize

    skel = skel.copy()
    for _ in range(max_iter):
        if skel.sum() < 2:
            return skel
        sk = skan.Skeleton(skel)
        df = skan.summarize(sk, separator="_")
        lengths = df["branch_distance"].to_numpy()
        btype = df["branch_type"].to_numpy()
        drop = np.flatnonzero(((btype == 1) | (btype == 0)) & (lengths < min_len))
        if drop.size == 0:
            break
        deg = sk.degrees
        for i in drop:  # loop over short spurs only
            nodes = np.asarray(sk.path(i))
            nodes = nodes[deg[nodes] < 3]  # keep the junction pixel
            c = sk.coordinates[nodes].astype(int)
            skel[c[:, 0], c[:, 1]] = False
        skel = skeletonize(skel)
    # remove isolated specks left behind
    lab, n = ndimage.label(skel, structure=np.ones((3, 3)))
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= 2
        keep[0] = False
        skel = keep[lab]
    return skel


def binning_for(shape: tuple[int, ...], max_side_px: int | None) -> int:
    """Integer binning factor that brings the longer side of ``shape`` to ``max_side_px`` or
    below (1 when it already is, or when ``max_side_px`` is None)."""
    if max_side_px is None or max(shape) <= max_side_px:
        return 1
    return int(np.ceil(max(shape) / max_side_px))


def bin_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Mean of k x k blocks, float32; the last ``shape % k`` rows/columns (< k px) are dropped
    (no padded copy of a whole-well image). A lazy (dask) image is binned chunk by chunk (the
    same arithmetic per block), never held whole."""
    ny, nx = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    if is_dask_array(img):
        step = k * max(1, 1024 // k)  # chunks of whole k x k blocks
        x = img[:ny, :nx].rechunk((step, step))
        return np.asarray(
            x.map_blocks(
                _bin_block,
                k,
                chunks=tuple(tuple(c // k for c in cs) for cs in x.chunks),
                dtype=np.float32,
            ).compute()
        )
    return _bin_block(img[:ny, :nx], k)


def _bin_block(img: np.ndarray, k: int) -> np.ndarray:
    ny, nx = img.shape
    return img.reshape(ny // k, k, nx // k, k).mean(axis=(1, 3), dtype=np.float32)


def is_dask_array(img) -> bool:
    """True for a dask (lazy) array."""
    return hasattr(img, "chunks") and hasattr(img, "compute")


def at_analysed_scale(image, binning: int, full_shape: tuple, analysed_shape: tuple) -> np.ndarray:
    """``image`` at the scale a readout analysed it: binned by ``binning`` when it is the
    full-size input (a lazy one chunk by chunk), else as given; its shape must then be
    ``analysed_shape`` (the readout's mask), for an overlay drawn on it."""
    if len(np.shape(image)) == 2 and binning > 1 and tuple(np.shape(image)) == full_shape:
        img = bin_mean(image if is_dask_array(image) else np.asarray(image, np.float32), binning)
    else:
        img = np.asarray(image)
    if img.ndim != 2 or img.shape != analysed_shape:
        raise ValueError(
            f"image shape {img.shape} does not match the result's shape {analysed_shape}"
        )
    return img


def binned_plane(image, max_side_px: int | None, name: str = "image2d") -> tuple[np.ndarray, int]:
    """A checked 2D float32 plane, binned to ``max_side_px`` (:func:`binning_for`), and the
    factor. A lazy (dask) image is binned chunk by chunk before anything is held whole."""
    shape = tuple(np.shape(image))
    k = binning_for(shape, max_side_px) if len(shape) == 2 else 1
    if k > 1:
        src = image if is_dask_array(image) else check_image2d(image, name, dtype=np.float32)
        return check_image2d(bin_mean(src, k), name, dtype=np.float32), k
    return check_image2d(np.asarray(image), name, dtype=np.float32), 1


def check_image2d(image: np.ndarray, name: str = "image2d", dtype: type = np.float64) -> np.ndarray:
    """Validate a 2D numeric image and return it as ``dtype`` (float64 by default).

    Raises
    ------
    ValueError
        If the array is not 2D (after squeezing nothing), not numeric, empty, or
        contains NaN/inf.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D (Y, X) array, got shape {arr.shape} ({arr.ndim}D); "
            "pass a single plane or a projection"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf pixel(s); fill or crop them before analysis"
        )
    return arr


def check_params(*, positive: bool = False, **params: float) -> None:
    """Raise ValueError unless every parameter is finite and >= 0 (> 0 with ``positive``)."""
    for name, val in params.items():
        if not np.isfinite(val) or (val <= 0 if positive else val < 0):
            raise ValueError(
                f"{name} must be a finite number {'>' if positive else '>='} 0, got {val!r}"
            )


def check_thresholds(**thresholds: object) -> None:
    """Raise ValueError unless every threshold is ``"auto"`` or a number."""
    for name, val in thresholds.items():
        if not (val == "auto" or isinstance(val, int | float)):
            raise ValueError(f"{name} must be 'auto' or a number, got {val!r}")


def check_pixel_size(pixel_size_um: float | None) -> float | None:
    """Validate an optional pixel size (micrometres)."""
    if pixel_size_um is None:
        return None
    ps = float(pixel_size_um)
    if not np.isfinite(ps) or ps <= 0:
        raise ValueError(f"pixel_size_um must be a positive number or None, got {pixel_size_um!r}")
    return ps


def otsu_or_none(values: np.ndarray) -> float | None:
    """Otsu threshold of ``values``; None when they are (nearly) constant."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or np.ptp(v) <= 1e-12 * max(1.0, float(np.abs(v).max())):
        return None
    return float(threshold_otsu(v))


def path_lengths_smoothed(skel_obj, sigma: float = 1.0) -> np.ndarray:
    """Length of every skan path, measured on Gaussian-smoothed path coordinates.

    Summing 8-connected steps over-estimates the length of oblique lines by up
    to 8 % (22.5 deg); smoothing the coordinates along the path (end points
    kept fixed) removes most of that staircase bias.

    Parameters
    ----------
    skel_obj : skan.Skeleton
    sigma : float
        Smoothing sigma along the path, in path samples (pixels).

    Returns
    -------
    (n_paths,) float ndarray
        Lengths in pixels.
    """
    from scipy.ndimage import gaussian_filter1d

    n = skel_obj.n_paths
    out = np.zeros(n)
    for i in range(n):  # loop over skeleton paths (not cells/spots); each is a tiny array op
        c = np.asarray(skel_obj.path_coordinates(i), dtype=np.float64)
        if len(c) < 2:
            continue
        if len(c) >= 5 and sigma > 0:
            closed = np.array_equal(c[0], c[-1])
            s = min(sigma, len(c) / 4)
            cs = gaussian_filter1d(c, s, axis=0, mode="wrap" if closed else "nearest")
            if not closed:
                cs[0], cs[-1] = c[0], c[-1]
            c = cs
        out[i] = np.linalg.norm(np.diff(c, axis=0), axis=1).sum()
    return out


def to_rgb_uint8(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.8) -> np.ndarray:
    """Percentile-stretch a 2D image to a grey (Y, X, 3) uint8 RGB array."""
    img = np.asarray(image, dtype=np.float64)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        g = np.zeros(img.shape, np.uint8)
    else:
        lo, hi = np.percentile(finite, [low_pct, high_pct])
        if hi <= lo:
            hi = lo + 1.0
        g = (np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)
