"""The noise model: camera defects removed, then the noise of the band-passed image, global
and local.

Real cameras add more than Poisson and read noise: hot pixels (single-pixel spikes, narrower
than any punctum the optics can make), column/row fixed-pattern noise, quantisation and
clipping. Spikes are removed before filtering (:func:`suppress_spikes`); the rest is measured,
not modelled: the detection threshold is set in units of the band-passed image's own robust
noise sigma, globally (:func:`noise_sigma`) and locally (:func:`local_noise_map`), so that a
bright autofluorescent cell with a noisier, textured interior needs a brighter punctum than the
dark substrate beside it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._geometry import clear_around, ellipse_offsets, gather

__all__ = [
    "grid_index",
    "grid_sample",
    "grid_step",
    "local_noise_map",
    "noise_sigma",
    "robust_sigma",
    "spike_sigma",
    "suppress_spikes",
]


def grid_step(shape: tuple[int, ...], most: int) -> int:
    """Lateral step ``s`` of the sample grid of :func:`grid_sample` (1: every pixel)."""
    size = int(np.prod(shape))
    return 1 if size <= most else int(np.ceil(np.sqrt(size / most)))


def grid_sample(shape: tuple[int, ...], most: int) -> tuple:
    """Index of a regular sample of at most ``most`` pixels of an image of ``shape``: every
    pixel up to ``most``, else the pixels whose Y and X coordinates are multiples of
    ``s = ceil(sqrt(size / most))`` (all Z planes). A grid, not a stride through the flat
    array, so that the tiles of a big image take the same pixels (:func:`grid_index`)."""
    return grid_index(len(shape), grid_step(shape, most), (0, 0))


def grid_index(ndim: int, s: int, origin: tuple[int, int]) -> tuple:
    """The sample grid of step ``s`` on an array whose first pixel has the global Y/X
    coordinate ``origin``."""
    lead = (slice(None),) * (ndim - 2)
    return (*lead, slice((-origin[0]) % s, None, s), slice((-origin[1]) % s, None, s))


_MAD_TO_SIGMA = 1.4826
#: at most this many pixels sampled for the spike test's noise sigma (every pixel below
#: 2 x 10^6) and for the band-pass noise sigma (every pixel up to 2 x 10^6)
SPIKE_SAMPLE = 2_000_000 - 1
NOISE_SAMPLE = 2_000_000
#: a spike exceeds the largest of its 8 neighbours by this many pixel-noise sigmas ...
_SPIKE_K = 5.0
#: ... and rises this many times higher above the local background than that neighbour does.
#: The optics cannot make such a pixel: a Gaussian PSF of sigma >= 0.7 px puts >= 0.36 of its
#: peak on the brightest neighbour (ratio <= 2.8), so 2.5 leaves real puncta untouched.
_SPIKE_RATIO = 2.5


def suppress_spikes(img: np.ndarray, sig: float | None = None) -> tuple[np.ndarray, int]:
    """Replace single-pixel spikes (hot pixels, cosmic rays) by the median of their
    neighbours.

    Parameters
    ----------
    img : (Y, X) or (Z, Y, X) ndarray
        Raw image; 3D stacks are treated plane by plane (spikes are lateral defects).
    sig : float, optional
        The pixel-noise sigma (:func:`spike_sigma`), when known from the whole image (tiled
        detection); default measured on ``img``.

    Returns
    -------
    cleaned : ndarray, float32, same shape
    n_spikes : int
        Number of pixels replaced.
    """
    arr = np.asarray(img, dtype=np.float32)
    lat = arr.ndim - 2
    # pixel noise from pixel - mean of its 4 neighbours (variance 1.25 x the pixel's)
    k4 = np.array([[0, -0.25, 0], [-0.25, 1, -0.25], [0, -0.25, 0]], np.float32)
    if sig is None:
        d = ndimage.convolve(arr, k4[None] if lat else k4, mode="reflect")
        sig = spike_sigma(d[grid_sample(d.shape, SPIKE_SAMPLE)].ravel())
        del d
    return _replace_spikes(arr, img, sig, lat)


def spike_sigma(sample: np.ndarray) -> float:
    """Pixel-noise sigma from a sample of ``pixel - mean of its 4 neighbours``."""
    sig = _MAD_TO_SIGMA * float(np.median(np.abs(sample - np.median(sample)))) / np.sqrt(1.25)
    if sig <= 0:
        sig = float(np.std(sample)) or 1.0
    return sig


def _replace_spikes(
    arr: np.ndarray, img: np.ndarray, sig: float, lat: int
) -> tuple[np.ndarray, int]:
    fp8 = np.ones((3, 3), dtype=bool)
    fp8[1, 1] = False
    if arr.ndim == 3:
        fp8 = fp8[None]
    m8 = ndimage.maximum_filter(arr, footprint=fp8, mode="reflect")
    m8 -= arr
    cand = np.argwhere(m8 < -_SPIKE_K * sig)
    m8 += arr  # back to the neighbours' maximum
    if len(cand) == 0:
        return arr, 0
    # local background (median of the 5 x 5 window) and neighbours' median, at candidates only
    y, x = np.mgrid[-2:3, -2:3]
    off5 = np.c_[y.ravel(), x.ravel()]
    off8 = off5[(np.abs(off5).max(axis=1) == 1)]
    if lat:
        off5 = np.c_[np.zeros(len(off5), int), off5]
        off8 = np.c_[np.zeros(len(off8), int), off8]
    v5, ok5, _ = gather(arr, cand, off5)
    bg = np.nanmedian(np.where(ok5, v5, np.nan), axis=1)
    v8, ok8, _ = gather(arr, cand, off8)
    med8 = np.nanmedian(np.where(ok8, v8, np.nan), axis=1)
    idx = tuple(cand.T)
    spike = (arr[idx] - bg) > _SPIKE_RATIO * (m8[idx] - bg)
    n = int(spike.sum())
    if n:
        arr = arr.copy() if arr is img else arr
        arr[tuple(cand[spike].T)] = med8[spike]
    return arr, n


def noise_sigma(filtered: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust noise sigma (1.4826 x MAD) of the band-passed image (inside ``mask``)."""
    # a regular grid of pixels keeps the estimate cheap on big images (every pixel up to
    # 2 x 10^6); a grid, not a stride through the flat array, so tiles can gather the same
    grid = grid_sample(filtered.shape, NOISE_SAMPLE)
    use = mask is not None and mask.sum() >= 64
    vals = filtered[grid][mask[grid]] if use else filtered[grid].ravel()
    return robust_sigma(vals)


def robust_sigma(vals: np.ndarray) -> float:
    """1.4826 x MAD of ``vals`` (their standard deviation when the MAD is 0)."""
    med = np.median(vals)
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(vals - med)))
    if sigma <= 0:  # e.g. large exactly-flat regions (clipped or zero background)
        sigma = float(np.std(vals))
    return sigma


def local_noise_map(
    filtered: np.ndarray,
    peaks: np.ndarray,
    radius: np.ndarray,
    noise: float,
    scale: float = 10.0,
) -> np.ndarray:
    """Local sigma of the band-passed image away from the detected puncta.

    Pixels within ``radius`` of a punctum of ``peaks`` are left out; the RMS of the others
    (clipped at 6 global sigmas) is averaged with a Gaussian window of ``scale`` px (Y/X) by
    normalised convolution on a 4x coarser grid (blocks of 4 x 4 px from the image's origin),
    then interpolated. Returns float32 of the image's shape. Every step but the fallback for
    blocks with no pixel left around them (the image's mean square) is local, on a grid
    fixed to the image's origin, so tiles aligned to the grid give the same map
    (:mod:`napari_exouptake.spots.tiled`).
    """
    sq, n = noise_blocks(filtered, peaks, radius, noise)
    glob = float(sq.sum() / max(n.sum(), 1.0))
    var = block_sigma(sq, n, glob, noise, scale)
    h, w = filtered.shape[-2:]
    out = upsample_blocks(var, h, w)
    return out if filtered.ndim == 2 else np.broadcast_to(out, filtered.shape)


#: block side (px) of the local noise map's coarse grid
NOISE_BLOCK = 4


def noise_blocks(
    filtered: np.ndarray, peaks: np.ndarray, radius: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the clipped squares of ``filtered`` away from ``peaks`` and the number of such
    pixels per ``NOISE_BLOCK`` x ``NOISE_BLOCK`` block (Y/X; Z summed), both float64
    ``(ceil(Y / 4), ceil(X / 4))``; a partial last block repeats the edge pixels."""
    keep = np.ones(filtered.shape, dtype=bool)
    clear_around(keep, peaks, ellipse_offsets(radius)[0])
    sq = np.clip(filtered, -6 * noise, 6 * noise)
    np.square(sq, out=sq)
    sq *= keep
    b = NOISE_BLOCK
    sums = []
    for arr in (sq, keep):
        a3 = arr if arr.ndim == 3 else arr[None]
        nz, h, w = a3.shape
        ny, nx = -(-h // b), -(-w // b)
        pad = ((0, 0), (0, ny * b - h), (0, nx * b - w))
        a3 = np.pad(a3, pad, mode="edge") if any(q[1] for q in pad) else a3
        # reduce one axis at a time: each step shrinks the array 4x (no big temporaries)
        r = a3.reshape(nz, ny, b, nx, b).sum(axis=4, dtype=np.float32)
        sums.append(r.sum(axis=(0, 2), dtype=np.float64))
        del a3, r
    return sums[0], sums[1]


def block_sigma(
    sq: np.ndarray, n: np.ndarray, glob: float, noise: float, scale: float = 10.0
) -> np.ndarray:
    """Local noise sigma per block (float32): the Gaussian-weighted (``scale`` px) mean
    square of :func:`noise_blocks`, ``glob`` where no pixel is left around a block."""
    b = NOISE_BLOCK
    num = ndimage.gaussian_filter(sq, scale / b, mode="nearest")
    den = ndimage.gaussian_filter(n, scale / b, mode="nearest")
    var = np.where(den > 0.5, num / np.maximum(den, 1e-9), glob)
    return np.sqrt(np.maximum(var, (0.05 * noise) ** 2 + 1e-12)).astype(np.float32)


def upsample_blocks(var: np.ndarray, h: int, w: int) -> np.ndarray:
    """Linear interpolation of a block map to pixels, cropped to ``(h, w)`` (float32)."""
    b = NOISE_BLOCK
    full = ndimage.zoom(var, (b, b), output=np.float32, order=1, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(full[:h, :w]) if full.shape != (h, w) else full
