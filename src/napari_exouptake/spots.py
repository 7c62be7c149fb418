"""Detection of labelled-exosome puncta (PKH26, PKH67, DiI, CD63-GFP ...).

Method (2D ``(Y, X)`` and 3D ``(Z, Y, X)``, every step vectorised over pixels and spots):

1. **Band-pass filter.** A difference of Gaussians ``G(s1) * I - G(s2) * I`` with ``s1`` = 0.7 x
   the punctum's Gaussian sigma (``radius_px / sqrt(2)``; a little sharper than a matched
   filter, so crowded puncta keep separate maxima) and ``s2`` a wider Gaussian
   (``background_radius_px / 2``, default radius ``1.8 x radius_px``) that follows diffuse
   cytoplasmic autofluorescence and uneven illumination. The response is scaled so that a
   punctum of peak amplitude ``A`` above a smooth background gives ``A`` at its centre:
   thresholds are in image intensity units.
2. **Threshold.** ``"auto"`` (default ``auto_method="snr"``): the band-passed image is divided
   by a local noise sigma (local RMS away from the puncta of a first pass), and
   the threshold on that SNR image is the smallest whose estimated false-discovery rate is at
   most ``fdr`` (0.05; 1.4 x that on the whitened filter, which runs only near the detection
   limit), false maxima being estimated by the local minima (a decoy count:
   background texture and noise are symmetric about 0; the filter's negative ring around each
   punctum is subtracted first). ``auto_method="fdr"`` does the same on the band-passed image.
   ``auto_method="mad"``: ``threshold_k`` x the robust noise sigma (1.4826 x MAD). A number: a
   fixed minimum amplitude. :func:`learn_threshold` derives one from control images
   (dye-only, no-EV) for a chosen false-detection rate.
3. **Peaks.** Local maxima of the filtered image within ``min_distance_px`` (ties resolved),
   then two peak-level tests: a blob wider than 1.5 x the typical width holding less than one
   reference punctum is diffuse background; a peak below 0.15 x the median peak is dropped.
4. **Sub-pixel position and size.** Separable three-point Gaussian (log-parabola) fit on the
   Gaussian-smoothed, background-subtracted image around each peak: exact for a Gaussian spot.
5. **Local background.** Median of the raw image on an annulus around each punctum.
6. **Intensity.** ``intensity``: background-corrected sum over a disc of radius
   ``2 x radius_px``, each pixel given to its nearest punctum (no double counting in dense
   regions); ``amplitude``: fitted background-corrected peak.
7. **Cluster-aware estimate.** ``n_estimate = max(1, floor(intensity / reference + 0.3))``
   with ``reference`` the median punctum intensity (the typical single punctum; as Big-FISH's
   dense-region decomposition and QuPath's cluster estimate); wide aggregates are decomposed
   into ``n_estimate`` rows placed by CLEAN-style subtraction of reference puncta.

:func:`match_spots` scores detections against ground truth (one-to-one, Hungarian matching).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "SPOT_COLUMNS",
    "MatchCounts",
    "SpotMatch",
    "detect_spots",
    "detect_spots_from_config",
    "filter_image",
    "learn_threshold",
    "match_spots",
]

logger = logging.getLogger(__name__)

#: Columns of a spots table, in order (``z`` only for 3D images).
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

_MAD_TO_SIGMA = 1.4826
#: SpotsConfig fields passed on when the config has them (newer settings)
_OPTIONAL_CFG = (
    "auto_method",
    "fdr",
    "max_width_factor",
    "min_relative_amplitude",
    "reference_intensity",
    "split_merged",
    "residual_pass",
    "whiten",
)
#: a bright punctum is split into members only when its fitted sigma exceeds this factor x the
#: median sigma of single puncta (aggregates are wider than the PSF; bright singles are not;
#: 1.15 before, 1.0 places more members: F1 +0.004 normal / +0.02 hard, beads -0.008)
_WIDE_FACTOR = 1.0
#: detection filter sigma as a fraction of the PSF sigma (1 = matched filter)
_SHARPEN = 0.7
#: a blob wider than max_width_factor x the typical width is kept only when it holds at least
#: this many reference puncta (then it is an aggregate)
_WIDE_MIN_N = 1.0
#: n_estimate = floor(intensity / reference + 0.5 - _ROUND_OFFSET): a detection counts as two
#: puncta from 1.7 references on (single-punctum brightness is log-normal: plain rounding
#: counts the brightest ~18 % of singles twice)
_ROUND_OFFSET = 0.2
#: n_estimate is measured in a core aperture of this many punctum radii (see _count_estimate)
_COUNT_APERTURE = 1.0
#: multi-emitter splitting (2D): at most this many Gaussians per detection
_MAX_K = 3
#: Levenberg-Marquardt iterations per fit
_LM_ITER = 20
#: a component is added when the RSS drops by more than 3 x this x the residual variance
_SPLIT_PENALTY = 10.0
#: model-mismatch floor of the residual sigma, fraction of the brightest component's amplitude
_MODEL_TOL = 0.1
#: every resolved component's amplitude is at least this many detection thresholds
_SPLIT_MIN_SNR = 2.0
#: resolved components are at least this many PSF sigmas apart
_MIN_SEP = 1.5
#: residual pass: the empirical correction of the Gaussian model (median residual of isolated
#: puncta over amplitude), averaged over 1 px rings, may reach at most this much beyond 2.5
#: PSF sigmas, else the model is judged inadequate (halo, non-Gaussian PSF) and the pass is
#: skipped. Measured ring halos: simulator <= 0.0071 (easy to hard), TERRA 0.005, HybISS
#: 0.022, real beads 0.072
_RESID_MAX_HALO = 0.015
#: residual pass: half width (px) of the empirical-correction window; isolated puncta have no
#: other detection within twice this
_RESID_WIN = 6
#: residual pass: a new peak lies at least this many punctum radii from every first-pass peak
_RESID_EXCL = 0.85
#: residual pass: ... and its amplitude is at least this fraction of the brightest first-pass
#: peak within _RESID_NEAR radii (the wings of bright puncta are where the model errs most)
_RESID_REL = 0.2
_RESID_NEAR = 2.2
#: whitened detection: the background power is floored at this fraction of its value at the
#: punctum's frequency (limits the filter's high-frequency gain)
_WHITEN_FLOOR = 0.2
#: whiten="auto" uses the whitened filter only when it is predicted to raise an isolated
#: punctum's signal-to-noise ratio by at least this factor over the band-pass
_WHITEN_MIN_GAIN = 1.05
#: ... and only when the puncta are near the detection limit: the median accepted maximum
#: of the band-pass is within this many thresholds (bright puncta gain nothing from more
#: sensitivity, and the whitened filter's ringing costs accuracy among crowded ones)
_WHITEN_NEAR_LIMIT = 2.0
#: ... and then selects its puncta at this many times the false-discovery rate ``fdr``: near
#: the detection limit the puncta just below the ``fdr`` cut are still mostly real (16 hard
#: tuning images: 1,121 of the 1,716 points that 1.4 x adds are true, 65 %; at normal, where
#: the filter does not run, 0.07 instead of 0.05 would add 244 points, 49 % true)
_WHITEN_FDR_FACTOR = 1.4
#: the FDR threshold never goes below this many robust noise sigmas of the band-passed image
_FDR_FLOOR_K = 2.0
#: rounds of the ring-correction fixed point in the decoy FDR threshold
_FDR_ITER = 8


# --------------------------------------------------------------------------------------------
# input checks and geometry helpers
# --------------------------------------------------------------------------------------------
def _check_image(image: Any, name: str = "image") -> np.ndarray:
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


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=float))
    if v.size == 1:
        v = np.repeat(v, ndim)
    if v.size != ndim:
        raise ValueError(f"{name} needs 1 or {ndim} values for a {ndim}D image, got {v.size}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be > 0, got {value}")
    return v


def _ellipse_offsets(
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


def _gather(
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


def _clear_around(keep: np.ndarray, peaks: np.ndarray, offsets: np.ndarray) -> None:
    """Set ``keep`` to False at ``peaks[:, None] + offsets`` (inside the image), in chunks of
    ~10^6 gathered pixels so that the index arrays stay small for many peaks or wide discs."""
    if len(peaks) == 0:
        return
    for part in np.array_split(peaks, -(-len(peaks) * len(offsets) // 1_000_000)):
        _, valid, flat = _gather(keep, part, offsets)
        keep.ravel()[flat[valid]] = False


def _noise_at(peaks: np.ndarray, nmap: np.ndarray | None, noise: float) -> np.ndarray:
    """Noise sigma of the detection image at ``peaks``: the local map, else the global one."""
    if nmap is None:
        return np.full(len(peaks), noise)
    return nmap[tuple(peaks.T)].astype(np.float64)


def _empty_table(ndim: int) -> pd.DataFrame:
    cols = SPOT_COLUMNS if ndim == 3 else SPOT_COLUMNS[1:]
    dtypes = {"detected": bool, "cluster_id": np.int64}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, float)) for c in cols})


def _filter_params(
    ndim: int, radius_px: float | Sequence[float], background_radius_px: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    radius = _per_axis(radius_px, ndim, "radius_px")
    if background_radius_px is None:
        bg_radius = 1.8 * radius
    else:
        bg_radius = _per_axis(background_radius_px, ndim, "background_radius_px")
        # keep the anisotropy of radius_px when a single background radius is given
        if np.ndim(background_radius_px) == 0:
            bg_radius = float(background_radius_px) * radius / radius[-1]
    if np.any(bg_radius <= radius):
        raise ValueError(
            f"background_radius_px ({background_radius_px}) must be larger than radius_px "
            f"({radius_px})"
        )
    s1 = _SHARPEN * radius / np.sqrt(2.0)
    s2 = np.maximum(bg_radius / 2.0, 1.5 * s1)
    return radius, bg_radius, s1, s2


def _filter_gains(s1: np.ndarray, s2: np.ndarray, psf_sigma: np.ndarray) -> tuple[float, float]:
    """Centre response of ``G(s1)`` and of ``G(s1) - G(s2)`` to a unit-amplitude PSF."""
    half = np.ceil(4 * s2 + 4 * psf_sigma).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    psf = np.exp(-0.5 * sum((g / s) ** 2 for g, s in zip(grids, psf_sigma, strict=False)))
    centre = tuple(half)
    g1 = ndimage.gaussian_filter(psf, s1, mode="constant")[centre]
    g2 = ndimage.gaussian_filter(psf, s2, mode="constant")[centre]
    return float(g1), float(g1 - g2)


def filter_image(
    image: np.ndarray,
    *,
    radius_px: float | Sequence[float] = 1.8,
    background_radius_px: float | None = None,
) -> np.ndarray:
    """Band-pass (difference-of-Gaussians) image in punctum-amplitude units.

    Parameters
    ----------
    image : (Y, X) or (Z, Y, X) ndarray
        Exosome channel.
    radius_px : float or sequence of float
        Punctum radius in pixels (``sqrt(2)`` x the PSF's Gaussian sigma), or one per axis.
    background_radius_px : float, optional
        Scale of the local background; default ``1.8 x radius_px``.

    Returns
    -------
    (Y, X) or (Z, Y, X) float32 ndarray
        A punctum of peak amplitude ``A`` above a smooth background responds with ``A``.
    """
    img = _check_image(image)
    return _filter(img, radius_px, background_radius_px)[0]


def _filter(
    img: np.ndarray, radius_px: Any, background_radius_px: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    radius, bg_radius, s1, s2 = _filter_params(img.ndim, radius_px, background_radius_px)
    psf_sigma = radius / np.sqrt(2.0)
    g1_gain, dog_gain = _filter_gains(s1, s2, psf_sigma)
    smooth = ndimage.gaussian_filter(img, s1, output=np.float32, mode="reflect")
    dog = ndimage.gaussian_filter(img, s2, output=np.float32, mode="reflect")
    np.subtract(smooth, dog, out=dog)
    dog /= np.float32(dog_gain)
    params = {
        "radius": radius,
        "bg_radius": bg_radius,
        "s1": s1,
        "psf": psf_sigma,
        "s2": s2,
        "g1_gain": g1_gain,
        "dog_gain": dog_gain,
    }
    return dog, smooth, params


def _noise_sigma(filtered: np.ndarray, mask: np.ndarray | None) -> float:
    vals = filtered[mask] if mask is not None and mask.sum() >= 64 else filtered.ravel()
    if vals.size > 2_000_000:  # a regular subsample keeps the estimate cheap on big images
        vals = vals[:: int(np.ceil(vals.size / 2_000_000))]
    med = np.median(vals)
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(vals - med)))
    if sigma <= 0:  # e.g. large exactly-flat regions (clipped or zero background)
        sigma = float(np.std(vals))
    return sigma


def _noise_map(filtered: np.ndarray, block: int = 64) -> np.ndarray:
    """Local robust noise sigma (1.4826 x MAD per ``block`` x ``block`` Y/X tile, all Z
    together), median-smoothed over 3 x 3 tiles and interpolated to full size (float32)."""
    arr = filtered if filtered.ndim == 3 else filtered[None]
    nz, h, w = arr.shape
    b = int(min(block, h, w))
    ny, nx = int(np.ceil(h / b)), int(np.ceil(w / b))
    pad = ((0, 0), (0, ny * b - h), (0, nx * b - w))
    padded = np.pad(arr, pad, mode="reflect") if any(p[1] for p in pad) else arr
    tiles = padded.reshape(nz, ny, b, nx, b).transpose(1, 3, 0, 2, 4).reshape(ny, nx, -1)
    med = np.median(tiles, axis=2, keepdims=True)
    sig = _MAD_TO_SIGMA * np.median(np.abs(tiles - med), axis=2)
    del tiles, padded
    sig = ndimage.median_filter(sig, size=3, mode="nearest")
    glob = float(np.median(sig))
    sig = np.where(sig > 0, sig, glob if glob > 0 else 1.0)
    full = ndimage.zoom(sig, (ny * b / ny, nx * b / nx), order=1, mode="nearest", grid_mode=True)
    full = full[:h, :w].astype(np.float32)
    return full if filtered.ndim == 2 else np.broadcast_to(full, filtered.shape)


def _psf_response(
    delta: np.ndarray, s1: np.ndarray, s2: np.ndarray, dog_gain: float, psf: np.ndarray
) -> np.ndarray:
    """Band-pass response at offsets ``delta`` ``(..., ndim)`` px to a unit-peak punctum of
    Gaussian sigma ``psf`` (the filter is normalised so that the centre gives 1)."""
    sp2 = psf**2
    v1 = sp2 + s1**2
    v2 = sp2 + s2**2
    a1 = np.prod(np.sqrt(sp2 / v1)) * np.exp(-0.5 * (delta**2 / v1).sum(axis=-1))
    a2 = np.prod(np.sqrt(sp2 / v2)) * np.exp(-0.5 * (delta**2 / v2).sum(axis=-1))
    return (a1 - a2) / dog_gain


class _BackgroundSpectrum:
    """Radially averaged power spectrum of a 2D image's background, puncta painted over.

    Candidate puncta (above 2.5 band-pass sigmas) are replaced by a normalised convolution
    of their surroundings out to where their profile falls below 0.3 noise sigmas (at least
    2 radii). The power is Welch's average of Hann-windowed periodograms of up to 16 tiles
    of at most 256 x 256 px spread over the image (bounded memory on large images), averaged
    over rings of ``|k|`` (cycles / px): ``k`` and ``power``.
    """

    def __init__(
        self, img: np.ndarray, filtered: np.ndarray, noise: float, p: dict[str, Any]
    ) -> None:
        from scipy import fft

        h, w = img.shape
        cand = _local_maxima(filtered, np.maximum(p["radius"], 1.0), 2.5 * noise)
        keep = np.ones(img.shape, dtype=bool)
        if len(cand):
            amp = filtered[tuple(cand.T)].astype(np.float64) / (0.3 * noise)
            reach = float(p["psf"][-1]) * np.sqrt(2.0 * np.log(np.maximum(amp, 1.0)))
            r_px = np.clip(np.ceil(reach), np.ceil(2.0 * p["radius"][-1]), 12).astype(int)
            for r in np.unique(r_px):  # a handful of radii, not a loop over puncta
                off, _ = _ellipse_offsets(p["radius"] * (r / p["radius"][-1]))
                _clear_around(keep, cand[r_px == r], off)
        fill = 2.0 * float(p["radius"].max())
        margin = int(np.ceil(4.0 * fill))
        th, tw = min(256, h), min(256, w)
        ys = np.unique(np.linspace(0, h - th, max(1, min(4, -(-h // th)))).astype(int))
        xs = np.unique(np.linspace(0, w - tw, max(1, min(4, -(-w // tw)))).astype(int))
        window = (np.hanning(th)[:, None] * np.hanning(tw)[None, :]).astype(np.float32)
        k = np.hypot(fft.fftfreq(th)[:, None], fft.rfftfreq(tw)[None, :])
        step = 1.0 / max(th, tw)
        kb = (k / step).astype(np.intp).ravel()
        count = np.maximum(np.bincount(kb), 1)
        prad = np.zeros(count.size)
        for y0 in ys:  # at most 16 tiles: bounded work, not a loop over pixels or puncta
            for x0 in xs:
                sy = slice(max(0, y0 - margin), min(h, y0 + th + margin))
                sx = slice(max(0, x0 - margin), min(w, x0 + tw + margin))
                x = img[sy, sx].astype(np.float32)
                km = keep[sy, sx].astype(np.float32)
                num = ndimage.gaussian_filter(x * km, fill, mode="reflect")
                den = ndimage.gaussian_filter(km, fill, mode="reflect")
                x = np.where(km > 0, x, num / np.maximum(den, 1e-6))
                oy, ox = y0 - sy.start, x0 - sx.start
                t = x[oy : oy + th, ox : ox + tw]
                t = (t - np.float32(t.mean())) * window
                prad += np.bincount(kb, (np.abs(fft.rfft2(t)) ** 2).ravel(), minlength=count.size)
        prad = ndimage.uniform_filter1d(prad / count, 3, mode="nearest")
        good = prad > 0
        self.k = ((np.arange(prad.size) + 0.5) * step)[good]
        self.power = prad[good]


class _Whitener:
    """Pre-whitened matched filter of a 2D image.

    ``H(k) = G(k) (1 - exp(-2 pi^2 s2^2 k^2)) / P(k)``: the punctum's spectrum ``G`` over
    the image's own background power spectrum ``P`` (:class:`_BackgroundSpectrum`), with the
    band-pass's rejection of smooth background. This is the optimal linear detector of an
    isolated punctum in stationary coloured noise: cytoplasmic autofluorescence texture at
    the punctum's scale, which is what hides dim puncta on bright cells, is discounted,
    and the filter leans on the frequencies where this image's background is quiet. Output
    in amplitude units (a punctum of peak ``A`` above background responds with ``A``).

    Its response to a punctum rings (on a hard simulated image, seed 11: -0.25 of the peak
    at 3 px where the band-pass has -0.10, and a positive side lobe of +0.07 at 6 px), so
    maxima are corrected for the response of brighter neighbours (:func:`_explain_maxima`).
    """

    def __init__(self, spec: _BackgroundSpectrum, p: dict[str, Any]) -> None:
        self._k = spec.k
        self._sig = float(p["psf"][-1])
        self._s2 = float(p["s2"][-1])
        # a floor (a fraction of the power at the punctum's own frequency) keeps a background
        # with little high-frequency power from blowing up the filter's highest frequencies
        p_mid = float(np.interp(1.0 / (2.0 * np.pi * self._sig), spec.k, spec.power))
        self._p = np.maximum(spec.power, _WHITEN_FLOOR * p_mid)
        # response to a unit punctum, tabulated (for the neighbour correction)
        n = 64
        c = self._c(n, n, full=True)
        unit = np.fft.ifft2(2.0 * np.pi * self._sig**2 * np.exp(-c * self._sig**2)).real
        kernel = self._apply(unit.astype(np.float32))
        self._gain = float(kernel[0, 0])
        self._kernel = np.fft.fftshift(kernel / self._gain)
        g = np.arange(n) - n // 2
        rr = np.hypot(g[:, None], g[None, :])
        #: offsets beyond this many px respond with less than 1 % of the centre
        self.reach = float(rr[np.abs(self._kernel) > 0.01].max()) + 1.0
        self._pad = int(np.ceil(max(self.reach, 6.0 * self._s2)))
        # predicted signal-to-noise gain over the default band-pass, isolated punctum
        c = self._c(128, 128, full=True)
        power = np.interp(np.sqrt(c / 2.0) / np.pi, self._k, self._p)
        sig = np.exp(-c * self._sig**2)
        dog = np.exp(-c * float(p["s1"][-1]) ** 2) - np.exp(-c * self._s2**2)
        whit = self._transfer(c)

        def snr(tf: np.ndarray) -> float:
            return float((sig * tf).sum() / np.sqrt((power * tf**2).sum()))

        #: predicted signal-to-noise ratio of an isolated punctum, over the band-pass's
        self.gain = snr(whit) / snr(dog)

    @staticmethod
    def _c(h: int, w: int, full: bool = False) -> np.ndarray:
        """``2 pi^2 |k|^2`` on the (r)fft grid of an ``h`` x ``w`` image."""
        from scipy import fft

        kx = fft.fftfreq(w) if full else fft.rfftfreq(w)
        return 2.0 * np.pi**2 * (fft.fftfreq(h)[:, None] ** 2 + kx[None, :] ** 2)

    def _transfer(self, c: np.ndarray) -> np.ndarray:
        tf = np.exp(-c * self._sig**2) * -np.expm1(-c * self._s2**2)
        return tf / np.interp(np.sqrt(c / 2.0) / np.pi, self._k, self._p)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        from scipy import fft

        h, w = x.shape
        # the transfer function by lookup in a fine radial table (float32 throughout: a
        # float64 |k| grid would cost 4x the image's float32 bytes several times over)
        n_tab = 8192
        k_tab = np.linspace(0.0, 0.75, n_tab + 1)
        table = self._transfer(2.0 * np.pi**2 * k_tab**2).astype(np.float32)
        ky = fft.fftfreq(h).astype(np.float32)
        kx = fft.rfftfreq(w).astype(np.float32)
        idx = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
        idx *= np.float32(n_tab / 0.75)
        tf = table[np.rint(idx).astype(np.int32)]
        del idx
        spec = fft.rfft2(x, workers=-1)
        spec *= tf
        del tf
        return fft.irfft2(spec, s=(h, w), workers=-1)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Whitened response of ``image`` (float32, same shape), reflect-padded so that the
        FFT does not wrap its borders together."""
        q = self._pad
        x = np.pad(np.asarray(image, dtype=np.float32), q, mode="reflect")
        out = self._apply(x)[q:-q, q:-q]
        return np.ascontiguousarray(out / np.float32(self._gain), dtype=np.float32)

    def response(self, delta: np.ndarray) -> np.ndarray:
        """Response at offsets ``delta`` ``(..., 2)`` px to a unit-peak punctum (1 at the
        centre), linearly interpolated; 0 beyond the tabulated kernel."""
        c = np.asarray(self._kernel.shape)[:, None] // 2
        pts = np.moveaxis(np.asarray(delta, dtype=np.float64), -1, 0).reshape(2, -1) + c
        val = ndimage.map_coordinates(self._kernel, pts, order=1, mode="constant", cval=0.0)
        return val.reshape(np.shape(delta)[:-1])


def _explain_maxima(
    maxima: np.ndarray,
    vmax: np.ndarray,
    ring: Callable[[np.ndarray], np.ndarray],
    reach: float,
    min_src: float,
) -> np.ndarray:
    """Maxima heights less the filter response, at their positions, of the higher maxima
    within ``reach`` px (of at least ``min_src``; dimmer ones' responses are far below the
    noise, and leaving them out bounds the work).

    For a filter that rings (:class:`_Whitener`): a maximum on a brighter punctum's positive
    side lobe is explained away (its own height falls to about 0) and one in a brighter
    punctum's negative ring is restored. Without this, side-lobe maxima beside bright puncta
    pass the threshold, and their rings then let the decoy ring correction discount the
    noise minima around them: on a test image with 60 bright puncta on texture (unit test)
    the forced whitened filter found 306 points without this correction, 65 with it (the
    band-pass: 65).
    """
    from scipy.spatial import cKDTree

    src_idx = np.flatnonzero(vmax >= min_src)
    if len(maxima) < 2 or src_idx.size == 0:
        return vmax
    sdm = cKDTree(maxima).sparse_distance_matrix(
        cKDTree(maxima[src_idx]), reach, output_type="coo_matrix"
    )
    src = vmax[src_idx[sdm.col]]
    use = src > vmax[sdm.row]
    delta = (maxima[sdm.row[use]] - maxima[src_idx[sdm.col[use]]]).astype(np.float64)
    contrib = np.bincount(sdm.row[use], weights=ring(delta) * src[use], minlength=len(maxima))
    return vmax - contrib


@dataclass
class _Selection:
    """Result of :func:`_auto_threshold`."""

    thr: float  #: threshold in amplitude units (local SNR threshold x median local noise)
    snr_thr: float | None  #: local-SNR threshold ("snr") or None ("fdr")
    nmap: np.ndarray | None  #: local noise map of the detection image ("snr")
    peaks: np.ndarray  #: accepted maxima (N, ndim)
    snr_level: float  #: the threshold in the units of ``median_snr``
    median_snr: float  #: median of the accepted maxima's (local) signal-to-noise ratio


def _auto_threshold(
    det: np.ndarray,
    d_noise: float,
    mask: np.ndarray | None,
    min_dist: np.ndarray,
    method: str,
    fdr: float,
    radius: np.ndarray,
    ring: Callable[[np.ndarray], np.ndarray],
    reach: float,
    explain: bool = False,
) -> _Selection:
    """Decoy-FDR selection of the maxima of the detection image ``det`` (``method`` "fdr" or
    "snr", see :func:`detect_spots`). ``ring`` / ``reach``: the filter's response to a
    punctum. ``explain``: first correct each maximum for the response of higher maxima
    around it (:func:`_explain_maxima`; for a ringing filter)."""
    # local maxima and minima once; both FDR passes reuse them (the local noise map varies
    # on a 10 px scale, so it hardly moves extrema)
    floor_f = (_FDR_FLOOR_K if method == "fdr" else 1.0) * d_noise
    maxima = _local_maxima(det, min_dist, floor_f)
    minima = _local_maxima(det, min_dist, floor_f, minima=True)
    if mask is not None:
        maxima = maxima[mask[tuple(maxima.T)]] if len(maxima) else maxima
        minima = minima[mask[tuple(minima.T)]] if len(minima) else minima
    vmax = det[tuple(maxima.T)].astype(np.float64)
    vmin = -det[tuple(minima.T)].astype(np.float64)
    if explain:
        vmax = _explain_maxima(maxima, vmax, ring, reach, 3.0 * d_noise)
    thr, n_max, n_min = _fdr_threshold(
        maxima, vmax, minima, vmin, fdr, _FDR_FLOOR_K * d_noise, ring, reach
    )
    nmap = None
    snr_thr = None
    if method == "snr":
        nmap = _residual_noise_map(det, maxima[vmax > thr], 2.0 * radius, d_noise)
        smax = vmax / nmap[tuple(maxima.T)]
        smin = vmin / nmap[tuple(minima.T)]
        t_snr, n_max, n_min = _fdr_threshold(
            maxima, smax, minima, smin, fdr, _FDR_FLOOR_K, ring, reach
        )
        pick = smax > t_snr
        snr_thr = float(t_snr)
        level, score = snr_thr, smax
        thr = float(t_snr * np.median(nmap[tuple(maxima[pick].T)])) if pick.any() else thr
    else:
        pick = vmax > thr
        level, score = thr, vmax
    logger.debug(
        "decoy-FDR threshold: %d of %d maxima kept (%d decoy minima)",
        int(pick.sum()),
        n_max,
        n_min,
    )
    med = float(np.median(score[pick])) if pick.any() else np.inf
    return _Selection(thr, snr_thr, nmap, maxima[pick], float(level), med)


def _fdr_threshold(
    maxima: np.ndarray,
    vmax: np.ndarray,
    minima: np.ndarray,
    vmin: np.ndarray,
    fdr: float,
    floor: float,
    ring: Callable[[np.ndarray], np.ndarray],
    reach: float,
) -> tuple[float, int, int]:
    """Smallest threshold whose estimated false-discovery rate is at most ``fdr``.

    Background fluctuations of the band-passed image (shot noise and autofluorescence texture)
    are symmetric around 0, so the number of *false* local maxima above ``t`` is estimated by
    the number of local minima below ``-t`` (a decoy count, as in target-decoy FDR control).
    Puncta also make minima: the negative ring of the band-pass filter around every maximum.
    That ring is known (linear filter), so each minimum's depth is corrected by the summed
    ring response of the *accepted* maxima around it before it is counted (texture maxima have
    no such ring; correcting for them too would hide the texture's own minima): starting from
    the uncorrected, conservative threshold, the threshold is lowered by fixed-point
    iteration. The threshold is the smallest ``t >= floor`` from which on
    ``#minima(< -t) / #maxima(> t) <= fdr``.

    ``maxima`` / ``minima`` ``(N, ndim)`` are the extrema positions and ``vmax`` / ``vmin``
    their heights / depths (positive) in the units of ``floor``; ``ring(delta)`` is the
    filter's response at offsets ``delta`` to a unit punctum, negligible beyond ``reach`` px.
    Returns the threshold and the numbers of maxima and minima above ``floor``.
    """
    from scipy.spatial import cKDTree

    keep_max, keep_min = vmax > floor, vmin > floor
    maxima, vmax = maxima[keep_max], vmax[keep_max]
    minima, vmin = minima[keep_min], vmin[keep_min]
    if vmax.size == 0:
        return floor, 0, int(vmin.size)
    ring_w = np.zeros(0)
    if vmin.size:
        # ring response of the maxima within reach of each minimum
        sdm = cKDTree(minima).sparse_distance_matrix(
            cKDTree(maxima), reach, output_type="coo_matrix"
        )
        delta = minima[sdm.row] - maxima[sdm.col]
        ring_w = np.minimum(ring(delta.astype(np.float64)), 0)
    svmax = np.sort(vmax)
    n_true = svmax.size - np.arange(svmax.size)  # maxima >= each candidate

    def solve(vmin_c: np.ndarray) -> float:
        """Threshold for decoy depths ``vmin_c``; +inf when none passes."""
        svmin = np.sort(vmin_c)
        n_false = svmin.size - np.searchsorted(svmin, svmax, side="left")
        bad = np.flatnonzero(n_false > fdr * n_true)
        first = 0 if bad.size == 0 else bad[-1] + 1
        if first >= svmax.size:
            return np.inf
        if first == 0:
            return floor
        return 0.5 * float(svmax[first - 1] + svmax[first])

    # Only maxima that pass the threshold are treated as puncta whose ring deepens nearby
    # minima (texture maxima have no PSF ring): start with no correction (conservative) and
    # lower the threshold by fixed-point iteration (monotone, a few rounds).
    thr = solve(vmin)
    for _ in range(_FDR_ITER):
        if not np.isfinite(thr) or ring_w.size == 0:
            break
        use = vmax[sdm.col] >= thr
        corr = np.bincount(
            sdm.row[use], weights=ring_w[use] * vmax[sdm.col][use], minlength=vmin.size
        )
        new = solve(vmin + corr)
        if new >= thr:
            break
        thr = new
    if not np.isfinite(thr):  # nothing passes: above the brightest maximum
        thr = float(svmax[-1]) * (1 + 1e-6) + 1e-6
    return max(float(thr), floor), int(vmax.size), int(vmin.size)


def _residual_noise_map(
    filtered: np.ndarray,
    peaks: np.ndarray,
    radius: np.ndarray,
    noise: float,
    scale: float = 10.0,
) -> np.ndarray:
    """Local sigma of the band-passed image away from the detected puncta.

    Pixels within ``radius`` of a punctum of ``peaks`` are left out; the RMS of the others
    (clipped at 6 global sigmas) is averaged with a Gaussian window of ``scale`` px (Y/X) by
    normalised convolution on a 4x coarser grid, then interpolated. Returns float32 of the
    image's shape.
    """
    keep = np.ones(filtered.shape, dtype=bool)
    _clear_around(keep, peaks, _ellipse_offsets(radius)[0])
    sq = np.clip(filtered, -6 * noise, 6 * noise)
    np.square(sq, out=sq)
    sq *= keep
    b = 4
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
    del sq, keep
    num = ndimage.gaussian_filter(sums[0], scale / b, mode="nearest")
    den = ndimage.gaussian_filter(sums[1], scale / b, mode="nearest")
    glob = float(sums[0].sum() / max(sums[1].sum(), 1.0))
    var = np.where(den > 0.5, num / np.maximum(den, 1e-9), glob)
    h, w = filtered.shape[-2:]
    var = np.sqrt(np.maximum(var, (0.05 * noise) ** 2 + 1e-12)).astype(np.float32)
    full = ndimage.zoom(var, (b, b), output=np.float32, order=1, mode="nearest", grid_mode=True)
    out = np.ascontiguousarray(full[:h, :w]) if full.shape != (h, w) else full
    return out if filtered.ndim == 2 else np.broadcast_to(out, filtered.shape)


def _local_maxima(
    filtered: np.ndarray,
    min_distance: np.ndarray,
    threshold: float | np.ndarray,
    minima: bool = False,
) -> np.ndarray:
    """Coordinates ``(N, ndim)`` of local maxima above ``threshold``, one per plateau (with
    ``minima``: local minima below ``-threshold``)."""
    off, _ = _ellipse_offsets(np.maximum(min_distance, 1.0))
    half = np.abs(off).max(axis=0)
    footprint = np.zeros(tuple(2 * half + 1), dtype=bool)
    footprint[tuple((off + half).T)] = True
    if minima:
        above = filtered < -threshold
    else:
        above = filtered > threshold
    if not above.any():
        return np.empty((0, filtered.ndim), dtype=np.intp)
    nbrs = off[np.any(off != 0, axis=1)]
    if len(nbrs) <= 30:
        # small neighbourhoods: compare with each shifted neighbour (neighbours outside the
        # image are ignored, as ndimage's "nearest" mode does); several times faster than
        # ndimage.maximum_filter on large images
        ok = above
        n_ax = np.asarray(filtered.shape)
        for d in nbrs:
            dst = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, n_ax, strict=True))
            src = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, n_ax, strict=True))
            if minima:
                ok[dst] &= filtered[dst] <= filtered[src]
            else:
                ok[dst] &= filtered[dst] >= filtered[src]
        peaks = np.argwhere(ok)
        del ok
    elif minima:
        mx = ndimage.minimum_filter(filtered, footprint=footprint, mode="nearest")
        peaks = np.argwhere(above & (filtered <= mx))
        del mx
    else:
        mx = ndimage.maximum_filter(filtered, footprint=footprint, mode="nearest")
        peaks = np.argwhere(above & (filtered >= mx))
        del mx
    if len(peaks) > 1:
        # ties (plateaus) give several maxima closer than min_distance: keep the first
        from scipy.spatial import cKDTree

        scaled = peaks / np.maximum(min_distance, 1.0)
        pairs = cKDTree(scaled).query_pairs(1.0 + 1e-9, output_type="ndarray")
        if len(pairs):
            drop = np.unique(pairs.max(axis=1))
            peaks = np.delete(peaks, drop, axis=0)
    return peaks


def _subpixel(
    smooth: np.ndarray, peaks: np.ndarray, bg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable three-point Gaussian fit around each peak.

    Returns sub-pixel offsets ``(N, ndim)``, fitted peak height above ``bg`` ``(N,)`` and the
    fitted Gaussian sigma of ``smooth`` per axis ``(N, ndim)`` (NaN where the fit failed).
    """
    n, ndim = peaks.shape
    shape = np.asarray(smooth.shape)
    flat = smooth.ravel()
    c_idx = np.ravel_multi_index(tuple(peaks.T), smooth.shape)
    v0 = flat[c_idx].astype(np.float64) - bg
    tiny = 1e-6 * np.maximum(np.abs(bg), 1.0)
    offsets = np.zeros((n, ndim))
    sig = np.full((n, ndim), np.nan)
    log_peak = np.zeros(n)
    ok0 = v0 > tiny
    l0 = np.log(np.where(ok0, v0, 1.0))
    for a in range(ndim):  # loop over the 2-3 axes, vectorised over spots
        e = np.zeros(ndim, dtype=np.intp)
        e[a] = 1
        lo = np.clip(peaks - e, 0, shape - 1)
        hi = np.clip(peaks + e, 0, shape - 1)
        vm = flat[np.ravel_multi_index(tuple(lo.T), smooth.shape)] - bg
        vp = flat[np.ravel_multi_index(tuple(hi.T), smooth.shape)] - bg
        inside = (peaks[:, a] > 0) & (peaks[:, a] < shape[a] - 1)
        # log-parabola (exact for a Gaussian) where all three are positive, else parabola
        use_log = ok0 & (vm > tiny) & (vp > tiny) & inside
        lm = np.log(np.where(use_log, vm, 1.0))
        lp = np.log(np.where(use_log, vp, 1.0))
        ym = np.where(use_log, lm, vm)
        yp = np.where(use_log, lp, vp)
        y0 = np.where(use_log, l0, v0)
        curv = ym - 2.0 * y0 + yp
        good = inside & (curv < 0)
        d = np.where(good, 0.5 * (ym - yp) / np.where(good, curv, -1.0), 0.0)
        d = np.clip(d, -1.0, 1.0)
        offsets[:, a] = d
        # peak of the log-parabola: l0 - b^2 / (4 a2), b = (yp - ym)/2, a2 = curv/2
        log_peak += np.where(use_log & good, (yp - ym) ** 2 / 8.0 / -np.where(good, curv, -1), 0)
        sig[:, a] = np.where(use_log & good, np.sqrt(-1.0 / np.where(good, curv, -1.0)), np.nan)
    height = np.where(ok0, np.exp(l0 + log_peak), np.maximum(v0, 0.0))
    return offsets, height, sig


def _keep_peaks(
    peaks: np.ndarray, mask: np.ndarray | None, shape: tuple[int, ...], border: int
) -> np.ndarray:
    """Peaks inside ``mask`` and at least ``border`` px from the Y/X image border."""
    if mask is not None and len(peaks):
        peaks = peaks[mask[tuple(peaks.T)]]
    if len(peaks):
        lat = peaks[:, -2:]
        peaks = peaks[np.all((lat >= border) & (lat < np.asarray(shape[-2:]) - border), axis=1)]
    return peaks


def _ring_background(img: np.ndarray, peaks: np.ndarray, ring_off: np.ndarray) -> np.ndarray:
    """Local background of each peak: median of the raw image on the annulus ``ring_off``."""
    vals, valid, _ = _gather(img, peaks, ring_off)
    return np.nanmedian(np.where(valid, vals.astype(np.float64), np.nan), axis=1)


def _lateral_sigma(sig_s: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Punctum sigma (px) from the fitted per-axis sigma of the ``s1``-smoothed image: the
    smoothing removed, mean over the Y/X axes that fitted (NaN where none did)."""
    lat = np.sqrt(np.clip(sig_s**2 - s1**2, 0.0, None))[:, -2:]
    n_ok = np.isfinite(lat).sum(axis=1)
    return np.where(n_ok > 0, np.nansum(lat, axis=1) / np.maximum(n_ok, 1), np.nan)


@functools.cache
def _subtract_kernel() -> Any:
    """Compiled ``res[window of p] -= amp * (gauss(p) + corr)`` over puncta ``p`` (2D).

    Hand-written because the model is a sum of tens of thousands of small windows that
    overlap: numpy would need one pass over all puncta per window offset (169 passes, ~0.3 s on
    a 2048 x 2048 image with 20,000 puncta); this loop takes ~0.02 s. numba is a dependency
    (also used by skan); the kernel is compiled on first use and cached on disk.
    """
    from ._numba import njit_cached

    def subtract(res, peaks, coords, amp, sigma, corr, half, w):  # pragma: no cover - compiled
        h, wd = res.shape
        for i in range(peaks.shape[0]):
            py, px = peaks[i, 0], peaks[i, 1]
            cy, cx = coords[i, 0], coords[i, 1]
            a = amp[i]
            s2 = 2.0 * sigma[i] * sigma[i]
            r = max(half, w)
            for dy in range(-r, r + 1):
                y = py + dy
                if y < 0 or y >= h:
                    continue
                for dx in range(-r, r + 1):
                    x = px + dx
                    if x < 0 or x >= wd:
                        continue
                    v = 0.0
                    if abs(dy) <= half and abs(dx) <= half:
                        v = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / s2)
                    if abs(dy) <= w and abs(dx) <= w:
                        v += corr[dy + w, dx + w]
                    res[y, x] -= a * v

    return njit_cached(subtract, nogil=True)


def _residual_image(
    img: np.ndarray,
    peaks: np.ndarray,
    coords: np.ndarray,
    amp: np.ndarray,
    sigma_px: np.ndarray,
    bg: np.ndarray,
    max_halo: float = _RESID_MAX_HALO,
) -> tuple[np.ndarray | None, float]:
    """The image minus a model of the detected puncta (2D), or None when the model does not
    fit this image's puncta.

    The model is a Gaussian per punctum (fitted amplitude and width, drawn within 3.5 median
    widths) plus an empirical correction learned from this image: the median, over isolated
    puncta (no other detection within ``2 x _RESID_WIN`` px), of the background-subtracted
    residual window divided by the punctum's amplitude (as DAOPHOT's empirical PSF
    correction). Its largest ring average beyond 2.5 PSF sigmas measures a halo the Gaussian
    lacks (returned); above ``max_halo``, or with fewer than 10 isolated puncta, no residual
    image is made.
    """
    from scipy.spatial import cKDTree

    med = float(np.nanmedian(sigma_px)) if np.isfinite(sigma_px).any() else np.nan
    if not np.isfinite(med) or med <= 0:
        return None, np.nan
    sig = np.clip(np.where(np.isfinite(sigma_px), sigma_px, med), 0.5 * med, 2.0 * med)
    half = int(np.ceil(3.5 * med))
    w = _RESID_WIN
    gy, gx = np.mgrid[-w : w + 1, -w : w + 1]
    off = np.stack([gy.ravel(), gx.ravel()], axis=1)
    inside = np.all((peaks >= w) & (peaks < np.asarray(img.shape) - w), axis=1)
    crowd = cKDTree(peaks).query_ball_point(peaks, 2 * w, return_length=True)
    iso = np.flatnonzero(inside & (crowd == 1) & (amp > 0))
    if iso.size < 10:
        return None, np.nan
    # residual windows of the isolated puncta: only their own Gaussian lies there
    pos = peaks[iso, None, :] + off[None]
    win = img[pos[..., 0], pos[..., 1]].astype(np.float64) - bg[iso, None]
    d2 = ((pos - coords[iso, None, :]) ** 2).sum(axis=2)
    own = np.where(np.abs(off).max(axis=1) <= half, np.exp(-0.5 * d2 / sig[iso, None] ** 2), 0.0)
    corr = np.median(win / amp[iso, None] - own, axis=0)
    r = np.sqrt((off**2).sum(axis=1))
    # the halo is radially symmetric: average the correction over 1 px rings first (the
    # largest single pixel mostly measured noise: 0.028-0.068 on hard simulated images, whose
    # ring profile stays below 0.008)
    ring = np.rint(r).astype(np.int64)
    prof = np.bincount(ring, weights=corr) / np.maximum(np.bincount(ring), 1)
    rr = np.arange(prof.size)
    halo = float(np.abs(prof[(rr >= 2.5 * med) & (rr <= w)]).max())
    if halo > max_halo:
        return None, halo
    res = img.astype(np.float32)
    _subtract_kernel()(
        res,
        np.ascontiguousarray(peaks, dtype=np.int64),
        np.ascontiguousarray(coords, dtype=np.float64),
        np.ascontiguousarray(amp, dtype=np.float64),
        np.ascontiguousarray(sig, dtype=np.float64),
        corr.reshape(2 * w + 1, 2 * w + 1),
        half,
        w,
    )
    return res, halo


# --------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------
def detect_spots(
    image: np.ndarray,
    *,
    radius_px: float | Sequence[float] = 1.8,
    threshold: str | float = "auto",
    threshold_k: float = 5.0,
    background_radius_px: float | None = None,
    min_distance_px: float | None = None,
    mask: np.ndarray | None = None,
    cluster_estimate: bool = True,
    exclude_border_px: int = 0,
    reference_intensity: float | None = None,
    local_noise: bool = False,
    auto_method: str = "snr",
    fdr: float = 0.05,
    max_width_factor: float | None = 1.5,
    min_relative_amplitude: float = 0.15,
    split_merged: bool = False,
    residual_pass: bool | str = "auto",
    whiten: bool | str = "auto",
) -> pd.DataFrame:
    """Detect puncta and measure their background-corrected intensity.

    Parameters
    ----------
    image : (Y, X) or (Z, Y, X) ndarray
        The exosome channel (any real dtype; NaN not allowed).
    radius_px : float or sequence of float, default 1.8
        Expected punctum radius in pixels, ``sqrt(2)`` x the PSF's Gaussian sigma; one value, or
        one per axis (``(rz, ry, rx)`` for anisotropic stacks).
    threshold : "auto" or float, default "auto"
        ``"auto"``: see ``auto_method``. A number: minimum
        punctum amplitude above local background, in image intensity units (see
        :func:`learn_threshold`).
    threshold_k : float, default 5.0
        Multiplier of the noise sigma for ``auto_method="mad"`` / ``"tiles"``.
    background_radius_px : float, optional
        Outer radius of the local-background annulus and scale of the background filter
        (default ``1.8 x radius_px``). Must exceed ``radius_px``.
    min_distance_px : float, optional
        Minimum distance between two puncta (default ``radius_px``, at least 1).
    mask : (Y, X) or (Z, Y, X) bool ndarray, optional
        Only peaks inside the mask are kept (e.g. ``cells > 0``); the noise is estimated there.
    cluster_estimate : bool, default True
        Fill ``n_estimate`` with the cluster-aware count (else 1 for every punctum).
    exclude_border_px : int, default 0
        Drop puncta whose peak pixel lies closer than this to the Y/X image border (peaks on
        the outermost pixel are always dropped: they cannot be localised).
    reference_intensity : float, optional
        Integrated intensity of one single punctum for the cluster estimate; default the median
        ``intensity`` of this image's puncta. Pass one value to compare images of a batch.
    local_noise : bool, default False
        Kept for compatibility: True is ``auto_method="tiles"``.
    auto_method : {"snr", "fdr", "mad", "tiles"}, default "snr"
        How ``threshold="auto"`` is set. ``"fdr"``: the smallest threshold whose estimated
        false-discovery rate is at most ``fdr``, the false maxima being counted by their mirror
        image, the local minima of the band-passed image (background is symmetric about 0;
        the filter's negative ring around each detected punctum is subtracted first); never
        below 2 robust noise sigmas. ``"snr"``: the same on the local signal-to-noise image
        ``filtered / sigma_local``, where ``sigma_local`` is the local RMS (Gaussian window,
        10 px) of the band-passed image away from (2 x radius) the puncta found by a first
        ``"fdr"`` pass; so bright, textured cells need a higher peak than dark background.
        ``"mad"``: ``threshold_k`` x the robust (MAD) noise sigma of the whole band-passed
        image. ``"tiles"``: ``threshold_k`` x a MAD per 64 x 64 tile.
    fdr : float, default 0.05
        Estimated false-discovery rate accepted by ``"snr"`` and ``"fdr"`` (0-1). When the
        whitened filter runs (near the detection limit, see ``whiten``) its puncta are
        selected at 1.4 x this rate.
    max_width_factor : float or None, default 1.5
        Width test: a detection wider than ``max_width_factor`` x the median fitted width
        that holds less than one reference punctum of integrated intensity is dropped
        (diffuse autofluorescence, out-of-focus haze; sub-resolution puncta have the PSF's
        width, aggregates hold several references). None: no width test.
    min_relative_amplitude : float, default 0.15
        Detections whose band-passed peak is below this fraction of the median detection's
        are dropped (dim out-of-focus or unbound-dye specks). 0: no test.
    split_merged : bool, default False
        2D: fit each detection with 1-3 Gaussians of a common free width and keep the
        components that the fit justifies (residual test, each above 2 x the threshold, at
        least 1.5 PSF sigmas apart, each nearer its own detection than any other): puncta
        2-4 px apart that merged into one peak come out as separate rows with
        ``detected = True``. Opt-in: on the simulator it gains +0.01 F1 at normal, loses
        0.002-0.004 at hard and 0.008 on the real beads, and makes detection ~10x slower
        (0.06 -> 0.6-0.7 s on a dense 512 x 512 image). Ignored for 3D images.
    residual_pass : {"auto", True, False}, default "auto"
        2D: subtract a model of the detected puncta (fitted Gaussians plus an empirical
        correction learned from the image's isolated puncta) and detect again in the residual,
        with the same threshold: dim puncta 2-4 px from bright ones, hidden in their wings,
        come out as rows with ``detected = True``. ``"auto"`` runs it only when the model fits
        this image (the learned correction, averaged over rings, shows no halo beyond 2.5 PSF
        sigmas above 1.5 % of the amplitude; e.g. bead images with a halo skip it); True runs
        it whenever there are
        10 isolated puncta to learn from. ``df.attrs["residual_pass"]`` says whether it ran and
        ``df.attrs["model_halo"]`` gives the measured halo. Ignored for 3D images.
    whiten : {"auto", True, False}, default "auto"
        2D with ``threshold="auto"`` and ``auto_method`` ``"snr"`` or ``"fdr"``: find and
        threshold the peaks on a pre-whitened matched filter built from this image's own
        background power spectrum (puncta painted over) instead of the fixed band-pass, so
        that autofluorescence texture at the punctum's scale is discounted; each maximum is
        corrected for the filter response of the higher maxima around it (the whitened
        filter rings). Positions, intensities and widths are measured as without it. ``"auto"``
        whitens only when the puncta are near the detection limit (the band-pass's median
        accepted peak within 2 x the threshold) and whitening is predicted to raise an
        isolated punctum's signal-to-noise ratio by at least 5 % (punctum-scale texture);
        True always. ``df.attrs["whitened"]`` says whether it was used,
        ``df.attrs["whiten_gain"]`` gives the predicted gain (NaN when not computed).

    Returns
    -------
    pandas.DataFrame
        One row per punctum: ``z`` (3D only), ``y``, ``x`` (sub-pixel, pixel coordinates),
        ``intensity`` (background-corrected integrated intensity), ``amplitude`` (background-
        corrected fitted peak), ``background`` (local background per pixel), ``sigma_px``
        (fitted lateral Gaussian sigma, NaN where the fit failed), ``snr`` (filtered peak /
        noise sigma) and ``n_estimate`` (cluster-aware punctum count, >= 1). ``df.attrs`` holds
        ``threshold`` (in amplitude units), ``noise_sigma`` and ``reference_intensity``.

    Raises
    ------
    ValueError
        When the image is not 2D/3D numeric, contains NaN, when ``mask`` has another shape or a
        parameter is out of range.
    """
    img = _check_image(image)
    ndim = img.ndim
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {img.shape}")
        mask = mask.astype(bool, copy=False)
    if threshold_k <= 0:
        raise ValueError(f"threshold_k must be > 0, got {threshold_k}")
    if auto_method not in ("fdr", "mad", "tiles", "snr"):
        raise ValueError(f"auto_method must be 'snr', 'fdr', 'mad' or 'tiles', got {auto_method!r}")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must lie between 0 and 1, got {fdr}")
    if max_width_factor is not None and max_width_factor <= 1:
        raise ValueError(f"max_width_factor must be > 1 or None, got {max_width_factor}")
    if not 0 <= min_relative_amplitude < 1:
        raise ValueError(f"min_relative_amplitude must lie in [0, 1), got {min_relative_amplitude}")
    if exclude_border_px < 0:
        raise ValueError(f"exclude_border_px must be >= 0, got {exclude_border_px}")
    if whiten not in (True, False, "auto"):
        raise ValueError(f"whiten must be 'auto', True or False, got {whiten!r}")
    if residual_pass not in (True, False, "auto"):
        raise ValueError(f"residual_pass must be 'auto', True or False, got {residual_pass!r}")
    if isinstance(threshold, str):
        if threshold.strip().lower() != "auto":
            raise ValueError(f"threshold must be 'auto' or a number, got {threshold!r}")
        fixed = None
    else:
        fixed = float(threshold)
        if not np.isfinite(fixed) or fixed < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")

    empty = _empty_table(ndim)
    filtered, smooth, p = _filter(img, radius_px, background_radius_px)
    radius, bg_radius = p["radius"], p["bg_radius"]
    noise = _noise_sigma(filtered, mask)
    thr = fixed if fixed is not None else threshold_k * noise
    empty.attrs.update(
        threshold=float(thr),
        noise_sigma=float(noise),
        reference_intensity=np.nan,
        residual_pass=False,
        model_halo=np.nan,
        whitened=False,
        whiten_gain=np.nan,
    )
    if fixed is None and noise <= 0:
        logger.info("exosome channel is flat: no puncta")
        return empty
    if min_distance_px is None:
        min_dist = np.maximum(radius, 1.0)
    else:
        if min_distance_px <= 0:
            raise ValueError(f"min_distance_px must be > 0, got {min_distance_px}")
        min_dist = float(min_distance_px) * radius / radius[-1]
    thr_used: float | np.ndarray = thr
    snr_thr: float | None = None
    nmap = None
    peaks_pre = None
    method = "tiles" if local_noise else auto_method
    det, d_noise = filtered, noise
    wh: _Whitener | None = None
    w_gain = np.nan
    if fixed is None and method in ("fdr", "snr"):
        ring = functools.partial(
            _psf_response, s1=p["s1"], s2=p["s2"], dog_gain=p["dog_gain"], psf=p["psf"]
        )
        reach = float(3.0 * p["s2"].max() + p["s1"].max())
        sel = _auto_threshold(det, d_noise, mask, min_dist, method, fdr, radius, ring, reach)
        # whitened detection (2D): worth its ringing only where the puncta are near the
        # detection limit (half of them within 2 x the threshold) and the background's
        # texture makes the whitened filter at least 5 % more sensitive
        near_limit = sel.median_snr <= _WHITEN_NEAR_LIMIT * sel.snr_level
        if ndim == 2 and (whiten is True or (whiten == "auto" and near_limit)):
            trial = _Whitener(_BackgroundSpectrum(img, filtered, noise, p), p)
            w_gain = trial.gain
            if whiten is True or w_gain >= _WHITEN_MIN_GAIN:
                w_det = trial.apply(img)
                w_noise = _noise_sigma(w_det, mask)
                if w_noise > 0:
                    wh, det, d_noise = trial, w_det, w_noise
                    sel = _auto_threshold(
                        det,
                        d_noise,
                        mask,
                        min_dist,
                        method,
                        _WHITEN_FDR_FACTOR * fdr,
                        radius,
                        wh.response,
                        wh.reach,
                        explain=True,
                    )
                del w_det
        thr, snr_thr, nmap, peaks_pre = sel.thr, sel.snr_thr, sel.nmap, sel.peaks
        thr_used = thr
    elif fixed is None and method == "tiles":
        nmap = _noise_map(filtered)
        if mask is not None:
            # tiles wholly outside the mask should not lower the threshold inside it
            nmap = np.maximum(nmap, np.float32(0.5 * noise))
        thr_used = np.float32(threshold_k) * nmap
    if peaks_pre is not None:
        peaks = peaks_pre
    else:
        peaks = _local_maxima(filtered, min_dist, thr_used)
    # a peak on the outermost Y/X pixel cannot be localised (and is mostly a reflection
    # artefact of the filters), so the border is at least 1 px
    border = max(int(exclude_border_px), 1)
    peaks = _keep_peaks(peaks, mask, img.shape, border)
    if len(peaks) == 0:
        logger.info("no puncta above threshold %.4g (noise sigma %.4g)", thr, noise)
        return empty

    peak_resp = det[tuple(peaks.T)].astype(np.float64)
    peak_noise = _noise_at(peaks, nmap, d_noise)
    # sub-pixel offsets from the band-passed image: symmetric around a symmetric punctum and
    # free of linear background gradients
    offsets, _, _ = _subpixel(filtered, peaks, np.zeros(len(peaks)))
    del filtered, det

    # local background: median of the raw image on an annulus
    int_radius = 2.0 * radius
    ring_inner = int_radius + 1.0
    ring_outer = np.maximum(bg_radius, ring_inner + 2.0)
    ring_off, _ = _ellipse_offsets(ring_outer, inner=ring_inner)
    bg = _ring_background(img, peaks, ring_off)

    # sub-pixel position, fitted height, size
    _, height, sig_s = _subpixel(smooth, peaks, bg)
    coords = peaks + offsets
    amplitude = height / p["g1_gain"]
    s1 = p["s1"]
    sigma_px = _lateral_sigma(sig_s, s1)

    # integrated intensity: disc of 2 x radius, each pixel to its nearest punctum
    intensity = _disc_intensity(img, peaks, bg, int_radius)

    if reference_intensity is not None:
        ref = float(reference_intensity)
        if not np.isfinite(ref) or ref <= 0:
            raise ValueError(f"reference_intensity must be > 0, got {reference_intensity}")
    else:
        ref = _reference(intensity, sigma_px)

    # peak-level tests: a sub-resolution object has the PSF's width, so a blob much wider than
    # the typical punctum that holds less than one reference punctum is diffuse background
    # (autofluorescence bump, out-of-focus haze); a peak far dimmer than the typical punctum
    # is not counted (``min_relative_amplitude``)
    keep = np.ones(len(peaks), dtype=bool)
    typical_sigma = float(np.nanmedian(sigma_px)) if np.isfinite(sigma_px).any() else np.nan
    if max_width_factor is not None and np.isfinite(typical_sigma) and np.isfinite(ref):
        keep &= ~((sigma_px > max_width_factor * typical_sigma) & (intensity < _WIDE_MIN_N * ref))
    if min_relative_amplitude > 0 and keep.any():
        keep &= peak_resp >= min_relative_amplitude * float(np.median(peak_resp[keep]))
    if not keep.all():
        logger.debug(
            "%d peak(s) rejected by the width / relative-amplitude tests", int((~keep).sum())
        )
        peaks, coords, amplitude, bg, sigma_px = (
            peaks[keep],
            coords[keep],
            amplitude[keep],
            bg[keep],
            sigma_px[keep],
        )
        peak_resp, peak_noise, height = peak_resp[keep], peak_noise[keep], height[keep]
    stale = not keep.all()  # intensities are measured again once the peaks are final
    halo = np.nan
    ran_residual = False
    if residual_pass is not False and ndim == 2 and len(peaks):
        max_halo = _RESID_MAX_HALO if residual_pass == "auto" else np.inf
        res, halo = _residual_image(img, peaks, coords, amplitude, sigma_px, bg, max_halo)
        if res is None:
            logger.info(
                "residual pass skipped: the Gaussian model does not fit this image's isolated "
                "puncta (halo %.3g of the amplitude; limit %.3g) or too few isolated puncta",
                halo,
                max_halo,
            )
        else:
            ran_residual = True
            new = _residual_peaks(
                res,
                img,
                coords,
                amplitude,
                p,
                radius_px,
                background_radius_px,
                min_dist,
                np.maximum(thr, snr_thr * nmap) if snr_thr is not None else thr_used,
                mask,
                border,
                ring_off,
                wh,
            )
            del res
            if new is not None:
                n_new = len(new["peaks"])
                peaks = np.concatenate([peaks, new["peaks"]])
                coords = np.concatenate([coords, new["coords"]])
                amplitude = np.concatenate([amplitude, new["amplitude"]])
                bg = np.concatenate([bg, new["bg"]])
                sigma_px = np.concatenate([sigma_px, new["sigma_px"]])
                height = np.concatenate([height, new["height"]])
                peak_resp = np.concatenate([peak_resp, new["resp"]])
                peak_noise = np.concatenate([peak_noise, _noise_at(new["peaks"], nmap, d_noise)])
                stale = True
                logger.debug("residual pass: %d more puncta", n_new)
    del nmap
    if stale:
        intensity = _disc_intensity(img, peaks, bg, int_radius)
        if reference_intensity is None:
            ref = _reference(intensity, sigma_px)
    if split_merged and ndim == 2 and len(peaks):
        if snr_thr is not None:
            thr_peak = snr_thr * peak_noise
        elif method == "tiles" and fixed is None:
            thr_peak = threshold_k * peak_noise
        else:
            thr_peak = np.full(len(peaks), float(thr))
        s_typ = (
            float(np.nanmedian(sigma_px)) if np.isfinite(sigma_px).any() else float(p["psf"][-1])
        )
        k_sel, comps, s_fit = _split_merged(img, peaks, coords, bg, amplitude, thr_peak, s_typ)
        if np.any(k_sel > 1):
            src = np.repeat(np.arange(len(peaks)), k_sel)
            member = np.arange(comps.shape[1])[None, :] < k_sel[:, None]
            cmp = comps[member]  # (M, 3) in source order
            multi = (k_sel > 1)[src]
            share = np.ones(src.size)
            tot = np.bincount(src, weights=cmp[:, 0], minlength=len(peaks))
            share[multi] = cmp[multi, 0] / tot[src[multi]]
            new_coords = np.where(multi[:, None], cmp[:, 1:], coords[src])
            intensity = intensity[src] * share
            amplitude = np.where(multi, cmp[:, 0], amplitude[src])
            height = np.where(multi, cmp[:, 0] * p["g1_gain"], height[src])
            sigma_px = np.where(multi, s_fit[src], sigma_px[src])
            peak_resp = np.where(multi, cmp[:, 0], peak_resp[src])
            bg, peak_noise = bg[src], peak_noise[src]
            coords = new_coords
            lim = np.asarray(img.shape) - 1
            peaks = np.clip(np.rint(coords), 0, lim).astype(peaks.dtype)
            logger.debug(
                "%d merged detection(s) split into %d puncta",
                int((k_sel > 1).sum()),
                int(k_sel[k_sel > 1].sum()),
            )
    n = len(peaks)
    if cluster_estimate and np.isfinite(ref):
        n_est = _count_estimate(img, peaks, bg, radius, intensity, ref)
    else:
        n_est = np.ones(n)

    names = ("z", "y", "x") if ndim == 3 else ("y", "x")
    table = {
        "coords": coords,
        "intensity": intensity,
        "amplitude": amplitude,
        "background": bg,
        "sigma_px": sigma_px,
        "snr": np.divide(peak_resp, peak_noise, out=np.full(n, np.inf), where=peak_noise > 0),
        "n_estimate": n_est,
        "detected": np.ones(n, dtype=bool),
        "cluster_id": np.zeros(n, dtype=np.int64),
    }
    if cluster_estimate and np.any(n_est > 1):
        # place the members of aggregates that are also wider than a single punctum (a bright
        # but PSF-sized spot keeps one row with its n_estimate)
        typical = np.nanmedian(sigma_px[n_est == 1]) if np.any(n_est == 1) else np.nan
        wide = ~(sigma_px <= _WIDE_FACTOR * typical) if np.isfinite(typical) else np.ones(n, bool)
        split = (n_est > 1) & wide
        if split.any():
            table = _decompose(table, smooth, peaks, int_radius, s1, p["psf"], height, n_est, split)
    del smooth
    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        cols[name] = table["coords"][:, i]
    for key in SPOT_COLUMNS[3:]:  # every column after the coordinates z, y, x
        cols[key] = table[key]
    df = pd.DataFrame(cols)
    df.attrs.update(
        threshold=float(thr),
        noise_sigma=float(noise),
        reference_intensity=ref,
        residual_pass=ran_residual,
        model_halo=float(halo),
        whitened=wh is not None,
        whiten_gain=float(w_gain),
    )
    logger.info(
        "%d puncta detected, %.0f estimated (threshold %.4g, noise sigma %.4g, reference "
        "intensity %.4g)",
        n,
        float(n_est.sum()),
        thr,
        noise,
        ref,
    )
    return df


def _residual_peaks(
    res: np.ndarray,
    img: np.ndarray,
    coords: np.ndarray,
    amplitude: np.ndarray,
    p: dict[str, Any],
    radius_px: Any,
    background_radius_px: Any,
    min_dist: np.ndarray,
    thr: float | np.ndarray,
    mask: np.ndarray | None,
    border: int,
    ring_off: np.ndarray,
    wh: _Whitener | None = None,
) -> dict[str, np.ndarray] | None:
    """Peaks of the residual image that are new puncta (see ``residual_pass``), measured as
    the first-pass ones: position on the band-passed residual, background on the raw image's
    annulus, height and width on the smoothed residual; found and thresholded on the
    whitened residual when ``wh`` is given (as the first pass was)."""
    from scipy.spatial import cKDTree

    def found_on(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cand = _keep_peaks(_local_maxima(d, min_dist, thr), mask, img.shape, border)
        return cand, d[tuple(cand.T)].astype(np.float64)

    if wh is not None:  # the whitened residual is freed before the band-pass is made
        cand, resp = found_on(wh.apply(res))
        if len(cand) == 0:
            return None
    f_r, s_r, _ = _filter(res, radius_px, background_radius_px)
    if wh is None:
        cand, resp = found_on(f_r)
    if len(cand) == 0:
        return None
    off, _, _ = _subpixel(f_r, cand, np.zeros(len(cand)))
    c_coords = cand + off
    r = float(p["radius"][-1])
    tree = cKDTree(coords)
    dmin, _ = tree.query(c_coords)
    near = cKDTree(c_coords).sparse_distance_matrix(tree, _RESID_NEAR * r, output_type="ndarray")
    amp_near = np.zeros(len(c_coords))
    np.maximum.at(amp_near, near["i"], amplitude[near["j"]])
    ok = (dmin > _RESID_EXCL * r) & (resp >= _RESID_REL * amp_near)
    if not ok.any():
        return None
    cand, c_coords, resp = cand[ok], c_coords[ok], resp[ok]
    c_bg = _ring_background(img, cand, ring_off)
    _, height, sig_s = _subpixel(s_r, cand, c_bg)
    return {
        "peaks": cand,
        "coords": c_coords,
        "amplitude": height / p["g1_gain"],
        "bg": c_bg,
        "sigma_px": _lateral_sigma(sig_s, p["s1"]),
        "height": height,
        "resp": resp,
    }


def _gauss_model(theta: np.ndarray, grid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ``k`` isotropic 2D Gaussians of one common width plus a constant, and its
    Jacobian.

    ``theta`` ``(B, 2 + 3k)``: offset ``c``, ``log(sigma)``, then ``(a, y, x)`` per component;
    ``grid`` ``(N, 2)`` pixel offsets. Returns the model ``(B, N)`` and Jacobian ``(B, N, P)``.
    """
    c = theta[:, 0:1]
    s = np.exp(theta[:, 1:2])
    comp = theta[:, 2:].reshape(-1, k, 3)
    dy = grid[None, None, :, 0] - comp[:, :, 1:2]
    dx = grid[None, None, :, 1] - comp[:, :, 2:3]
    r2 = dy**2 + dx**2
    s2 = (s**2)[:, :, None]
    g = np.exp(-0.5 * r2 / s2)
    ag = comp[:, :, 0:1] * g
    model = c + ag.sum(axis=1)
    jac = np.empty(theta.shape + (grid.shape[0],))
    jac[:, 0] = 1.0
    jac[:, 1] = (ag * r2 / s2).sum(axis=1)
    jc = jac[:, 2:].reshape(-1, k, 3, grid.shape[0])
    jc[:, :, 0] = g
    jc[:, :, 1] = ag * dy / s2
    jc[:, :, 2] = ag * dx / s2
    return model, np.swapaxes(jac, 1, 2)  # (B, N), (B, N, P)


def _lm_fit(
    theta: np.ndarray,
    data: np.ndarray,
    grid: np.ndarray,
    k: int,
    n_iter: int,
    s_bounds: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt least squares of :func:`_gauss_model` to ``data``
    ``(B, N)``; the width is kept within ``s_bounds`` px. Returns the parameters, the residual
    sum of squares ``(B,)`` and the residuals ``(B, N)``."""
    lam = np.full(theta.shape[0], 1e-2)
    model, jac = _gauss_model(theta, grid, k)
    res = data - model
    rss = (res**2).sum(axis=1)
    P = theta.shape[1]
    eye = np.eye(P)
    for _ in range(n_iter):
        jtj = np.einsum("bnp,bnq->bpq", jac, jac)
        jtr = np.einsum("bnp,bn->bp", jac, res)
        diag = np.einsum("bpp->bp", jtj)
        a = jtj + lam[:, None, None] * (diag[:, :, None] * eye + 1e-9 * eye)
        try:
            step = np.linalg.solve(a, jtr[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        new = theta + step
        new[:, 1] = np.clip(new[:, 1], np.log(s_bounds[0]), np.log(s_bounds[1]))
        m2, j2 = _gauss_model(new, grid, k)
        r2 = data - m2
        rss2 = (r2**2).sum(axis=1)
        better = rss2 < rss
        theta = np.where(better[:, None], new, theta)
        res = np.where(better[:, None], r2, res)
        jac = np.where(better[:, None, None], j2, jac)
        rss = np.where(better, rss2, rss)
        lam = np.where(better, lam * 0.3, lam * 10.0)
    return theta, rss, res


def _split_merged(
    img: np.ndarray,
    peaks: np.ndarray,
    coords: np.ndarray,
    bg: np.ndarray,
    amp: np.ndarray,
    thr_amp: np.ndarray,
    s_typ: float,
    max_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-based splitting of merged puncta (2D).

    Every detection's window (``+-ceil(3 sigma)`` px) of the raw image, minus its local
    background and minus the other detections (Gaussians of their fitted amplitude), is fitted
    by ``1 .. max_k`` Gaussians of one common, free width (batched Levenberg-Marquardt over all
    windows). ``k`` components replace ``k - 1`` when the residual sum of squares falls by more
    than ``_SPLIT_PENALTY`` (per added component) times the residual variance (an F-test-like
    nested-model test; the variance has a floor of ``(_MODEL_TOL x amplitude)^2`` for model
    mismatch) and every component is itself above the detection threshold ``thr_amp``, lies in
    the window's core and is at least ``_MIN_SEP x sigma`` from the others (closer members
    are not resolvable: the cluster estimate counts them).

    Returns the chosen number of components ``(N,)``, the components ``(N, max_k, 3)``
    (amplitude, y, x in image coordinates; unused entries NaN) and the fitted width ``(N,)``.
    """
    max_k = _MAX_K if max_k is None else int(max_k)
    n = len(peaks)
    half = int(np.ceil(3.0 * s_typ))
    gy, gx = np.mgrid[-half : half + 1, -half : half + 1]
    grid = np.stack([gy.ravel(), gx.ravel()], axis=1).astype(np.float64)
    ng = grid.shape[0]
    k_sel = np.ones(n, dtype=int)
    comps = np.full((n, max_k, 3), np.nan)
    comps[:, 0, 0] = amp
    comps[:, 0, 1:] = coords
    s_fit = np.full(n, np.nan)
    shape = np.asarray(img.shape)
    inside = np.all((peaks >= half) & (peaks < shape - half), axis=1)
    idx = np.flatnonzero(inside & (amp > 0))
    if idx.size == 0:
        return k_sel, comps, s_fit
    from scipy.spatial import cKDTree

    vals, _, _ = _gather(img, peaks[idx], grid.astype(np.intp))
    data = vals.astype(np.float64) - bg[idx, None]
    # subtract the neighbours' single-Gaussian models
    reach = half * np.sqrt(2.0) + 3.0 * s_typ
    pairs = cKDTree(coords[idx]).query_pairs(reach, output_type="ndarray")
    if len(pairs):
        pi = np.concatenate([pairs[:, 0], pairs[:, 1]])
        pj = np.concatenate([pairs[:, 1], pairs[:, 0]])
        rel = coords[idx][pj] - peaks[idx][pi]
        d2 = ((grid[None, :, :] - rel[:, None, :]) ** 2).sum(axis=2)
        contrib = amp[idx][pj, None] * np.exp(-0.5 * d2 / s_typ**2)
        np.add.at(data, pi, -contrib)
    bounds = (0.7 * s_typ, 1.5 * s_typ)
    theta = np.zeros((idx.size, 5))
    theta[:, 1] = np.log(s_typ)
    theta[:, 2] = amp[idx]
    theta[:, 3:5] = coords[idx] - peaks[idx]
    theta, rss, res = _lm_fit(theta, data, grid, 1, _LM_ITER, bounds)
    core = (grid**2).sum(axis=1) <= (half - 1) ** 2
    tree = cKDTree(coords)
    best = {1: theta}
    best_rss = rss
    active = np.ones(idx.size, dtype=bool)
    chosen = np.ones(idx.size, dtype=int)
    thr_i = thr_amp[idx]
    for k in range(2, max_k + 1):
        sub = np.flatnonzero(active)
        if sub.size == 0:
            break
        prev = best[k - 1][sub]
        r = np.where(core[None, :], res[sub], -np.inf)
        j = np.argmax(r, axis=1)
        new = np.concatenate(
            [
                prev,
                np.stack(
                    [np.maximum(r[np.arange(sub.size), j], 1e-3), grid[j, 0], grid[j, 1]], axis=1
                ),
            ],
            axis=1,
        )
        th_k, rss_k, res_k = _lm_fit(new, data[sub], grid, k, _LM_ITER, bounds)
        comp = th_k[:, 2:].reshape(-1, k, 3)
        p_k = 2 + 3 * k
        a_max = np.abs(comp[:, :, 0]).max(axis=1)
        var = np.maximum(rss_k / (ng - p_k), (_MODEL_TOL * a_max) ** 2)
        gain = (best_rss[sub] - rss_k) / np.maximum(var, 1e-300)
        pos = comp[:, :, 1:]
        dist = np.sqrt(((pos[:, :, None, :] - pos[:, None, :, :]) ** 2).sum(axis=3))
        dist[:, np.arange(k), np.arange(k)] = np.inf
        s_k = np.exp(th_k[:, 1])
        # every component must lie nearer its own detection than any other detection (else
        # it is the neighbour's light, badly subtracted)
        absp = pos + peaks[idx[sub]][:, None, :]
        _, owner = tree.query(absp.reshape(-1, 2))
        own = (owner.reshape(-1, k) == idx[sub][:, None]).all(axis=1)
        ok = own & (
            (gain > _SPLIT_PENALTY * 3.0)
            & (comp[:, :, 0] >= _SPLIT_MIN_SNR * thr_i[sub, None]).all(axis=1)
            & ((pos**2).sum(axis=2) <= (half - 1) ** 2).all(axis=1)
            & (dist.min(axis=(1, 2)) >= _MIN_SEP * s_k)
        )
        acc = sub[ok]
        chosen[acc] = k
        full = np.full((idx.size, 2 + 3 * k), np.nan)
        full[acc] = th_k[ok]
        best[k] = full
        best_rss = best_rss.copy()
        best_rss[acc] = rss_k[ok]
        res = res.copy() if res.shape[0] == idx.size else res
        res[acc] = res_k[ok]
        active = np.zeros(idx.size, dtype=bool)
        active[acc] = True
    for k in range(1, max_k + 1):
        sel = np.flatnonzero(chosen == k)
        if sel.size == 0 or k == 1:
            if k == 1 and sel.size:
                s_fit[idx[sel]] = np.exp(best[1][sel, 1])
            continue
        th = best[k][sel]
        comp = th[:, 2:].reshape(-1, k, 3)
        comp[:, :, 1:] += peaks[idx[sel]][:, None, :]
        comps[idx[sel], :k] = comp
        s_fit[idx[sel]] = np.exp(th[:, 1])
    k_sel[idx] = chosen
    return k_sel, comps, s_fit


def _count_estimate(
    img: np.ndarray,
    peaks: np.ndarray,
    bg: np.ndarray,
    radius: np.ndarray,
    intensity: np.ndarray,
    ref: float,
) -> np.ndarray:
    """Puncta per detection, at least 1.

    *Whether* a detection holds more than one punctum is decided from the flux in a core
    aperture of ``_COUNT_APERTURE x radius``: it holds less background (and its texture) than
    the full ``2 x radius`` disc of ``intensity`` and so measures a single punctum's brightness
    more precisely (log-error sd 0.20 instead of 0.33 at normal, 0.44 instead of 0.61 at hard,
    isolated simulated puncta), so fewer bright single puncta are counted twice. It is compared
    with the reference through the aperture correction ``k``, the median core / full ratio of
    the image's detections (a property of the PSF; a batch-wide ``reference_intensity`` in
    full-disc units still applies). *How many* it holds is the larger of the core and the
    full-disc estimates (``floor(flux / reference + 0.3)``): an aggregate spread beyond the PSF
    loses flux outside the core.
    """
    n_full = np.floor(intensity / ref + 0.5 - _ROUND_OFFSET)
    core = _disc_intensity(img, peaks, bg, _COUNT_APERTURE * radius)
    ok = (core > 0) & (intensity > 0)
    k = float(np.median(core[ok] / intensity[ok])) if ok.any() else 1.0
    n_core = np.floor(core / (ref * k) + 0.5 - _ROUND_OFFSET)
    return np.where(n_core > 1, np.maximum(n_core, n_full), 1.0)


def _reference(intensity: np.ndarray, sigma_px: np.ndarray) -> float:
    """Integrated intensity of a typical single punctum: the median intensity of the
    detections (most are single puncta)."""
    ok = intensity > 0
    return float(np.median(intensity[ok])) if ok.any() else np.nan


def _disc_intensity(
    img: np.ndarray, peaks: np.ndarray, bg: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Background-corrected sum over a disc around each peak, pixels to the nearest peak."""
    disc_off, disc_d = _ellipse_offsets(radius)
    dvals, dvalid, dflat = _gather(img, peaks, disc_off)
    n, k = dflat.shape
    spot_idx = np.repeat(np.arange(n), k)
    dist = np.broadcast_to(disc_d, (n, k)).ravel()
    dflat = dflat.ravel()
    order = np.lexsort((dist, dflat))
    first = np.ones(order.size, dtype=bool)
    first[1:] = dflat[order[1:]] != dflat[order[:-1]]
    own = np.zeros(order.size, dtype=bool)
    own[order[first]] = True
    own &= dvalid.ravel()
    w = dvals.ravel().astype(np.float64) - bg[spot_idx]
    return np.bincount(spot_idx[own], weights=w[own], minlength=n)


def _decompose(
    table: dict[str, np.ndarray],
    smooth: np.ndarray,
    peaks: np.ndarray,
    int_radius: np.ndarray,
    s1: np.ndarray,
    psf: np.ndarray,
    height: np.ndarray,
    n_est: np.ndarray,
    split: np.ndarray,
) -> dict[str, np.ndarray]:
    """Place the ``n_estimate`` puncta of each aggregate (vectorised CLEAN over aggregates).

    On the smoothed, background-subtracted image around each aggregate, a reference single
    punctum (median fitted height of single puncta, nominal width) is subtracted at the
    detected position, then repeatedly at the maximum of the residual, until the aggregate's
    estimated count is placed. Extra puncta get ``detected = False`` and share the aggregate's
    intensity equally.
    """
    agg = np.flatnonzero(split)
    m = n_est[agg].astype(int)
    single = n_est == 1
    ref_h = float(np.median(height[single])) if single.any() else float(np.median(height))
    off, _ = _ellipse_offsets(int_radius)
    vals, valid, _ = _gather(smooth, peaks[agg], off)
    resid = vals.astype(np.float64) - table["background"][agg][:, None]
    resid[~valid] = -np.inf
    s_eff2 = psf**2 + s1**2  # the nominal PSF convolved with the smoothing Gaussian s1
    centre = table["coords"][agg] - peaks[agg]  # sub-pixel position relative to the peak pixel
    placed = [centre]
    for it in range(int(m.max())):
        d2 = (((off[None, :, :] - centre[:, None, :]) ** 2) / s_eff2).sum(axis=2)
        active = (m > it)[:, None]
        resid -= np.where(active, ref_h * np.exp(-0.5 * d2), 0.0)
        if it + 1 >= m.max():
            break
        best = np.argmax(resid, axis=1)
        centre = off[best].astype(np.float64)
        placed.append(centre)
    placed_arr = np.stack(placed, axis=1)  # (n_agg, max_m, ndim)
    member = np.arange(placed_arr.shape[1])[None, :] < m[:, None]
    # members 1.. of each aggregate (member 0 is the detected row itself)
    extra_mask = member.copy()
    extra_mask[:, 0] = False
    src = np.repeat(agg, extra_mask.sum(axis=1))
    extra_coords = (peaks[agg][:, None, :] + placed_arr)[extra_mask]
    cluster_of = np.zeros(len(n_est), dtype=np.int64)
    cluster_of[agg] = np.arange(1, agg.size + 1)
    out = {}
    share = np.ones(len(n_est))
    share[agg] = m
    n_keep = n_est.copy()
    n_keep[agg] = 1.0
    out["coords"] = np.concatenate([table["coords"], extra_coords])
    for key in ("intensity", "amplitude"):
        v = table[key] / share
        out[key] = np.concatenate([v, v[src]])
    out["background"] = np.concatenate([table["background"], table["background"][src]])
    out["sigma_px"] = np.concatenate([table["sigma_px"], np.full(src.size, np.nan)])
    out["snr"] = np.concatenate([table["snr"], table["snr"][src]])
    out["n_estimate"] = np.concatenate([n_keep, np.ones(src.size)])
    out["detected"] = np.concatenate([np.ones(len(n_est), bool), np.zeros(src.size, bool)])
    out["cluster_id"] = np.concatenate([cluster_of, cluster_of[src]])
    return out


def detect_spots_from_config(
    image_zyx: np.ndarray, spots_cfg: Any, *, mask: np.ndarray | None = None
) -> pd.DataFrame:
    """Run :func:`detect_spots` with the settings of a ``SpotsConfig``.

    Parameters
    ----------
    image_zyx : (Z, Y, X) or (Y, X) ndarray
        Exosome channel; a single plane (``Z == 1``) is detected in 2D (no ``z`` column).
    spots_cfg : napari_exouptake.config.SpotsConfig or None
        ``radius_px``, ``threshold``, ``threshold_k``, ``background_radius_px``,
        ``min_distance_px``, ``cluster_estimate``, ``exclude_border_px``; None: defaults.
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
    return detect_spots(
        arr,
        radius_px=spots_cfg.radius_px,
        threshold=spots_cfg.threshold,
        threshold_k=spots_cfg.threshold_k,
        background_radius_px=spots_cfg.background_radius_px,
        min_distance_px=spots_cfg.min_distance_px,
        mask=mask,
        cluster_estimate=spots_cfg.cluster_estimate,
        exclude_border_px=spots_cfg.exclude_border_px,
        **{k: getattr(spots_cfg, k) for k in _OPTIONAL_CFG if hasattr(spots_cfg, k)},
    )


def learn_threshold(
    control_images: np.ndarray | Sequence[np.ndarray],
    *,
    radius_px: float | Sequence[float] = 1.8,
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
        img = _check_image(im, name=f"control image {i}")
        f, _, p = _filter(img, radius_px, background_radius_px)
        md = (
            p["radius"]
            if min_distance_px is None
            else (float(min_distance_px) * p["radius"] / p["radius"][-1])
        )
        pk = _local_maxima(f, np.maximum(md, 1.0), -np.inf)
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


# --------------------------------------------------------------------------------------------
# scoring against ground truth
# --------------------------------------------------------------------------------------------
class MatchCounts:
    """True/false positives and negatives of a one-to-one matching.

    Subclasses hold ``n_pred`` and ``n_truth`` and say how many pairs matched (``_n_matched``);
    shared by :class:`SpotMatch` and :class:`napari_exouptake.validation.LabelMatch`.
    """

    n_pred: int
    n_truth: int

    def _n_matched(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def tp(self) -> int:
        return int(self._n_matched())

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_truth - self.tp


@dataclass(frozen=True)
class SpotMatch(MatchCounts):
    """One-to-one matching of predicted and true puncta.

    Attributes
    ----------
    pred_index, truth_index : (M,) int ndarray
        Row indices of the matched pairs.
    distances : (M,) float ndarray
        Distance of each pair, pixels.
    n_pred, n_truth : int
        Numbers of predicted and true puncta.
    """

    pred_index: np.ndarray
    truth_index: np.ndarray
    distances: np.ndarray
    n_pred: int
    n_truth: int

    def _n_matched(self) -> int:
        return self.pred_index.size

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float(self.n_truth == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_truth if self.n_truth else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        denom = self.n_pred + self.n_truth
        return 2.0 * self.tp / denom if denom else 1.0

    @property
    def mean_distance(self) -> float:
        return float(self.distances.mean()) if self.distances.size else float("nan")


def _as_points(points: Any, name: str) -> np.ndarray:
    if isinstance(points, pd.DataFrame):
        cols = [c for c in ("z", "y", "x") if c in points.columns]
        if "y" not in cols or "x" not in cols:
            raise ValueError(f"{name} table needs columns 'y' and 'x', has {list(points.columns)}")
        arr = points[cols].to_numpy(dtype=float)
    else:
        arr = np.asarray(points, dtype=float)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(
            f"{name} must be an (N, 2) or (N, 3) array of coordinates, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} coordinates contain NaN or infinite values")
    return arr


def match_spots(pred: Any, truth: Any, max_dist: float = 2.0) -> SpotMatch:
    """Match predicted to true puncta one-to-one within ``max_dist`` (minimum total distance).

    Candidate pairs come from a KD-tree (only pairs closer than ``max_dist``); each connected
    group of candidates is solved exactly with the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`), maximising the number of matches first and
    minimising the summed distance second.

    Parameters
    ----------
    pred, truth : (N, D) ndarray or DataFrame with columns ``y``, ``x`` (``z``)
        Coordinates in pixels; ``D`` must agree.
    max_dist : float, default 2.0
        Largest distance of a match, pixels.

    Returns
    -------
    SpotMatch
        Pairs plus ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = _as_points(pred, "pred")
    t = _as_points(truth, "truth")
    if len(p) and len(t) and p.shape[1] != t.shape[1]:
        raise ValueError(f"pred has {p.shape[1]} coordinates per point, truth {t.shape[1]}")
    if max_dist <= 0:
        raise ValueError(f"max_dist must be > 0, got {max_dist}")
    none = np.empty(0, dtype=np.intp)
    if len(p) == 0 or len(t) == 0:
        return SpotMatch(none, none, np.empty(0), len(p), len(t))
    sdm = cKDTree(p).sparse_distance_matrix(cKDTree(t), max_dist, output_type="coo_matrix")
    rows, cols, d = sdm.row, sdm.col, sdm.data
    # exact coincidences are stored as explicit zeros by some scipy versions; keep them
    if rows.size == 0:
        return SpotMatch(none, none, np.empty(0), len(p), len(t))
    from scipy.sparse import coo_matrix

    n_p, n_t = len(p), len(t)
    graph = coo_matrix((np.ones(rows.size), (rows, n_p + cols)), shape=(n_p + n_t, n_p + n_t))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[rows]
    # components with a single candidate pair are matched directly (the common case)
    counts = np.bincount(pair_comp, minlength=comp.max() + 1)
    single = counts[pair_comp] == 1
    out_p = [rows[single]]
    out_t = [cols[single]]
    out_d = [d[single]]
    multi = np.unique(pair_comp[~single])
    if multi.size:
        order = np.argsort(pair_comp, kind="stable")
        starts = np.searchsorted(pair_comp[order], multi)
        ends = np.searchsorted(pair_comp[order], multi, side="right")
        big = 1e6 * max_dist
        # loop over the dense groups only (validation, not a hot path)
        for s, e in zip(starts, ends, strict=True):
            sel = order[s:e]
            ur, ir = np.unique(rows[sel], return_inverse=True)
            uc, ic = np.unique(cols[sel], return_inverse=True)
            cost = np.full((ur.size, uc.size), big)
            # maximise matches first: each valid pair costs distance - big/2 (< any invalid)
            cost[ir, ic] = d[sel] - big / 2
            ri, ci = linear_sum_assignment(cost)
            ok = cost[ri, ci] < 0
            out_p.append(ur[ri[ok]])
            out_t.append(uc[ci[ok]])
            out_d.append(cost[ri[ok], ci[ok]] + big / 2)
    pi = np.concatenate(out_p).astype(np.intp)
    ti = np.concatenate(out_t).astype(np.intp)
    dd = np.concatenate(out_d)
    return SpotMatch(pi, ti, dd, n_p, n_t)
