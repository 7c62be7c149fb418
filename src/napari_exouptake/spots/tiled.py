"""Tiled puncta detection: :func:`detect_spots_tiled` gives the rows of
:func:`~napari_exouptake.spots.detect_spots` on the whole image, reading a big (lazy) image
tile by tile.

Every per-pixel step of the detector is local (hot-pixel test, band-pass, local extrema, the
punctum model, the local noise map on a block grid fixed to the image's origin, localisation),
so a tile read with a halo wider than the sum of their reaches gives, in its core, what the
whole image gives there. What is image-wide is computed from the union of the tiles, exactly as
the whole image does: the noise sigmas (the same grid of sample pixels), the clipped-pixel
level, both decoy false-discovery-rate thresholds (from every tile's candidates and decoys,
with their positions, in the whole image's order), the punctum population's brightness cut,
the reference intensity of the cluster estimate. The passes:

0. raw tiles: the spike test's noise sample, the clipping level;
1. raw tiles: hot pixels removed, band-pass; the cleaned, band-passed and smoothed tiles (with
   their halo) are kept on disk;
2. the noise sample of the band-passed image; 3. candidates and decoys, first threshold;
4. the local noise map's blocks (first-pass puncta subtracted); 5. the local noise at the
   candidates, the final threshold; 6. localisation of the accepted puncta.

Memory: one tile's arrays at a time (tile 2,048, halo 68 px at radius 1.8) plus the candidate
records of the whole image; disk: 3 float32 copies of the image's tiles (with halos), removed at
the end. The whole analysis of a 16,000 x 16,000 image (``benchmarks/big_images.py``) peaked
below 1 GB resident; see docs/big_images.md.
``radius_px="auto"`` is estimated on the central ``tile x tile`` crop (the only image-wide
step that is not taken from the union). 2D images only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from ..config import DEFAULT_RADIUS_PX
from ..progress import Cancelled, Progress
from ._tiles import (
    _NOISE_SCALE,
    _cat,
    _finite,
    _gauss_radius,
    _grid_sample,
    _halo,
    _ordered,
    _plateau,
    _raster,
    _read,
    _Store,
    _Tile,
    _tiles,
    _top,
    _within,
    f_at,
)
from .decompose import core_intensity, count_from_core, log_spread
from .decompose import reference_intensity as typical_intensity
from .detect import (
    Puncta,
    _check_options,
    _empty_table,
    _in_population,
    _localise,
    _table,
    detection_attrs,
    estimate_psf_sigma,
)
from .filters import BandPass, band_pass
from .noise import (
    NOISE_BLOCK,
    NOISE_SAMPLE,
    SPIKE_SAMPLE,
    block_sigma,
    grid_step,
    noise_blocks,
    robust_sigma,
    spike_sigma,
    suppress_spikes,
    upsample_blocks,
)
from .threshold import (
    _FIRST_PASS_FLOOR,
    blob_like,
    decoy_threshold,
    final_selection,
    local_extrema,
)

__all__ = ["DEFAULT_TILE", "detect_spots_tiled"]

logger = logging.getLogger(__name__)


#: default tile side (px, before the halo)
DEFAULT_TILE = 2048


@dataclass
class _Candidates:
    """Blob-like local maxima (candidates) and minima (decoys) of the band-passed image,
    global positions, whole-image order."""

    maxima: np.ndarray
    vmax: np.ndarray
    free_max: np.ndarray
    minima: np.ndarray
    vmin: np.ndarray
    free_min: np.ndarray


def detect_spots_tiled(
    image: Any,
    *,
    radius_px: float | Sequence[float] | str = DEFAULT_RADIUS_PX,
    threshold: str | float = "auto",
    fdr: float = 0.05,
    background_radius_px: float | None = None,
    min_distance_px: float | None = None,
    mask: Any = None,
    cluster_estimate: bool = True,
    exclude_border_px: int = 0,
    reference_intensity: float | None = None,
    tile: int = DEFAULT_TILE,
    workdir: str | Path | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """:func:`~napari_exouptake.spots.detect_spots` on a big 2D image, tile by tile.

    Parameters
    ----------
    image : (Y, X) ndarray or dask array
        The exosome channel; a dask array (:func:`napari_exouptake.io.read_image` of a big
        file) is read one tile (with its halo) at a time.
    radius_px, threshold, fdr, background_radius_px, min_distance_px : see detect_spots
    cluster_estimate, exclude_border_px, reference_intensity : see detect_spots
        As in :func:`~napari_exouptake.spots.detect_spots`. ``radius_px="auto"``: estimated
        on the central ``tile x tile`` crop.
    mask : (Y, X) bool ndarray or dask array, optional
        As in :func:`~napari_exouptake.spots.detect_spots`.
    tile : int, default 2048
        Tile side in pixels (rounded up to a multiple of 4); each is read with a halo of about
        70 px (punctum radius 1.8).
    workdir : path, optional
        Folder for the temporary tile files (default: the system's temporary folder).
    progress, cancel
        The progress-and-cancel protocol of :mod:`napari_exouptake.progress`.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`~napari_exouptake.spots.detect_spots`, row for row (positions
        equal to float rounding), with the same ``df.attrs``.

    Raises
    ------
    ValueError
        As :func:`~napari_exouptake.spots.detect_spots`; also for a 3D image.
    napari_exouptake.progress.Cancelled
        When ``cancel()`` turns True (checked between tiles).
    """
    fixed, reference_intensity, tile = _checked(
        image, threshold, fdr, exclude_border_px, reference_intensity, mask, min_distance_px, tile
    )
    shape = (int(image.shape[0]), int(image.shape[1]))
    width = shape[1]

    def step(frac: float, msg: str) -> None:
        if cancel is not None and cancel():
            raise Cancelled(f"puncta detection cancelled ({msg})")
        if progress is not None:
            progress(frac, msg)

    auto_r = isinstance(radius_px, str)
    if auto_r:
        if radius_px.strip().lower() != "auto":
            raise ValueError(f"radius_px must be a number or 'auto', got {radius_px!r}")
        cy, cx = max(0, (shape[0] - tile) // 2), max(0, (shape[1] - tile) // 2)
        box = (cy, min(cy + tile, shape[0]), cx, min(cx + tile, shape[1]))
        crop_mask = None if mask is None else _read(mask, box).astype(bool)
        crop = suppress_spikes(_finite(_read(image, box)))[0]
        radius_px = float(np.sqrt(2.0) * estimate_psf_sigma(crop, mask=crop_mask))
    bp = BandPass.make(2, radius_px, background_radius_px)
    min_dist = np.maximum(
        bp.radius if min_distance_px is None else min_distance_px * bp.radius / bp.radius[-1], 1.0
    )
    halo = _halo(bp, min_dist)
    tiles = _tiles(shape, tile, halo)
    nt = len(tiles)
    store = _Store(workdir)
    try:
        sig, n_saturated = _raw_noise_pass(image, tiles, shape, step)

        # -- pass 1: hot pixels removed, band-pass; tiles kept on disk
        n_spikes, top_clean, plateau = _band_pass_pass(image, tiles, store, sig, bp, step)

        # -- pass 2: noise sigma of the band-passed image (the whole image's sample grid)
        near = plateau and fixed is None
        r_sat = int(np.ceil(bp.reach))
        noise = _band_noise_pass(tiles, store, mask, near, top_clean, r_sat, shape, step)

        if fixed is None:
            peaks, snr, thr, snr_thr = _auto_select(
                tiles, store, mask, near, top_clean, r_sat, bp, min_dist, noise, fdr, shape, step
            )
        else:
            peaks = _fixed_select(tiles, store, mask, min_dist, fixed, width)
            snr = f_at(tiles, store, peaks) / noise if noise > 0 else np.full(len(peaks), np.inf)
            thr, snr_thr = fixed, np.nan
        attrs = detection_attrs(thr, snr_thr, noise, bp, auto_r, n_spikes, n_saturated)
        border = max(int(exclude_border_px), 1)
        inside = np.all((peaks >= border) & (peaks < np.asarray(shape) - border), axis=1)
        if not inside.any():
            logger.info("no puncta above threshold %.4g (noise sigma %.4g)", thr, noise)
            empty = _empty_table(2)
            empty.attrs.update(attrs)
            return empty
        peaks, snr = peaks[inside], np.asarray(snr)[inside]
        response = f_at(tiles, store, peaks).astype(float)
        if fixed is None:
            keep = _in_population(response)
            peaks, snr, response = peaks[keep], snr[keep], response[keep]

        # -- pass 6: localisation, tile by tile (neighbouring puncta share the disc pixels)
        parts = _localise_pass(tiles, store, peaks, response, snr, bp, step)
    finally:
        store.close()
    df = _assemble(parts, peaks, bp, attrs, reference_intensity, cluster_estimate)
    logger.info(
        "%d puncta detected in %d tiles, %.0f estimated (threshold %.4g, noise sigma %.4g)",
        len(df),
        nt,
        float(df["n_estimate"].sum()),
        attrs["threshold"],
        noise,
    )
    return df


def _checked(image, threshold, fdr, exclude_border_px, reference_intensity, mask, min_d, tile):
    """The options checked as :func:`detect_spots` checks them; returns the fixed threshold
    (None: automatic), the reference intensity and the tile side (a multiple of 4)."""
    if image.ndim != 2:
        raise ValueError(f"tiled detection takes a 2D (Y, X) image, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.issubdtype(
        image.dtype, np.complexfloating
    ):
        raise ValueError(f"image must be a real numeric array, got dtype {image.dtype}")
    fixed = _check_options(threshold, fdr, exclude_border_px)
    if reference_intensity is not None:
        reference_intensity = float(reference_intensity)
        if not np.isfinite(reference_intensity) or reference_intensity <= 0:
            raise ValueError(f"reference_intensity must be > 0, got {reference_intensity}")
    if mask is not None and tuple(mask.shape) != tuple(image.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from image shape {image.shape}")
    if min_d is not None and min_d <= 0:
        raise ValueError(f"min_distance_px must be > 0, got {min_d}")
    tile = -(-int(tile) // NOISE_BLOCK) * NOISE_BLOCK
    if tile < 64:
        raise ValueError(f"tile must be >= 64 px, got {tile}")
    return fixed, reference_intensity, tile


def _raw_noise_pass(image, tiles, shape, step) -> tuple[float, int]:
    """Pass 0: the spike test's noise sample and the clipping level of the raw image."""
    width = shape[1]
    nt = len(tiles)
    s_spike = grid_step(shape, SPIKE_SAMPLE)
    k4 = np.array([[0, -0.25, 0], [-0.25, 1, -0.25], [0, -0.25, 0]], np.float32)
    samples, tops = [], []
    for i, t in enumerate(tiles):
        step(0.15 * i / nt, "noise of the raw image")
        y0, y1, x0, x1 = t.core
        box = (max(y0 - 1, 0), min(y1 + 1, shape[0]), max(x0 - 1, 0), min(x1 + 1, shape[1]))
        arr = _finite(_read(image, box)).astype(np.float32)
        d = ndimage.convolve(arr, k4, mode="reflect")
        sub = _Tile(t.core, box)
        samples.append(_grid_sample(d, None, sub, s_spike, width))
        tops.append(_top(arr[sub.inner()]))
        del arr, d
    sig = spike_sigma(_ordered(samples))
    del samples
    n_saturated = _plateau(tops)[1]
    return sig, n_saturated


def _band_pass_pass(image, tiles, store, sig, bp, step) -> tuple[int, float, bool]:
    """Pass 1: hot pixels removed and the band-pass filter, each tile kept on disk; returns
    the number of spikes replaced and the clipping level of the cleaned image."""
    nt = len(tiles)
    n_spikes, ctops = 0, []
    for i, t in enumerate(tiles):
        step(0.15 + 0.25 * i / nt, "band-pass filter")
        raw = _finite(_read(image, t.ext))
        clean, _ = suppress_spikes(raw, sig)
        inner = t.inner()
        n_spikes += int(np.count_nonzero(clean[inner] != raw[inner].astype(np.float32)))
        del raw
        f, smooth = band_pass(clean, bp)
        ctops.append(_top(clean[inner]))
        store.put(i, clean=clean, f=f, smooth=smooth)
        del clean, f, smooth
    top_clean, plateau = _plateau(ctops)
    return n_spikes, top_clean, plateau


def _band_noise_pass(tiles, store, mask, near, top_clean, r_sat, shape, step) -> float:
    """Pass 2: robust noise sigma of the band-passed image on the whole image's sample grid
    (away from clipped pixels and outside the mask when there are enough pixels left)."""
    width = shape[1]
    nt = len(tiles)
    s_noise = grid_step(shape, NOISE_SAMPLE)
    all_s, stat_s, n_stat = [], [], 0
    for i, t in enumerate(tiles):
        step(0.4 + 0.05 * i / nt, "noise of the band-passed image")
        (f,) = store.get(i, "f")
        stat = _stat(i, t, store, mask, near, top_clean, r_sat)
        all_s.append(_grid_sample(f, None, t, s_noise, width))
        if stat is not None:
            stat_s.append(_grid_sample(f, stat, t, s_noise, width))
            n_stat += int(np.count_nonzero(stat[t.inner()]))
        del f, stat
    use = (mask is not None or near) and n_stat >= 64
    noise = robust_sigma(_ordered(stat_s if use else all_s))
    del all_s, stat_s
    return noise


def _localise_pass(tiles, store, peaks, response, snr, bp, step) -> list:
    """Pass 6: sub-pixel position, background and intensity of each punctum, in the tile
    whose core holds it (neighbouring puncta share the disc pixels, as on the whole image)."""
    nt = len(tiles)
    parts = []
    reach = 4 * int(np.ceil(2 * bp.radius.max())) + 2
    for i, t in enumerate(tiles):
        step(0.8 + 0.2 * i / nt, "localisation")
        own = t.in_core(peaks)
        if not own.any():
            continue
        near_p = np.flatnonzero(t.in_ext(peaks, 0) & _within(peaks, t.core, reach))
        clean, f, smooth = store.get(i, "clean", "f", "smooth")
        loc = peaks[near_p] - t.origin
        pun = Puncta(loc, loc.astype(float), response[near_p], snr[near_p])
        pun = _localise(pun, clean, f, smooth, bp)
        core = core_intensity(clean, loc, pun.background, bp.radius)
        sel = own[near_p]
        parts.append((near_p[sel], pun.take(sel), core[sel], t.origin))
        del clean, f, smooth
    return parts


def _assemble(parts, peaks, bp, attrs, reference_intensity, cluster_estimate) -> pd.DataFrame:
    """The tiles' puncta in whole-image order as the table of :func:`detect_spots`."""
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx, kind="stable")

    def col(name: str) -> np.ndarray:
        return np.concatenate([getattr(p[1], name) for p in parts])[order]

    # global peak + sub-pixel offset, as on the whole image
    coords = np.concatenate([p[1].peaks + p[3] + (p[1].coords - p[1].peaks) for p in parts])
    coords = coords[order]
    pun = Puncta(
        peaks[idx[order]],
        coords,
        col("response"),
        col("snr"),
        background=col("background"),
        amplitude=col("amplitude"),
        height=col("height"),
        sigma_px=col("sigma_px"),
        intensity=col("intensity"),
    )
    core = np.concatenate([p[2] for p in parts])[order]
    ref = typical_intensity(pun.intensity) if reference_intensity is None else reference_intensity
    attrs["reference_intensity"] = ref
    table = _table(pun, np.zeros((1, 1)), None, bp, ref, False)
    if cluster_estimate and np.isfinite(ref):
        table["n_estimate"] = count_from_core(core, pun.intensity, ref, log_spread(pun.intensity))
    df = pd.DataFrame(table)
    df.attrs.update(attrs)
    return df


def _stat(
    i: int,
    t: _Tile,
    store: _Store,
    mask: Any,
    near: bool,
    top: float,
    r_sat: int,
) -> np.ndarray | None:
    """Pixels that set the threshold in the extended tile: inside ``mask`` and away from
    clipped pixels (None: every pixel)."""
    m = None if mask is None else _read(mask, t.ext).astype(bool)
    if near:
        (clean,) = store.get(i, "clean")
        sat = ndimage.maximum_filter(clean == top, size=[2 * r_sat + 1] * 2)
        m = ~sat if m is None else m & ~sat
    return m


def _fixed_select(tiles, store, mask, min_dist, fixed, width) -> np.ndarray:
    parts = []
    for i, t in enumerate(tiles):
        (f,) = store.get(i, "f")
        pk = local_extrema(f, min_dist, fixed)
        pk = pk[t.in_core(pk + t.origin)]
        if mask is not None and len(pk):
            m = _read(mask, t.ext).astype(bool)
            pk = pk[m[tuple(pk.T)]]
        parts.append(pk + t.origin)
    return _raster(_cat(parts, (2,), np.intp), width)[0]


def _candidates(tiles, store, mask, near, top, r_sat, min_dist, floor, width, step) -> _Candidates:
    maxs, mins = [], []
    for i, t in enumerate(tiles):
        step(0.45 + 0.1 * i / len(tiles), "candidates and decoys")
        (f,) = store.get(i, "f")
        stat = _stat(i, t, store, mask, near, top, r_sat)
        m = None if mask is None else _read(mask, t.ext).astype(bool)
        for sign, out in ((1.0, maxs), (-1.0, mins)):
            pk = local_extrema(f, min_dist, floor, minima=sign < 0)
            pk = pk[t.in_core(pk + t.origin)]
            if m is not None and len(pk):
                pk = pk[m[tuple(pk.T)]]
            pk = pk[blob_like(f, pk, sign)]
            free = np.ones(len(pk), bool) if not near else stat[tuple(pk.T)]
            out.append((pk + t.origin, sign * f[tuple(pk.T)].astype(np.float64), free))
        del f, stat, m
    mx = _raster(
        _cat([p[0] for p in maxs], (2,), np.intp),
        width,
        _cat([p[1] for p in maxs], (), float),
        _cat([p[2] for p in maxs], (), bool),
    )
    mn = _raster(
        _cat([p[0] for p in mins], (2,), np.intp),
        width,
        _cat([p[1] for p in mins], (), float),
        _cat([p[2] for p in mins], (), bool),
    )
    return _Candidates(mx[0], mx[1], mx[2], mn[0], mn[1], mn[2])


def _auto_select(tiles, store, mask, near, top, r_sat, bp, min_dist, noise, fdr, shape, step):
    """:func:`napari_exouptake.spots.threshold.select_puncta`, tile by tile."""
    width = shape[1]
    if noise <= 0:
        return np.empty((0, 2), np.intp), np.zeros(0), np.inf, np.inf
    c = _candidates(
        tiles, store, mask, near, top, r_sat, min_dist, _FIRST_PASS_FLOOR * noise, width, step
    )
    t1, _, _ = decoy_threshold(
        c.maxima[c.free_max],
        c.vmax[c.free_max] / noise,
        c.minima[c.free_min],
        c.vmin[c.free_min] / noise,
        fdr,
        _FIRST_PASS_FLOOR,
        bp.response,
        bp.reach,
    )
    first = c.vmax > t1 * noise
    fp, fh = c.maxima[first], c.vmax[first]
    # -- pass 4: the local noise map's blocks, first-pass puncta subtracted
    b = NOISE_BLOCK
    margin = b * (_gauss_radius(_NOISE_SCALE / b) + 2)
    sq_tot = n_tot = 0.0
    for i, t in enumerate(tiles):
        step(0.55 + 0.15 * i / len(tiles), "local noise map")
        (f,) = store.get(i, "f")
        near_fp = t.in_ext(fp)
        resid = bp.render(f.shape, fp[near_fp] - t.origin, fh[near_fp])
        np.subtract(f, resid, out=resid)
        del f
        y0, y1, x0, x1 = t.core
        # the noise region: the core and a margin, on the block grid (clipped to the image)
        ry0, rx0 = max(y0 - margin, 0), max(x0 - margin, 0)
        ry1, rx1 = min(y1 + margin, shape[0]), min(x1 + margin, shape[1])
        reg = resid[ry0 - t.ext[0] : ry1 - t.ext[0], rx0 - t.ext[2] : rx1 - t.ext[2]]
        clear = _within(fp, (ry0, ry1, rx0, rx1), int(np.ceil(bp.radius.max())) + 1)
        sq, n = noise_blocks(reg, fp[clear] - (ry0, rx0), bp.radius, noise)
        del resid, reg
        # the core's blocks (each block of the image in exactly one core) and one around
        cb = ((y0 - ry0) // b, -(-(y1 - ry0) // b), (x0 - rx0) // b, -(-(x1 - rx0) // b))
        sq_tot += float(sq[cb[0] : cb[1], cb[2] : cb[3]].sum())
        n_tot += float(n[cb[0] : cb[1], cb[2] : cb[3]].sum())
        store.put(i, sq=sq, n=n, box=np.array([ry0, rx0, *cb]))
    glob = sq_tot / max(n_tot, 1.0)
    # -- pass 5: the local noise at the candidates and decoys
    nmax = np.zeros(len(c.maxima))
    nmin = np.zeros(len(c.minima))
    for i, t in enumerate(tiles):
        step(0.7 + 0.05 * i / len(tiles), "local signal-to-noise")
        sq, n, box = store.get(i, "sq", "n", "box")
        ry0, rx0, by0, by1, bx0, bx1 = (int(v) for v in box)
        var = block_sigma(sq, n, glob, noise, _NOISE_SCALE)
        # one block around the core for the interpolation (none beyond the image's edge)
        ly0, lx0 = max(by0 - 1, 0), max(bx0 - 1, 0)
        ly1, lx1 = min(by1 + 1, var.shape[0]), min(bx1 + 1, var.shape[1])
        part = var[ly0:ly1, lx0:lx1]
        nm = upsample_blocks(part, b * part.shape[0], b * part.shape[1])
        oy, ox = ry0 + b * ly0, rx0 + b * lx0  # global position of nm[0, 0]
        for pos, out in ((c.maxima, nmax), (c.minima, nmin)):
            own = t.in_core(pos)
            if own.any():
                out[own] = nm[pos[own, 0] - oy, pos[own, 1] - ox]
    nmax = nmax.astype(np.float32).astype(np.float64)
    smin = c.vmin / nmin.astype(np.float32)
    return final_selection(
        c.maxima, c.vmax, nmax, c.minima, smin, c.free_max, c.free_min, fdr, bp, noise
    )
