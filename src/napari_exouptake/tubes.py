"""Tube-formation (angiogenesis) network analysis of one 2D image.

Readouts follow the vocabulary of ImageJ's *Angiogenesis Analyzer* (G. Carpentier):
junctions, nodes, extremities, segments, branches, isolated segments, master
segments, meshes, total length, total branching length, branching interval;
plus the percentage vessel area and vessel count used for CD31/vWF
immunofluorescence. See ``docs/readouts.md`` for definitions and measured
accuracy.

Pipeline: (optionally inverted) image -> Gaussian smoothing -> background
subtraction (grey opening) -> threshold (Otsu or a number) -> small-object and
small-hole clean-up -> skeleton -> spur pruning -> skan graph -> junction
clustering -> segment classification -> master tree -> meshes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from ._skeleton import (
    bin_mean,
    binned_plane,
    check_params,
    check_pixel_size,
    check_thresholds,
    is_dask_array,
    otsu_or_none,
    path_lengths_smoothed,
    prune_skeleton,
    to_rgb_uint8,
)

__all__ = ["TubeResult", "analyze_tubes", "tube_overlay"]

log = logging.getLogger(__name__)

#: Colours used by :func:`tube_overlay` (RGB), after Angiogenesis Analyzer's result image:
#: segments magenta, master segments yellow, branches green, isolated elements blue,
#: junctions red, extremities cyan, meshes sky blue; plus ours: the tube mask (translucent
#: green, so kept dim tubes show), clumps (orange outline), outside the well (darkened).
OVERLAY_COLOURS = {
    "segment": (255, 0, 255),
    "master": (255, 255, 0),
    "branch": (0, 230, 0),
    "isolated": (40, 120, 255),
    "internal": (255, 0, 255),
    "junction": (255, 30, 30),
    "extremity": (0, 255, 255),
    "mesh": (110, 190, 255),
    "mask": (60, 255, 120),
    "clump": (255, 140, 0),
}


@dataclass(frozen=True)
class TubeResult:
    """Result of :func:`analyze_tubes`.

    Attributes
    ----------
    mask : (Y, X) bool ndarray
        Tube (vessel) mask after clean-up.
    skeleton : (Y, X) bool ndarray
        One-pixel-wide centre lines after spur pruning.
    junctions : (J, 2) float ndarray
        Junction centres (y, x), pixels; a junction is a cluster of skeleton
        branch points closer than about one tube width, with >= 3 arms.
    nodes : (N, 2) float ndarray
        Skeleton branch points (pixels with >= 3 skeleton neighbours after skan's
        graph construction), (y, x) pixels.
    extremities : (E, 2) float ndarray
        Free ends (y, x), pixels.
    segments : pandas.DataFrame
        One row per skeleton path: ``path_id``, ``kind`` ("segment": junction to
        junction, "branch": junction to extremity, "isolated": extremity to
        extremity or a closed loop without junction, "internal": a short link
        inside one junction cluster), ``junction_src``, ``junction_dst`` (-1 = an
        extremity), ``length_px``, ``length`` (in ``length_unit``),
        ``mean_width_px``, ``master`` (bool: part of the master tree).
    meshes : (Y, X) int32 ndarray
        Mesh labels (regions fully enclosed by tubes, area >= min_mesh_area_px), 0 elsewhere.
    metrics : dict[str, float | int | str]
        Image-level readouts, every key prefixed ``tube_`` (see ``docs/readouts.md``).
    pixel_size_um : float or None
        Pixel size used for physical units.
    clumps : (Y, X) int32 ndarray or None
        Round cell clumps (labels), kept out of the network length when not part of it.
    roi : (Y, X) bool ndarray or None
        The well's inside when the rim was excluded, else None.
    binning : int
        Binning factor of the analysed image: ``mask``, ``skeleton``, ``meshes``, ``clumps`` and
        ``roi`` are at the binned scale; coordinates, lengths and metrics are in input pixels.
    full_shape : (int, int) or None
        Shape of the input image.
    """

    mask: np.ndarray = field(repr=False)
    skeleton: np.ndarray = field(repr=False)
    junctions: np.ndarray
    nodes: np.ndarray
    extremities: np.ndarray
    segments: pd.DataFrame = field(repr=False)
    meshes: np.ndarray = field(repr=False)
    metrics: dict
    pixel_size_um: float | None = None
    clumps: np.ndarray | None = field(default=None, repr=False)
    roi: np.ndarray | None = field(default=None, repr=False)
    binning: int = 1
    full_shape: tuple[int, int] | None = None


def analyze_tubes(
    image2d: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    polarity: Literal["auto", "bright", "dark"] = "auto",
    bright_tubes: bool | None = None,
    method: Literal["ridge", "intensity"] = "ridge",
    tube_width_px: tuple[float, float] = (2.0, 12.0),
    ridge_k: float = 4.0,
    smoothing_sigma_px: float = 2.0,
    threshold: Literal["auto"] | float = "auto",
    min_segment_length_px: float = 10.0,
    min_mesh_area_px: float = 100.0,
    background_radius_px: float | None = 25.0,
    min_object_area_px: float | None = None,
    junction_merge_px: float | None = None,
    clump_min_diameter_px: float | None = None,
    exclude_rim: Literal["auto"] | bool = "auto",
    max_side_px: int | None = 2048,
) -> TubeResult:
    """Analyse a tube-formation network (HUVEC on Matrigel: calcein, CD31, phase contrast).

    Parameters
    ----------
    image2d : (Y, X) ndarray
        One plane (phase contrast, brightfield, calcein or CD31/vWF fluorescence). 3D input is
        rejected: project it first.
    pixel_size_um : float, optional
        Pixel size in micrometres. Lengths are then in um and areas in um^2,
        otherwise in px and px^2 of the input image (``metrics["tube_length_unit"]`` says which).
    polarity : {"auto", "bright", "dark"}
        "bright": tubes brighter than the background (fluorescence); "dark": dark tubes on a
        bright background (brightfield/phase contrast): the image is divided by its smooth
        background (illumination correction) and inverted; "auto" decides from the sign of the
        skew of the image after removing its smooth background (bright structures on a dark
        background skew it positive). ``metrics["tube_polarity"]`` says what was used.
    bright_tubes : bool, optional
        Older spelling of ``polarity`` (True = "bright", False = "dark"); overrides it when given.
    method : {"ridge", "intensity"}
        "ridge" (default): the intensity mask is grown by hysteresis along a multi-scale ridge
        (vesselness) response, so thin and dim tubes joined to the network are kept and noise
        specks are not. "intensity": the intensity mask alone (the method before 2026-12).
    tube_width_px : (float, float)
        Range of tube widths the ridge filter looks for, pixels (of the analysed scale).
    ridge_k : float
        The ridge response must exceed ``ridge_k`` robust noise SDs (measured away from the
        tubes) to extend the network; ``2 * ridge_k`` seeds a new piece on its own.
    smoothing_sigma_px : float
        Gaussian smoothing sigma before thresholding, pixels (0 = none).
    threshold : "auto" or float
        "auto" = Otsu's threshold of the smoothed, background-subtracted image;
        a number is applied to that same image (intensity units of the input,
        background already subtracted).
    min_segment_length_px : float
        Branches (junction-to-free-end) and isolated elements shorter than this
        are pruned as spurs, pixels. Spurs shorter than 1.5 x the median tube
        width are always pruned (skeleton artefacts at corners of thick tubes).
    min_mesh_area_px : float
        Enclosed background regions smaller than this are filled (not meshes), px^2.
    background_radius_px : float or None
        Half-size of the grey-opening window used to estimate a smooth
        background (uneven illumination); should exceed the tube half-width.
        None disables background subtraction.
    min_object_area_px : float, optional
        Foreground objects smaller than this are removed, px^2. Default
        ``max(20, 2 * min_segment_length_px * (smoothing_sigma_px + 1))``.
    junction_merge_px : float, optional
        Branch points joined by a skeleton path shorter than this form one
        junction. Default: 2 x (median tube width + 1 px), at least 3 px.
    clump_min_diameter_px : float, optional
        Round foreground blobs at least this wide (and not elongated) are cell clumps: they are
        counted apart (``tube_clump_count``, ``tube_clump_area_um2``) and, when they are not
        part of the network, kept out of its length. Default ``1.5 x`` the widest tube width.
        0 disables clump detection.
    exclude_rim : "auto" or bool
        Exclude everything outside the well (the dark rim of a whole-well brightfield image):
        the well is the largest bright region of the heavily smoothed image, shrunk by 3 % of
        the image side. "auto" = when such a region is found: it covers 20-97 % of the image and
        the outside is at most 0.6 x as bright (its median); True = always (error when none).
    max_side_px : int or None
        Images whose longer side exceeds this are binned by an integer factor first (memory and
        time stay bounded on whole-well images); lengths, areas and coordinates are reported in
        the input's pixels/units. ``metrics["tube_analysis_binning"]`` says the factor.
        None = always full resolution.

    Returns
    -------
    TubeResult

    Raises
    ------
    ValueError
        If the image is not 2D, contains NaN/inf, or a parameter is out of range.
    """
    full_shape = tuple(np.shape(image2d))
    img, binning = binned_plane(image2d, max_side_px)  # a lazy image is binned chunk-wise
    ps = check_pixel_size(pixel_size_um)
    check_params(
        smoothing_sigma_px=smoothing_sigma_px,
        min_segment_length_px=min_segment_length_px,
        min_mesh_area_px=min_mesh_area_px,
        ridge_k=ridge_k,
    )
    check_thresholds(threshold=threshold)
    if bright_tubes is not None:
        polarity = "bright" if bright_tubes else "dark"
    if polarity not in ("auto", "bright", "dark"):
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    if method not in ("ridge", "intensity"):
        raise ValueError(f"method must be 'ridge' or 'intensity', got {method!r}")
    wmin, wmax = (float(w) for w in tube_width_px)
    if not (0 < wmin <= wmax and np.isfinite(wmax)):
        raise ValueError(
            f"tube_width_px must be (min, max) with 0 < min <= max, got {tube_width_px}"
        )
    if binning > 1:
        log.info("tubes: %s image binned %dx -> %s", full_shape, binning, img.shape)

    if polarity == "auto":
        polarity = _guess_polarity(img, background_radius_px)
    roi = None
    if exclude_rim is True or exclude_rim == "auto":
        roi = _well_region(img, required=exclude_rim is True)
    sm = ndimage.gaussian_filter(img, smoothing_sigma_px) if smoothing_sigma_px > 0 else img
    fg, work = _foreground(img, sm, polarity, background_radius_px)
    if roi is not None:
        fg[~roi] = 0
        work[~roi] = 0

    if threshold == "auto":
        thr = otsu_or_none(fg if roi is None else fg[roi])
        mask = np.zeros(img.shape, bool) if thr is None else fg > thr
    else:
        mask = fg > float(threshold)
    log.debug("tubes: threshold %s -> %d foreground px", threshold, int(mask.sum()))
    if min_object_area_px is None:
        min_object_area_px = max(20.0, 2.0 * min_segment_length_px * (smoothing_sigma_px + 1.0))
    n_intensity = int(mask.sum())
    if method == "ridge" and mask.any():
        mask = _ridge_hysteresis(work, mask, (wmin, wmax), ridge_k, roi, min_segment_length_px)
    mask = _remove_small(mask, min_object_area_px)
    mask = _fill_small_holes(mask, min_mesh_area_px)
    if clump_min_diameter_px is None:
        clump_min_diameter_px = 2.0 * wmax
    mask, clumps = _split_clumps(mask, float(clump_min_diameter_px), min_segment_length_px)
    if method == "ridge" and mask.any():
        mask = _bridge_gaps(mask, max_gap=2 * wmin + 2, cap=wmax / 2 + 2, exclude=clumps > 0)
        mask = _fill_small_holes(mask, min_mesh_area_px)  # holes a bridge closed
    res = _analyze_mask(
        mask,
        pixel_size_um=ps,
        min_segment_length_px=float(min_segment_length_px),
        min_mesh_area_px=float(min_mesh_area_px),
        junction_merge_px=junction_merge_px,
        binning=binning,
        roi=roi,
    )
    f = binning * (ps if ps else 1.0)
    m = dict(res.metrics)
    m.update(
        {
            "tube_clump_count": int(clumps.max()),
            "tube_clump_area_um2": float((clumps > 0).sum() * f * f),
            "tube_polarity": polarity,
            "tube_method": method,
            "tube_ridge_added_fraction": (
                float(1.0 - n_intensity / mask.sum()) if mask.any() and method == "ridge" else 0.0
            ),
            "tube_analysis_binning": int(binning),
        }
    )
    if roi is not None:
        m["tube_well_area_um2"] = float(roi.sum() * f * f)
    return replace(res, metrics=m, clumps=clumps, roi=roi, binning=binning, full_shape=full_shape)


def _guess_polarity(img: np.ndarray, radius: float | None) -> str:
    """ "bright" when the image minus its smooth background is skewed positive, else "dark"."""
    r = max(float(radius or 25.0), 5.0)
    step = max(1, int(max(img.shape) // 1024))
    sub = img[::step, ::step]
    res = sub - ndimage.gaussian_filter(sub, 2 * r / step)
    res = res[np.abs(res) < np.percentile(np.abs(res), 99.9)]
    sd = float(res.std())
    if sd == 0:
        return "bright"
    skew = float(np.mean((res - res.mean()) ** 3)) / sd**3
    return "bright" if skew >= 0 else "dark"


def _well_region(img: np.ndarray, required: bool) -> np.ndarray | None:
    """The well's inside: largest bright region of the heavily smoothed image, filled, shrunk."""
    side = max(img.shape)
    step = max(1, side // 512)
    sub = img[::step, ::step].astype(np.float64)
    sm = ndimage.gaussian_filter(sub, max(2.0, 0.02 * max(sub.shape)))
    thr = otsu_or_none(sm)
    if thr is None:
        if required:
            raise ValueError("exclude_rim: the image is flat, no well found")
        return None
    lab, n = ndimage.label(sm > thr)
    if n == 0:
        return None
    big = np.argmax(np.bincount(lab.ravel())[1:]) + 1
    well = ndimage.binary_fill_holes(lab == big)
    # shrink by 3 % of the side: drops the bright meniscus ring just inside the rim
    well = ndimage.binary_erosion(well, iterations=max(1, int(0.03 * max(sub.shape))))
    frac = well.mean()
    # a well's rim is dark: outside at most 0.6 x the inside's median (real whole-well
    # brightfield: 0.46; a network under 50 % uneven illumination alone: 0.73-0.81)
    # and the inside is a bright field (its median at least half the 99th percentile), which a
    # fluorescent network's mostly dark background is not
    inside = float(np.median(sub[well])) if well.any() else 0.0
    ratio = float(np.median(sub[~well]) / max(inside, 1e-12)) if frac < 1 else 1.0
    bright_field = inside >= 0.5 * float(np.percentile(sub, 99))
    if not (0.2 <= frac <= 0.97 and ratio <= 0.6 and bright_field):
        if required:
            raise ValueError(
                f"exclude_rim: no well found (bright region covers {100 * frac:.0f} % of the "
                f"image, the outside is {ratio:.2f} x as bright)"
            )
        return None
    if step > 1:
        well = np.repeat(np.repeat(well, step, 0), step, 1)
        well = np.pad(
            well,
            ((0, max(0, img.shape[0] - well.shape[0])), (0, max(0, img.shape[1] - well.shape[1]))),
            mode="edge",
        )
        well = well[: img.shape[0], : img.shape[1]]
    return well


def _foreground(img, sm, polarity, radius):
    """(smoothed foreground for the intensity threshold, unsmoothed foreground for the ridge
    filter): background-subtracted (bright) or illumination-corrected and inverted (dark)."""
    if radius:
        size = 2 * int(round(radius)) + 1
        if polarity == "bright":
            bg = ndimage.grey_opening(sm, size=(size, size), mode="reflect")
            bg = ndimage.uniform_filter(bg, size, mode="reflect")
            return sm - np.minimum(bg, sm), img - bg
        bg = ndimage.grey_closing(sm, size=(size, size), mode="reflect")
        bg = ndimage.uniform_filter(bg, size, mode="reflect")
        bg = np.maximum(bg, 1e-6 * max(float(bg.max()), 1e-12))
        fg = 1.0 - sm / bg
        return np.maximum(fg, 0), 1.0 - img / bg
    if polarity == "bright":
        return sm - sm.min(), img - sm.min()
    top = max(float(sm.max()), 1e-12)
    return (top - sm) / top, (top - img) / top


def _ridge_response(img: np.ndarray, widths: tuple[float, float]) -> np.ndarray:
    """Scale-normalised bright-ridge strength, max over scales: sigma^2 * max(0, -lambda_min)
    of the Hessian (lambda_min its smaller eigenvalue), sigmas spanning the tube widths."""
    s_lo = max(1.0, widths[0] / (2 * np.sqrt(3)))
    s_hi = max(s_lo, widths[1] / (2 * np.sqrt(3)))
    n = max(1, int(np.ceil(np.log(s_hi / s_lo) / np.log(1.5))) + 1)
    out = np.zeros(img.shape, np.float32)
    img = img.astype(np.float32, copy=False)
    for s in np.geomspace(s_lo, s_hi, n):  # loop over a handful of scales
        # Hessian by central differences of the smoothed image (sigma >= 1 px: close to the
        # Gaussian-derivative filters at a fraction of their cost)
        p = np.pad(ndimage.gaussian_filter(img, s), 1, mode="edge")
        c = p[1:-1, 1:-1]
        hrr = p[2:, 1:-1] - 2 * c + p[:-2, 1:-1]
        hcc = p[1:-1, 2:] - 2 * c + p[1:-1, :-2]
        hrc = 0.25 * (p[2:, 2:] - p[2:, :-2] - p[:-2, 2:] + p[:-2, :-2])
        mean = 0.5 * (hrr + hcc)
        rad = np.sqrt((0.5 * (hrr - hcc)) ** 2 + hrc**2)
        # -lambda_min, less the curvature along the ridge where that is negative too (blob,
        # tube end): a line scores its cross curvature, a round blob scores 0
        r = rad - mean + np.minimum(mean + rad, 0)
        np.maximum(out, r * np.float32(s * s), out=out)
    return out


def _ridge_hysteresis(work, mask, widths, k, roi, min_len) -> np.ndarray:
    """Grow the intensity ``mask`` along ridge pixels above the noise (hysteresis)."""
    ridge = _ridge_response(work, widths)
    away = ~ndimage.binary_dilation(mask, iterations=int(np.ceil(widths[1])) + 2)
    if roi is not None:
        away &= roi
    core = ridge[mask]
    ref = float(np.median(core)) if core.size else 0.0
    vals = ridge[away]
    if vals.size > 100:
        med = float(np.median(vals))
        noise = 1.4826 * float(np.median(np.abs(vals - med)))
        low = med + k * noise
    else:
        low = 0.0
    low = max(low, 0.1 * ref)
    if low <= 0:
        return mask
    cand = ridge > low
    if roi is not None:
        cand &= roi
    seeds = mask | (ridge > 2 * low)
    lab, n = ndimage.label(cand | mask, structure=np.ones((3, 3)))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[seeds])] = True
    keep[0] = False
    log.debug("tubes: ridge low %.4g (noise floor), ref %.4g", low, ref)
    added = keep[lab] & cand & ~mask
    # keep an addition when it touches the intensity mask at two separate places (a dim link
    # between two tubes, or across a gap), or reaches at least 0.75 x min_len beyond it (a dim
    # tube); not the bumps the filter leaves at edges, sharp corners and tube ends (one contact,
    # short: they would only make spurs)
    alab, na = ndimage.label(added, structure=np.ones((3, 3)))
    if na == 0:
        return mask
    # pixels more than 0.75 x min_len (chessboard distance) from the intensity mask
    far = ~ndimage.binary_dilation(
        mask, structure=np.ones((3, 3)), iterations=max(1, int(np.ceil(0.75 * min_len)) - 1)
    )
    near = ndimage.grey_dilation(alab, size=(3, 3))
    touch = (near > 0) & mask
    contact, _ = ndimage.label(touch, structure=np.ones((3, 3)))
    pairs = np.unique(np.stack([near[touch], contact[touch]]), axis=1)
    n_touch = np.bincount(pairs[0], minlength=na + 1)
    ok = np.zeros(na + 1, bool)
    reaches = np.zeros(na + 1, bool)
    reaches[np.unique(alab[far & added])] = True
    ok[1:] = (n_touch[1:] >= 2) | reaches[1:]
    return mask | ok[alab]


def _bridge_gaps(
    mask: np.ndarray, max_gap: float, cap: float, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Join free tube ends to the mask they point at across a gap of at most ``max_gap`` px.

    A dim link often stops a few pixels short of the tube it joins (the tube's flank cancels
    its ridge). From every skeleton end the line is followed outwards along the end's direction
    (from the skeleton within 6 px): past the end's own cap (``cap`` px) it must leave the mask
    and enter it again within ``max_gap`` px; that stretch is then drawn into the mask. Ends
    within 2 px of ``exclude`` (cell clumps: their skeleton ends are not tube ends) are skipped.
    """
    from skimage.draw import line as draw_line
    from skimage.morphology import skeletonize

    skel = skeletonize(mask)
    nb = ndimage.convolve(skel.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    ends = skel & (nb == 2)
    if exclude is not None and exclude.any():
        ends &= ~ndimage.binary_dilation(exclude, iterations=2)
    ends = np.argwhere(ends)
    if len(ends) == 0:
        return mask
    ny, nx = mask.shape
    out = mask.copy()
    r = 6
    for y, x in ends:  # loop over free ends (tens to a few thousand)
        y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, ny), max(x - r, 0), min(x + r + 1, nx)
        pts = np.argwhere(skel[y0:y1, x0:x1]) + (y0, x0)
        d = np.array([y, x], float) - pts.mean(axis=0)
        n = float(np.hypot(*d))
        if n < 1.0:
            continue
        d /= n
        exit_pt = None
        for t in range(1, int(cap + max_gap) + 2):  # steps along the ray
            py, px = int(round(y + t * d[0])), int(round(x + t * d[1]))
            if not (0 <= py < ny and 0 <= px < nx):
                break
            inside = mask[py, px]
            if exit_pt is None:
                if not inside:
                    exit_pt = (py, px, t)
                elif t > cap:
                    break
            elif inside:
                if t - exit_pt[2] <= max_gap:
                    rr, cc = draw_line(exit_pt[0], exit_pt[1], py, px)
                    out[rr, cc] = True
                break
            elif t - exit_pt[2] > max_gap:
                break
    return out


def _split_clumps(mask, min_diameter, min_len):
    """Label round clumps (blobs at least ``min_diameter`` wide, not elongated); remove from the
    network mask the pieces that are a clump with nothing longer than ``min_len`` attached."""
    clumps = np.zeros(mask.shape, np.int32)
    if not min_diameter or not mask.any():
        return mask, clumps
    from skimage.measure import regionprops
    from skimage.morphology import disk

    r = int(np.ceil(min_diameter / 2))
    dist = ndimage.distance_transform_edt(mask)
    core = dist >= r  # centres of discs of radius r that fit in the mask
    if not core.any():
        return mask, clumps
    blob = np.zeros_like(mask)
    clab, _ = ndimage.label(core)
    for sl in ndimage.find_objects(clab):  # grow each core back by r, locally (few, small)
        box = tuple(slice(max(a.start - r, 0), a.stop + r) for a in sl)
        blob[box] |= ndimage.binary_dilation(core[box], structure=disk(r))
    blob &= mask
    lab, n = ndimage.label(blob)
    keep = np.zeros(n + 1, bool)
    for p in regionprops(lab):  # loop over candidate clumps (few)
        if p.axis_major_length > 0 and p.axis_minor_length / p.axis_major_length >= 0.5:
            keep[p.label] = True
    if not keep.any():
        return mask, clumps
    ids = np.cumsum(keep) * keep
    clumps = ids[lab].astype(np.int32)
    # a clump the network does not run through (at most one tube touches it: it lies against
    # a tube or ends one) is cut out of the network mask; with >= 2 tubes attached (cells
    # gathered at a junction) the network runs through it; a clump embedded in a wider mask
    # region (more than half of a 5-px ring around it is mask), or whose cut would leave a
    # hole (tubes wrapped around it), is left alone
    mask = mask.copy()
    for k, sl in enumerate(ndimage.find_objects(clumps), start=1):  # loop over clumps (few)
        if sl is None:
            continue
        box = tuple(slice(max(a.start - 6, 0), a.stop + 6) for a in sl)
        own = clumps[box] == k
        ring = ndimage.binary_dilation(own, iterations=5) & ~ndimage.binary_dilation(own)
        touching = ring & mask[box] & (clumps[box] == 0)
        thin = touching.sum() < 0.5 * ring.sum()
        if thin and ndimage.label(touching, structure=np.ones((3, 3)))[1] <= 1:
            cut = mask[box] & ~ndimage.binary_dilation(own)
            bg, _ = ndimage.label(~cut)
            edge = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
            if np.isin(np.unique(bg[own]), edge).all():  # the cut opens onto the outside
                mask[box] = cut
    # pieces that are a clump and no network: everything left after removing the clump
    # (grown by a few px) is shorter than min_len
    comp, nc = ndimage.label(mask, structure=np.ones((3, 3)))
    rest = mask & ~ndimage.binary_dilation(clumps > 0, iterations=3)
    rest_area = np.bincount(comp[rest].ravel(), minlength=nc + 1)
    with_clump = np.unique(comp[clumps > 0])
    drop = np.zeros(nc + 1, bool)
    width = 2.0 * float(np.median(dist[mask & (dist < r)])) if (mask & (dist < r)).any() else 2.0
    drop[with_clump] = rest_area[with_clump] < min_len * max(width, 1.0)
    drop[0] = False
    return mask & ~drop[comp], clumps


def _remove_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    areas = np.bincount(lab.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[lab]


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    lab, n = ndimage.label(~mask)  # 4-connected background
    if n == 0:
        return mask
    areas = np.bincount(lab.ravel())
    small = areas < max_area
    small[0] = False
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    small[border] = False
    return mask | small[lab]


def _empty_result(mask: np.ndarray, ps: float, unit: str) -> TubeResult:
    empty = np.zeros((0, 2))
    seg = pd.DataFrame(
        {
            "path_id": pd.Series(dtype=int),
            "kind": pd.Series(dtype=str),
            "junction_src": pd.Series(dtype=int),
            "junction_dst": pd.Series(dtype=int),
            "length_px": pd.Series(dtype=float),
            "length": pd.Series(dtype=float),
            "mean_width_px": pd.Series(dtype=float),
            "master": pd.Series(dtype=bool),
        }
    )
    metrics = _metrics_dict(
        ps,
        n_junctions=0,
        n_nodes=0,
        n_ext=0,
        seg=seg,
        n_master_j=0,
        n_master_seg=0,
        master_len_px=0.0,
        mesh_areas_px=np.zeros(0),
        mask=mask,
        n_vessels=0,
        width_px=np.nan,
        unit=unit,
    )
    return TubeResult(
        mask=mask,
        skeleton=np.zeros_like(mask, bool),
        junctions=empty,
        nodes=empty,
        extremities=empty,
        segments=seg,
        meshes=np.zeros(mask.shape, np.int32),
        metrics=metrics,
        pixel_size_um=ps if unit == "um" else None,
    )


def _analyze_mask(
    mask: np.ndarray,
    *,
    pixel_size_um: float | None,
    min_segment_length_px: float,
    min_mesh_area_px: float,
    junction_merge_px: float | None,
    binning: int = 1,
    roi: np.ndarray | None = None,
) -> TubeResult:
    """Graph analysis of a binary tube mask (see :func:`analyze_tubes`); ``binning`` scales
    coordinates and lengths back to input pixels, ``roi`` (the well) bounds meshes and area."""
    import skan
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from skimage.morphology import skeletonize

    ps = pixel_size_um
    mask = np.asarray(mask, bool)
    skel = skeletonize(mask) if mask.any() else np.zeros_like(mask)
    # spurs from corners of thick tubes are up to about one tube width long
    dist = ndimage.distance_transform_edt(mask)
    spur_px = min_segment_length_px
    if skel.any():
        spur_px = max(spur_px, 1.5 * (2.0 * float(np.median(dist[skel])) - 1.0))
    skel = prune_skeleton(skel, spur_px)
    vessel_lab, n_vessels = ndimage.label(mask, structure=np.ones((3, 3)))
    meshes, mesh_areas = _meshes(mask, min_mesh_area_px, roi)
    unit = "um" if ps else "px"
    ps = (ps if ps else 1.0) * binning  # size of an analysed pixel, in the reported unit
    if skel.sum() < 2:
        res = _empty_result(mask, ps, unit)
        m = dict(res.metrics)
        m.update(_mesh_and_area_metrics(ps, mesh_areas, mask, n_vessels, roi))
        return TubeResult(**{**res.__dict__, "metrics": m, "meshes": meshes})

    sk = skan.Skeleton(skel)
    df = skan.summarize(sk, separator="_")
    n_paths = len(df)
    src = df["node_id_src"].to_numpy()
    dst = df["node_id_dst"].to_numpy()
    btype = df["branch_type"].to_numpy()
    length_px = path_lengths_smoothed(sk)
    # width in pixels across = 2 x (distance to the background) - 1 on the centre line
    width_px = np.maximum(2.0 * _path_means(sk, dist) - 1.0, 1.0)
    median_width = float(np.median(width_px)) if n_paths else 0.0
    merge_px = (
        junction_merge_px if junction_merge_px is not None else max(3.0, 2.0 * (median_width + 1.0))
    )

    # graph node degrees (counting a self-loop twice)
    n_graph = int(max(src.max(), dst.max())) + 1
    deg = np.bincount(src, minlength=n_graph) + np.bincount(dst, minlength=n_graph)
    is_branch_pt = deg >= 3
    # cluster branch points joined by short paths into junctions
    short = is_branch_pt[src] & is_branch_pt[dst] & (length_px < merge_px) & (src != dst)
    g = coo_matrix((np.ones(int(short.sum())), (src[short], dst[short])), shape=(n_graph, n_graph))
    _, comp = connected_components(g, directed=False)
    # external degree of each cluster: path ends that are not internal links
    ext = ~short
    cdeg = np.bincount(comp[src[ext]], minlength=n_graph) + np.bincount(
        comp[dst[ext]], minlength=n_graph
    )
    bp_nodes = np.flatnonzero(is_branch_pt)
    junction_comp = np.unique(comp[bp_nodes])
    junction_comp = junction_comp[cdeg[junction_comp] >= 3]
    jid = np.full(n_graph, -1)
    jid_of_comp = np.full(n_graph, -1)
    jid_of_comp[junction_comp] = np.arange(len(junction_comp))
    jid[bp_nodes] = jid_of_comp[comp[bp_nodes]]

    coords = np.asarray(sk.coordinates, dtype=np.float64)
    coords_out = coords * binning + (binning - 1) / 2.0  # centre of the binned block
    if len(junction_comp):
        sel = bp_nodes[jid[bp_nodes] >= 0]
        cnt = np.bincount(jid[sel], minlength=len(junction_comp))
        junctions = np.stack(
            [np.bincount(jid[sel], coords_out[sel, k], len(junction_comp)) / cnt for k in (0, 1)],
            1,
        )
    else:
        junctions = np.zeros((0, 2))
    nodes_xy = coords_out[bp_nodes]
    ext_nodes = np.flatnonzero(deg == 1)
    extremities = coords_out[ext_nodes]

    js, jd = jid[src], jid[dst]
    kind = np.where(
        short,
        "internal",
        np.where(
            (js >= 0) & (jd >= 0),
            "segment",
            np.where((js >= 0) | (jd >= 0), "branch", "isolated"),
        ),
    )
    # a path between two branch points that did not form a junction (cluster with
    # < 3 arms) counts as a segment if both ends are branch points, else by its ends
    kind = np.where(
        (kind == "isolated") & (is_branch_pt[src] | is_branch_pt[dst]),
        np.where(is_branch_pt[src] & is_branch_pt[dst], "segment", "branch"),
        kind,
    )
    master = _master_tree(js, jd, kind, len(junction_comp))
    n_master_j, n_master_seg = _master_counts(js[master], jd[master], len(junction_comp))
    seg = pd.DataFrame(
        {
            "path_id": np.arange(n_paths),
            "kind": kind,
            "junction_src": js,
            "junction_dst": jd,
            "length_px": length_px * binning,
            "length": length_px * ps,
            "mean_width_px": width_px * binning,
            "master": master,
        }
    )
    _ = btype  # skan's own type is kept implicitly in `kind`
    metrics = _metrics_dict(
        ps,
        n_junctions=len(junction_comp),
        n_nodes=len(bp_nodes),
        n_ext=len(ext_nodes),
        seg=seg,
        n_master_j=n_master_j,
        n_master_seg=n_master_seg,
        master_len_px=float(length_px[master].sum()),
        mesh_areas_px=mesh_areas,
        mask=mask,
        n_vessels=n_vessels,
        width_px=float(np.average(width_px, weights=length_px)) if length_px.sum() else np.nan,
        unit=unit,
        roi=roi,
    )
    _ = vessel_lab
    return TubeResult(
        mask=mask,
        skeleton=skel,
        junctions=junctions,
        nodes=nodes_xy,
        extremities=extremities,
        segments=seg,
        meshes=meshes,
        metrics=metrics,
        pixel_size_um=None if unit == "px" else ps / binning,
    )


def _master_tree(js: np.ndarray, jd: np.ndarray, kind: np.ndarray, n_j: int) -> np.ndarray:
    """Boolean mask of paths in the master tree.

    Angiogenesis Analyzer's master tree: repeatedly delete branches (paths with
    a free end) until none is left; what remains are loops of segments joined at
    junctions. Internal links and isolated elements never belong to it.
    """
    alive = kind == "segment"
    for _ in range(10_000):
        if not alive.any():
            break
        d = np.bincount(js[alive], minlength=n_j) + np.bincount(jd[alive], minlength=n_j)
        dead_end = alive & ((d[js] == 1) | (d[jd] == 1))
        if not dead_end.any():
            break
        alive &= ~dead_end
    return alive


def _master_counts(js: np.ndarray, jd: np.ndarray, n_j: int) -> tuple[int, int]:
    """(master junctions, master segments) of the master tree.

    Master junctions are junctions with >= 3 master paths; master segments are
    the chains of master paths between master junctions (junctions left with
    two master paths are passed through), plus one per closed loop that has no
    master junction.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(js) == 0:
        return 0, 0
    d = np.bincount(js, minlength=n_j) + np.bincount(jd, minlength=n_j)
    mj = d >= 3
    n_seg_ends = int(d[mj].sum())
    g = coo_matrix((np.ones(len(js)), (js, jd)), shape=(n_j, n_j))
    _, comp = connected_components(g, directed=False)
    used = d > 0
    comps_with_mj = np.unique(comp[mj])
    comps_used = np.unique(comp[used])
    pure_loops = len(np.setdiff1d(comps_used, comps_with_mj))
    return int(mj.sum()), n_seg_ends // 2 + pure_loops


def _meshes(
    mask: np.ndarray, min_area: float, roi: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label enclosed background regions (not touching the border or leaving ``roi``, area >=
    min_area)."""
    lab, n = ndimage.label(~mask)
    if n == 0:
        return np.zeros(mask.shape, np.int32), np.zeros(0)
    areas = np.bincount(lab.ravel()).astype(float)
    ok = areas >= min_area
    ok[0] = False
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    ok[border] = False
    if roi is not None:
        ok[np.unique(lab[~roi])] = False
    new = np.zeros(n + 1, np.int32)
    new[ok] = np.arange(1, int(ok.sum()) + 1)
    return new[lab], areas[ok]


def _mesh_and_area_metrics(ps, mesh_areas_px, mask, n_vessels, roi=None) -> dict:
    a = ps * ps
    n_mesh = len(mesh_areas_px)
    frac = float(mask[roi].mean()) if roi is not None and roi.any() else float(mask.mean())
    return {
        "tube_meshes": int(n_mesh),
        "tube_mesh_total_area_um2": float(mesh_areas_px.sum() * a),
        "tube_mesh_mean_area_um2": float(mesh_areas_px.mean() * a) if n_mesh else np.nan,
        "tube_vessel_area_fraction": frac,
        "tube_vessel_area_percent": 100.0 * frac,
        "tube_vessel_count": int(n_vessels),
    }


def _metrics_dict(
    ps,
    *,
    n_junctions,
    n_nodes,
    n_ext,
    seg,
    n_master_j,
    n_master_seg,
    master_len_px,
    mesh_areas_px,
    mask,
    n_vessels,
    width_px,
    unit,
    roi=None,
) -> dict:
    f = ps
    kinds = seg["kind"].to_numpy()
    lens = seg["length"].to_numpy()  # in the reported unit (binning included)

    def total(*ks):
        return float(lens[np.isin(kinds, ks)].sum())

    n_branches = int((kinds == "branch").sum())
    seg_len = total("segment", "internal")
    br_len = total("branch")
    iso_len = total("isolated")
    m = {
        "tube_length_unit": unit,
        "tube_total_length_um": seg_len + br_len + iso_len,
        "tube_junctions": int(n_junctions),
        "tube_nodes": int(n_nodes),
        "tube_extremities": int(n_ext),
        "tube_segments": int((kinds == "segment").sum()),
        "tube_branches": n_branches,
        "tube_isolated_segments": int((kinds == "isolated").sum()),
        "tube_master_junctions": int(n_master_j),
        "tube_master_segments": int(n_master_seg),
        "tube_master_segment_length_um": float(master_len_px * f),
        "tube_total_branching_length_um": seg_len + br_len,
        "tube_total_segment_length_um": seg_len,
        "tube_total_branch_length_um": br_len,
        "tube_total_isolated_length_um": iso_len,
        "tube_branching_interval_um": (
            float(master_len_px * f / n_branches) if n_branches and master_len_px else np.nan
        ),
        "tube_mean_width_um": float(width_px * f) if np.isfinite(width_px) else np.nan,
    }
    m.update(_mesh_and_area_metrics(ps, mesh_areas_px, mask, n_vessels, roi))
    return m


def tube_overlay(image: np.ndarray, result: TubeResult) -> np.ndarray:
    """QC picture of a tube analysis, in Angiogenesis Analyzer's colours.

    The image (percentile-stretched grey) with the tube mask tinted translucent green (dim
    tubes the ridge filter kept show as green over faint grey), meshes tinted sky blue, the
    skeleton drawn by path kind (segments magenta, master segments yellow, branches green,
    isolated elements blue), junctions as red disks, extremities as cyan disks, cell clumps
    outlined orange and everything outside the well (when the rim was excluded) darkened.
    See :data:`OVERLAY_COLOURS`.

    Parameters
    ----------
    image : (Y, X) ndarray
        The analysed image (any numeric dtype), at its input size; binned like the analysis
        when that was binned (``result.binning``).
    result : TubeResult
        Output of :func:`analyze_tubes` for that image.

    Returns
    -------
    (Y, X, 3) uint8 ndarray
        RGB picture at the analysed (binned) scale.
    """
    k = result.binning
    if len(np.shape(image)) == 2 and k > 1 and tuple(np.shape(image)) == result.full_shape:
        img = bin_mean(image if is_dask_array(image) else np.asarray(image, dtype=np.float32), k)
    else:
        img = np.asarray(image)
    if img.ndim != 2 or img.shape != result.mask.shape:
        raise ValueError(
            f"image shape {img.shape} does not match the result's shape {result.mask.shape}"
        )
    rgb = to_rgb_uint8(np.nan_to_num(img.astype(np.float64)), 0.5, 99.5).astype(np.float32)

    def tint(where, colour, alpha):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, np.float32)

    if result.roi is not None:
        rgb[~result.roi] *= 0.35
    tint(result.meshes > 0, OVERLAY_COLOURS["mesh"], 0.35)
    tint(result.mask, OVERLAY_COLOURS["mask"], 0.35)
    rgb = rgb.astype(np.uint8)
    if result.clumps is not None and result.clumps.any():
        from skimage.segmentation import find_boundaries

        edge = find_boundaries(result.clumps, mode="inner")
        rgb[ndimage.binary_dilation(edge)] = OVERLAY_COLOURS["clump"]
    line = max(1, int(round(max(rgb.shape[:2]) / 1000)))  # lines 1 px per 1000 px of side
    if result.skeleton.any():
        import skan

        sk = skan.Skeleton(result.skeleton)
        plab = np.asarray(sk.path_label_image())  # 1-based path ids, 0 = none
        seg = result.segments
        kinds = seg["kind"].to_numpy()
        if len(kinds) == sk.n_paths:
            kinds = np.where(seg["master"].to_numpy(), "master", kinds)
            table = np.zeros((len(kinds) + 1, 3), np.uint8)
            for name, c in OVERLAY_COLOURS.items():
                table[1:][kinds == name] = c
            if line > 1:
                plab = ndimage.grey_dilation(plab, size=(line, line))
            on = plab > 0
            rgb[on] = table[plab[on]]
        else:  # defensive: skeleton was edited after analysis
            rgb[result.skeleton] = OVERLAY_COLOURS["segment"]
    r_pt = 2 + line
    _paint_points(rgb, result.extremities / k, OVERLAY_COLOURS["extremity"], radius=r_pt - 1)
    _paint_points(rgb, result.junctions / k, OVERLAY_COLOURS["junction"], radius=r_pt)
    return rgb


# ---------------------------------------------------------------------------
# helpers shared with collagen.py
# ---------------------------------------------------------------------------


def _path_means(skel_obj, values: np.ndarray) -> np.ndarray:
    """Mean of a (Y, X) ``values`` image over the pixels of every skan path."""
    n = skel_obj.n_paths
    idx = [np.asarray(skel_obj.path_coordinates(i), dtype=int) for i in range(n)]
    if n == 0:
        return np.zeros(0)
    counts = np.array([len(c) for c in idx])
    allc = np.concatenate(idx)
    sums = np.bincount(np.repeat(np.arange(n), counts), values[allc[:, 0], allc[:, 1]], n)
    return sums / np.maximum(counts, 1)


def _paint_points(
    rgb: np.ndarray, points: np.ndarray, color: tuple[int, int, int], radius: int = 3
) -> None:
    """Draw filled disks at (y, x) ``points`` into ``rgb`` in place (vectorised)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return
    m = np.zeros(rgb.shape[:2], bool)
    iy = np.clip(np.round(pts[:, 0]).astype(int), 0, m.shape[0] - 1)
    ix = np.clip(np.round(pts[:, 1]).astype(int), 0, m.shape[1] - 1)
    m[iy, ix] = True
    if radius > 0:
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        m = ndimage.binary_dilation(m, structure=(yy**2 + xx**2) <= radius**2)
    rgb[m] = color


def _label_colours(n: int, seed: int = 7) -> np.ndarray:
    """(n + 1, 3) uint8 random bright colours; row 0 is black."""
    rng = np.random.default_rng(seed)
    c = rng.integers(60, 256, (n + 1, 3)).astype(np.uint8)
    c[0] = 0
    return c
