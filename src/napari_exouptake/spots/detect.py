"""``detect_spots``: the orchestrator of the detection steps, and its config and
control-image faces."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_RADIUS_PX, SpotsConfig
from ._geometry import check_image, ellipse_offsets
from .decompose import count_estimate, log_spread
from .decompose import reference_intensity as typical_intensity
from .filters import BandPass, band_pass
from .localize import disc_intensity, lateral_sigma, ring_background, subpixel
from .noise import noise_sigma, suppress_spikes
from .threshold import local_extrema, select_puncta

if TYPE_CHECKING:
    from ..config import SpotsConfig

__all__ = [
    "SPOT_COLUMNS",
    "config_options",
    "detect_spots",
    "detect_spots_from_config",
    "learn_threshold",
]

logger = logging.getLogger(__name__)

SPOT_COLUMNS = (
    "z",
    "y",
    "x",
    "intensity",
    "amplitude",
    "background",
    "sigma_px",
    "snr",
    "n_estimate",
    "detected",
    "cluster_id",
)
#: detections dimmer than the median punctum by more than this many robust sigmas of
#: log-brightness are not counted (see _in_population)
_OUTLIER_Z = 3.0
_MAD_TO_SIGMA = 1.4826
#: a plateau of this many pixels at the image's maximum is clipping (saturation)
_MIN_CLIPPED = 4


@dataclass(frozen=True)
class Puncta:
    """One record of candidate puncta (every field has one row per punctum)."""

    peaks: np.ndarray  #: (N, ndim) int, peak pixel
    coords: np.ndarray  #: (N, ndim) float, sub-pixel position
    response: np.ndarray  #: band-pass peak (amplitude units)
    snr: np.ndarray  #: response / local noise sigma
    background: np.ndarray = None  # type: ignore[assignment]
    amplitude: np.ndarray = None  # type: ignore[assignment]
    height: np.ndarray = None  # type: ignore[assignment]
    sigma_px: np.ndarray = None  # type: ignore[assignment]
    intensity: np.ndarray = None  # type: ignore[assignment]

    def take(self, keep: np.ndarray) -> Puncta:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[keep]
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )


def _empty_table(ndim: int) -> pd.DataFrame:
    cols = SPOT_COLUMNS if ndim == 3 else SPOT_COLUMNS[1:]
    dtypes = {"detected": bool, "cluster_id": np.int64}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, float)) for c in cols})


def _check_options(threshold: Any, fdr: float, exclude_border_px: int) -> float | None:
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must lie between 0 and 1, got {fdr}")
    if exclude_border_px < 0:
        raise ValueError(f"exclude_border_px must be >= 0, got {exclude_border_px}")
    if isinstance(threshold, str):
        if threshold.strip().lower() != "auto":
            raise ValueError(f"threshold must be 'auto' or a number, got {threshold!r}")
        return None
    if isinstance(threshold, bool) or not np.isfinite(float(threshold)) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    return float(threshold)


def detect_spots(
    image: np.ndarray,
    *,
    radius_px: float | Sequence[float] | str = DEFAULT_RADIUS_PX,
    threshold: str | float = "auto",
    fdr: float = 0.05,
    background_radius_px: float | None = None,
    min_distance_px: float | None = None,
    mask: np.ndarray | None = None,
    cluster_estimate: bool = True,
    exclude_border_px: int = 0,
    reference_intensity: float | None = None,
) -> pd.DataFrame:
    """Detect puncta and measure their background-corrected intensity.

    Parameters
    ----------
    image : (Y, X) or (Z, Y, X) ndarray
        The exosome channel (any real dtype; NaN not allowed).
    radius_px : float, sequence of float or "auto", default 1.8
        Expected punctum radius in pixels, ``sqrt(2)`` x the PSF's Gaussian sigma; one value, or
        one per axis (``(rz, ry, rx)``). ``"auto"``: estimated from the image's brightest
        blob-like spots (:func:`napari_exouptake.spots.estimate_psf_sigma`), recorded in
        ``df.attrs["radius_px"]``.
    threshold : "auto" or float, default "auto"
        ``"auto"``: the smallest local signal-to-noise ratio whose estimated false-discovery
        rate is at most ``fdr`` and at least 5 (see :mod:`napari_exouptake.spots.threshold`).
        A number: minimum punctum amplitude above local background, in image intensity units
        (see :func:`learn_threshold`).
    fdr : float, default 0.05
        Accepted false-discovery rate of the automatic threshold (0-1): the sensitivity.
    background_radius_px : float, optional
        Scale of the local background (default ``1.8 x radius_px``). Must exceed ``radius_px``.
    min_distance_px : float, optional
        Minimum distance between two puncta (default ``radius_px``, at least 1).
    mask : (Y, X) or (Z, Y, X) bool ndarray, optional
        Only peaks inside the mask are kept (e.g. ``cells > 0``); the noise is estimated there.
    cluster_estimate : bool, default True
        Fill ``n_estimate`` with the cluster-aware count and add rows for the extra EVs of wide
        aggregates (``detected = False``); else 1 for every punctum.
    exclude_border_px : int, default 0
        Drop puncta whose peak lies closer than this to the Y/X border (peaks on the outermost
        pixel are always dropped: they cannot be localised).
    reference_intensity : float, optional
        Integrated intensity of one single punctum for the cluster estimate; default the median
        ``intensity`` of this image's puncta. Pass one value to compare images of a batch.

    Returns
    -------
    pandas.DataFrame
        One row per punctum: ``z`` (3D only), ``y``, ``x`` (sub-pixel, pixel coordinates),
        ``intensity`` (background-corrected integrated intensity), ``amplitude`` (background-
        corrected fitted peak), ``background`` (local background per pixel), ``sigma_px``
        (fitted lateral Gaussian sigma, NaN where the fit failed), ``snr`` (band-pass peak /
        local noise sigma), ``n_estimate`` (cluster-aware count, >= 1), ``detected`` (False for
        the extra rows of a decomposed aggregate) and ``cluster_id``. ``df.attrs``: ``threshold``
        (amplitude units), ``snr_threshold``, ``noise_sigma``, ``reference_intensity``,
        ``radius_px`` (used), ``radius_auto``, ``n_spikes`` (hot pixels removed),
        ``n_saturated`` (clipped pixels: a plateau at the image's maximum; they and their
        surroundings take no part in setting the automatic threshold).

    Raises
    ------
    ValueError
        When the image is not 2D/3D numeric, contains NaN, when ``mask`` has another shape or a
        parameter is out of range.
    """
    img = check_image(image)
    fixed = _check_options(threshold, fdr, exclude_border_px)
    if reference_intensity is not None:
        reference_intensity = float(reference_intensity)
        if not np.isfinite(reference_intensity) or reference_intensity <= 0:
            raise ValueError(f"reference_intensity must be > 0, got {reference_intensity}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {img.shape}")
        mask = mask.astype(bool, copy=False)
    n_saturated = _saturated(img).sum() if img.size else 0
    img, n_spikes = suppress_spikes(img)
    auto_r = isinstance(radius_px, str)
    if auto_r:
        if radius_px.strip().lower() != "auto":
            raise ValueError(f"radius_px must be a number or 'auto', got {radius_px!r}")
        radius_px = float(np.sqrt(2.0) * estimate_psf_sigma(img, mask=mask))
    bp = BandPass.make(img.ndim, radius_px, background_radius_px)
    f, smooth = band_pass(img, bp)
    if min_distance_px is not None and min_distance_px <= 0:
        raise ValueError(f"min_distance_px must be > 0, got {min_distance_px}")
    min_dist = np.maximum(
        bp.radius if min_distance_px is None else min_distance_px * bp.radius / bp.radius[-1], 1.0
    )
    if fixed is None:
        sel = select_puncta(f, mask, min_dist, fdr, bp, clipped=_near_saturated(img, bp))
        peaks, snr, thr, noise = sel.peaks, sel.snr, sel.threshold, sel.noise
        snr_thr = sel.snr_threshold
    else:
        peaks = local_extrema(f, min_dist, fixed)
        if mask is not None and len(peaks):
            peaks = peaks[mask[tuple(peaks.T)]]
        noise = noise_sigma(f, mask)
        snr = f[tuple(peaks.T)] / noise if noise > 0 else np.full(len(peaks), np.inf)
        thr, snr_thr = fixed, np.nan
    attrs = detection_attrs(thr, snr_thr, noise, bp, auto_r, n_spikes, n_saturated)
    border = max(int(exclude_border_px), 1)
    lat = peaks[:, -2:]
    inside = np.all((lat >= border) & (lat < np.asarray(img.shape[-2:]) - border), axis=1)
    if not inside.any():
        logger.info("no puncta above threshold %.4g (noise sigma %.4g)", thr, noise)
        empty = _empty_table(img.ndim)
        empty.attrs.update(attrs)
        return empty
    peaks = peaks[inside]
    pun = Puncta(
        peaks, peaks.astype(float), f[tuple(peaks.T)].astype(float), np.asarray(snr)[inside]
    )
    if fixed is None:
        pun = pun.take(_in_population(pun.response))
    pun = _localise(pun, img, f, smooth, bp)
    del f
    ref = typical_intensity(pun.intensity) if reference_intensity is None else reference_intensity
    attrs["reference_intensity"] = ref
    table = _table(pun, img, smooth, bp, ref, cluster_estimate)
    df = pd.DataFrame(table)
    df.attrs.update(attrs)
    logger.info(
        "%d puncta detected, %.0f estimated (threshold %.4g, noise sigma %.4g, reference "
        "intensity %.4g, radius %.3g px%s)",
        len(pun.peaks),
        float(df["n_estimate"].sum()),
        thr,
        noise,
        ref,
        attrs["radius_px"],
        " estimated" if auto_r else "",
    )
    return df


def _in_population(response: np.ndarray) -> np.ndarray:
    """Detections inside the image's punctum population: peaks dimmer than the median by
    more than ``_OUTLIER_Z`` robust sigmas of log-brightness are specks (debris, out-of-focus
    or unbound dye), not puncta of the label. A uniform population (beads) gets a tight cut, a
    broad one (dye loading, aggregates) a loose one."""
    if response.size < 10:
        return np.ones(response.size, dtype=bool)
    lg = np.log(np.maximum(response, 1e-12))
    med = np.median(lg)
    spread = _MAD_TO_SIGMA * np.median(np.abs(lg - med))
    return lg >= med - _OUTLIER_Z * spread


def _saturated(img: np.ndarray) -> np.ndarray:
    """Clipped pixels: a plateau of at least ``_MIN_CLIPPED`` pixels at exactly the image's
    maximum (a camera's or a 12/16-bit range's ceiling; an unclipped image's maximum is one
    pixel or two). Empty when there is none."""
    top = img.max()
    at_top = img == top
    if top <= img.min() or np.count_nonzero(at_top) < _MIN_CLIPPED:
        return np.zeros(img.shape, dtype=bool)
    return at_top


def _near_saturated(img: np.ndarray, bp: BandPass) -> np.ndarray | None:
    """Pixels within the band-pass's reach of a clipped pixel (None when there is none)."""
    sat = _saturated(img)
    if not sat.any():
        return None
    from scipy import ndimage

    r = int(np.ceil(bp.reach))
    size = [1] * (img.ndim - 2) + [2 * r + 1, 2 * r + 1]
    return ndimage.maximum_filter(sat, size=size)


def _localise(
    pun: Puncta, img: np.ndarray, f: np.ndarray, smooth: np.ndarray, bp: BandPass
) -> Puncta:
    """Sub-pixel position (band-pass: free of linear background), local background (annulus
    median of the raw image), fitted height and width (smoothed image), integrated intensity
    (disc of 2 radii, each pixel to its nearest punctum)."""
    offsets, _, _ = subpixel(f, pun.peaks, np.zeros(len(pun.peaks)))
    int_radius = 2.0 * bp.radius
    ring_inner = int_radius + 1.0
    ring_off, _ = ellipse_offsets(np.maximum(bp.bg_radius, ring_inner + 2.0), inner=ring_inner)
    bg = ring_background(img, pun.peaks, ring_off)
    _, height, sig_s = subpixel(smooth, pun.peaks, bg)
    return replace(
        pun,
        coords=pun.peaks + offsets,
        background=bg,
        height=height,
        amplitude=height / bp.g1_gain,
        sigma_px=lateral_sigma(sig_s, bp.s1),
        intensity=disc_intensity(img, pun.peaks, bg, int_radius),
    )


def _table(
    pun: Puncta,
    img: np.ndarray,
    smooth: np.ndarray,
    bp: BandPass,
    ref: float,
    cluster: bool,
) -> dict[str, np.ndarray]:
    """The output columns (``detected`` True and ``cluster_id`` 0 on every row: one row per
    detection; the columns stay for tables written by earlier versions)."""
    n = len(pun.peaks)
    if cluster and np.isfinite(ref):
        spread = log_spread(pun.intensity)
        n_est = count_estimate(
            img, pun.peaks, pun.background, bp.radius, pun.intensity, ref, spread
        )
    else:
        n_est = np.ones(n)
    table = {
        "coords": pun.coords,
        "intensity": pun.intensity,
        "amplitude": pun.amplitude,
        "background": pun.background,
        "sigma_px": pun.sigma_px,
        "snr": pun.snr.astype(float),
        "n_estimate": n_est,
        "detected": np.ones(n, dtype=bool),
        "cluster_id": np.zeros(n, dtype=np.int64),
    }
    names = ("z", "y", "x") if img.ndim == 3 else ("y", "x")
    cols = {name: table["coords"][:, i] for i, name in enumerate(names)}
    cols.update({key: table[key] for key in SPOT_COLUMNS[3:]})
    return cols


def detection_attrs(thr, snr_thr, noise, bp, auto_r, n_spikes, n_saturated) -> dict:
    """The detection's record in ``df.attrs`` (the reference intensity is set with the table):
    threshold in image units and on the SNR, noise sigma, radius used and whether it was
    estimated, hot pixels replaced, saturated pixels."""
    return {
        "threshold": float(thr),
        "snr_threshold": float(snr_thr),
        "noise_sigma": float(noise),
        "reference_intensity": np.nan,
        "radius_px": float(bp.radius[-1]),
        "radius_auto": auto_r,
        "n_spikes": n_spikes,
        "n_saturated": int(n_saturated),
    }


def detect_spots_from_config(
    image_zyx: np.ndarray, spots_cfg: SpotsConfig | None, *, mask: np.ndarray | None = None
) -> pd.DataFrame:
    """Run :func:`detect_spots` with the settings of a ``SpotsConfig``.

    Parameters
    ----------
    image_zyx : (Z, Y, X) or (Y, X) ndarray
        Exosome channel; a single plane (``Z == 1``) is detected in 2D (no ``z`` column).
    spots_cfg : napari_exouptake.config.SpotsConfig or None
        None: the defaults.
    mask : ndarray of bool, optional
        Same shape as ``image_zyx`` (or its single plane).

    Returns
    -------
    pandas.DataFrame
        See :func:`detect_spots`.
    """
    arr = np.asarray(image_zyx)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
        if mask is not None and np.ndim(mask) == 3:
            mask = np.asarray(mask)[0]
    if spots_cfg is None:
        return detect_spots(arr, mask=mask)
    return detect_spots(arr, mask=mask, **config_options(spots_cfg))


def config_options(spots_cfg: SpotsConfig) -> dict:
    """The detector's keyword arguments set by a ``SpotsConfig`` (whole-image and tiled)."""
    return {
        "radius_px": spots_cfg.radius_px,
        "threshold": spots_cfg.threshold,
        "fdr": spots_cfg.fdr,
        "background_radius_px": spots_cfg.background_radius_px,
        "min_distance_px": spots_cfg.min_distance_px,
        "cluster_estimate": spots_cfg.cluster_estimate,
        "exclude_border_px": spots_cfg.exclude_border_px,
    }


def learn_threshold(
    control_images: np.ndarray | Sequence[np.ndarray],
    *,
    radius_px: float | Sequence[float] = DEFAULT_RADIUS_PX,
    background_radius_px: float | None = None,
    min_distance_px: float | None = None,
    max_false_per_mpx: float = 1.0,
    masks: Sequence[np.ndarray | None] | None = None,
) -> float:
    """Learn a fixed detection threshold from control images without puncta.

    The threshold is set so that, on the control images (dye-only or no-EV wells), at most
    ``max_false_per_mpx`` local maxima per million pixels (inside ``masks``) pass it.

    Parameters
    ----------
    control_images : ndarray or sequence of ndarray
        One ``(Y, X)``/``(Z, Y, X)`` image or a sequence of them (shapes may differ).
    radius_px, background_radius_px, min_distance_px
        As in :func:`detect_spots`; use the same values when detecting.
    max_false_per_mpx : float, default 1.0
        Accepted false detections per 10^6 pixels of control image.
    masks : sequence of ndarray of bool or None, optional
        Region of each control image to learn from (e.g. ``cells > 0``).

    Returns
    -------
    float
        Threshold in amplitude units, to pass as ``detect_spots(..., threshold=value)``.

    Raises
    ------
    ValueError
        When no control image is given, ``max_false_per_mpx`` is negative or the images have
        no local maxima at all (flat images).
    """
    if isinstance(control_images, np.ndarray) and control_images.ndim in (2, 3):
        images = [control_images]
    else:
        images = list(control_images)
    if not images:
        raise ValueError("learn_threshold needs at least one control image")
    if max_false_per_mpx < 0:
        raise ValueError(f"max_false_per_mpx must be >= 0, got {max_false_per_mpx}")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(masks)} masks given for {len(images)} control images")
    values = []
    n_px = 0
    for i, im in enumerate(images):
        img = check_image(im, name=f"control image {i}")
        bp = BandPass.make(img.ndim, radius_px, background_radius_px)
        f = band_pass(suppress_spikes(img)[0], bp)[0]
        md = (
            bp.radius
            if min_distance_px is None
            else (float(min_distance_px) * bp.radius / bp.radius[-1])
        )
        pk = local_extrema(f, np.maximum(md, 1.0), -np.inf)
        m = None if masks is None else masks[i]
        if m is not None:
            m = np.asarray(m, dtype=bool)
            if m.shape != img.shape:
                raise ValueError(
                    f"mask {i} shape {m.shape} differs from control image shape {img.shape}"
                )
            pk = pk[m[tuple(pk.T)]]
            n_px += int(m.sum())
        else:
            n_px += img.size
        values.append(f[tuple(pk.T)])
    vals = np.sort(np.concatenate(values))[::-1]
    if vals.size == 0 or vals[0] <= vals[-1]:
        raise ValueError("control images are flat: no local maxima to learn a threshold from")
    allowed = int(np.floor(max_false_per_mpx * n_px / 1e6))
    thr = float(vals[min(allowed, vals.size - 1)])
    logger.info(
        "learned threshold %.4g from %d control image(s) (%d px, %.3g false/Mpx allowed)",
        thr,
        len(images),
        n_px,
        max_false_per_mpx,
    )
    return max(thr, 0.0)


#: estimate_psf_sigma: detection rounds, starting from this PSF sigma (the default radius 1.8)
_PSF_START = DEFAULT_RADIUS_PX / np.sqrt(2.0)
_PSF_ROUNDS = 3


def estimate_psf_sigma(image: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """The puncta's lateral Gaussian sigma (px), measured on the image's own puncta.

    Puncta are detected (automatic threshold) at a trial size, starting from the default
    (sigma 1.27 px); the median fitted width (``sigma_px``, log-parabola fit, exact for a
    Gaussian) of the brighter half of them becomes the next trial size; three rounds (a trial
    size far from the truth biases the first fit). Returns the start value when no punctum is
    found. The texture-free puncta selected by the threshold, not the image's largest blobs,
    set the size, so bright autofluorescent structures do not inflate it.

    Parameters
    ----------
    image : (Y, X) or (Z, Y, X) ndarray
    mask : bool ndarray of the same shape, optional

    Returns
    -------
    float
        PSF sigma in pixels; ``radius_px = sqrt(2) x`` this.
    """
    sigma = _PSF_START
    for _ in range(_PSF_ROUNDS):
        df = detect_spots(image, radius_px=np.sqrt(2.0) * sigma, mask=mask, cluster_estimate=False)
        w = df["sigma_px"].to_numpy()
        bright = df["snr"].to_numpy() >= np.median(df["snr"]) if len(df) else np.zeros(0, bool)
        w = w[bright & np.isfinite(w)]
        if w.size < 3:
            break
        new = float(np.clip(np.median(w), 0.5, 8.0))
        if abs(new - sigma) < 0.02 * sigma:
            sigma = new
            break
        sigma = new
    return sigma
