"""Cluster-aware counting: how many EVs a detection holds.

A bright spot may be an aggregate of several EVs below the optical resolution. Its count is its
background-corrected flux over that of a typical single punctum (the median detection: most
detections are singles). But single-punctum brightness itself varies (dye loading, focus): a spot
counts as more than one only when it is brighter than the image's own single puncta reach, i.e.
above the 95th percentile of a log-normal fitted (median, robust spread) to the detections'
fluxes, and at least ``_MIN_MULTIPLE`` references. So an image whose puncta vary 5-fold in
brightness does not count its brighter singles twice, and one of uniform beads still counts a
doublet as two. One row per detection; the count is its ``n_estimate``.
"""

from __future__ import annotations

import numpy as np

from .localize import disc_intensity

#: n_estimate = floor(flux / reference + 0.5 - _ROUND_OFFSET) once a spot holds more than one
_ROUND_OFFSET = 0.2
#: the core aperture (punctum radii) in which "more than one" is decided (less background
#: noise than the full 2-radius disc)
_COUNT_APERTURE = 1.0
#: a spot holds more than one EV only above this many references ...
_MIN_MULTIPLE = 1.7
#: ... and above the 95th percentile of the single-punctum log-normal (z of 0.95)
_Z_SINGLE = 1.645
_MAD_TO_SIGMA = 1.4826


def log_spread(intensity: np.ndarray) -> float:
    """Robust sigma of ``log(intensity)`` over the positive intensities (0 when < 5)."""
    pos = intensity[intensity > 0]
    if pos.size < 5:
        return 0.0
    lg = np.log(pos)
    return float(_MAD_TO_SIGMA * np.median(np.abs(lg - np.median(lg))))


def count_estimate(
    img: np.ndarray,
    peaks: np.ndarray,
    bg: np.ndarray,
    radius: np.ndarray,
    intensity: np.ndarray,
    ref: float,
    spread: float,
) -> np.ndarray:
    """Puncta per detection, at least 1.

    *Whether* a detection holds more than one punctum is decided from the flux in a core
    aperture of ``_COUNT_APERTURE x radius`` (compared with the reference through the median
    core / full-disc ratio of the image's detections, a property of the PSF); *how many* from
    the larger of the core and full-disc estimates (an aggregate spread beyond the PSF loses
    flux outside the core).
    """
    core = core_intensity(img, peaks, bg, radius)
    return count_from_core(core, intensity, ref, spread)


def core_intensity(img: np.ndarray, peaks: np.ndarray, bg: np.ndarray, radius: np.ndarray):
    """Background-corrected flux in the core aperture of :func:`count_estimate`."""
    return disc_intensity(img, peaks, bg, _COUNT_APERTURE * radius)


def count_from_core(
    core: np.ndarray, intensity: np.ndarray, ref: float, spread: float
) -> np.ndarray:
    """:func:`count_estimate` from the core-aperture fluxes (the image-wide step)."""
    n_full = np.floor(intensity / ref + 0.5 - _ROUND_OFFSET)
    ok = (core > 0) & (intensity > 0)
    k = float(np.median(core[ok] / intensity[ok])) if ok.any() else 1.0
    ratio = core / (ref * k)
    multi = ratio > max(_MIN_MULTIPLE, float(np.exp(_Z_SINGLE * spread)))
    n_core = np.floor(ratio + 0.5 - _ROUND_OFFSET)
    return np.where(multi, np.maximum(np.maximum(n_core, n_full), 2.0), 1.0)


def reference_intensity(intensity: np.ndarray) -> float:
    """Integrated intensity of a typical single punctum: the median intensity of the
    detections (most are single puncta)."""
    ok = intensity > 0
    return float(np.median(intensity[ok])) if ok.any() else np.nan
