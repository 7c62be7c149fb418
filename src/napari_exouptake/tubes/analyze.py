"""The tube analysis of one plane (:func:`analyze_tubes`): options checked, the plane binned,
polarity and well found, the tube mask built (intensity threshold, ridge growth, clean-up,
clumps, bridged gaps), its graph measured, the run's own metrics added."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

import numpy as np
from scipy import ndimage

from .._skeleton import (
    binned_plane,
    check_params,
    check_pixel_size,
    check_thresholds,
    otsu_or_none,
)
from .clumps import _split_clumps
from .graph import _analyze_mask
from .illumination import _foreground, _guess_polarity, _well_region
from .mask import _bridge_gaps, _fill_small_holes, _remove_small, _ridge_hysteresis
from .result import TubeResult

log = logging.getLogger(__package__)  # "napari_exouptake.tubes", the name before the split


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
    polarity, wmin, wmax = _checked_options(polarity, bright_tubes, method, tube_width_px)
    if binning > 1:
        log.info("tubes: %s image binned %dx -> %s", full_shape, binning, img.shape)

    if polarity == "auto":
        polarity = _guess_polarity(img, background_radius_px)
    roi = None
    if exclude_rim is True or exclude_rim == "auto":
        roi = _well_region(img, required=exclude_rim is True)
    mask, work = _intensity_mask(
        img, polarity, roi, smoothing_sigma_px, background_radius_px, threshold
    )
    if min_object_area_px is None:
        min_object_area_px = max(20.0, 2.0 * min_segment_length_px * (smoothing_sigma_px + 1.0))
    n_intensity = int(mask.sum())
    if clump_min_diameter_px is None:
        clump_min_diameter_px = 2.0 * wmax
    mask, clumps = _network_mask(
        mask,
        work,
        roi,
        method=method,
        widths=(wmin, wmax),
        ridge_k=ridge_k,
        min_segment_length_px=min_segment_length_px,
        min_object_area_px=min_object_area_px,
        min_mesh_area_px=min_mesh_area_px,
        clump_min_diameter_px=float(clump_min_diameter_px),
    )
    res = _analyze_mask(
        mask,
        pixel_size_um=ps,
        min_segment_length_px=float(min_segment_length_px),
        min_mesh_area_px=float(min_mesh_area_px),
        junction_merge_px=junction_merge_px,
        binning=binning,
        roi=roi,
    )
    m = _run_metrics(res.metrics, mask, clumps, roi, polarity, method, n_intensity, binning, ps)
    return replace(res, metrics=m, clumps=clumps, roi=roi, binning=binning, full_shape=full_shape)


def _checked_options(polarity, bright_tubes, method, tube_width_px) -> tuple[str, float, float]:
    """(polarity, narrowest, widest tube width) from the options, or a ValueError."""
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
    return polarity, wmin, wmax


def _intensity_mask(img, polarity, roi, smoothing_sigma_px, background_radius_px, threshold):
    """(intensity mask: the smoothed foreground above the threshold, unsmoothed foreground the
    ridge filter reads); both empty outside the well ``roi``."""
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
    return mask, work


def _network_mask(
    mask,
    work,
    roi,
    *,
    method,
    widths,
    ridge_k,
    min_segment_length_px,
    min_object_area_px,
    min_mesh_area_px,
    clump_min_diameter_px,
):
    """(tube mask, clump labels): the intensity ``mask`` grown along ridges (``ridge``), small
    objects and holes cleaned, clumps cut out, free ends bridged (``ridge``)."""
    wmin, wmax = widths
    if method == "ridge" and mask.any():
        mask = _ridge_hysteresis(work, mask, (wmin, wmax), ridge_k, roi, min_segment_length_px)
    mask = _remove_small(mask, min_object_area_px)
    mask = _fill_small_holes(mask, min_mesh_area_px)
    mask, clumps = _split_clumps(mask, clump_min_diameter_px, min_segment_length_px)
    if method == "ridge" and mask.any():
        mask = _bridge_gaps(mask, max_gap=2 * wmin + 2, cap=wmax / 2 + 2, exclude=clumps > 0)
        mask = _fill_small_holes(mask, min_mesh_area_px)  # holes a bridge closed
    return mask, clumps


def _run_metrics(metrics, mask, clumps, roi, polarity, method, n_intensity, binning, ps) -> dict:
    """The graph's ``metrics`` plus the run's own: clumps, polarity, method, what the ridge step
    added, binning, the well's area."""
    f = binning * (ps if ps else 1.0)
    m = dict(metrics)
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
    return m
