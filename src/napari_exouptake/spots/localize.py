"""Sub-pixel position, size, local background and integrated intensity of each punctum."""

from __future__ import annotations

import numpy as np

from ._geometry import ellipse_offsets, gather


def subpixel(
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


def ring_background(img: np.ndarray, peaks: np.ndarray, ring_off: np.ndarray) -> np.ndarray:
    """Local background of each peak: median of the raw image on the annulus ``ring_off``."""
    vals, valid, _ = gather(img, peaks, ring_off)
    return np.nanmedian(np.where(valid, vals.astype(np.float64), np.nan), axis=1)


def lateral_sigma(sig_s: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Punctum sigma (px) from the fitted per-axis sigma of the ``s1``-smoothed image: the
    smoothing removed, mean over the Y/X axes that fitted (NaN where none did)."""
    lat = np.sqrt(np.clip(sig_s**2 - s1**2, 0.0, None))[:, -2:]
    n_ok = np.isfinite(lat).sum(axis=1)
    return np.where(n_ok > 0, np.nansum(lat, axis=1) / np.maximum(n_ok, 1), np.nan)


def disc_intensity(
    img: np.ndarray, peaks: np.ndarray, bg: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Background-corrected sum over a disc around each peak, pixels to the nearest peak."""
    disc_off, disc_d = ellipse_offsets(radius)
    dvals, dvalid, dflat = gather(img, peaks, disc_off)
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
