"""The tube mask beyond the intensity threshold: multi-scale Hessian ridge response, growth by
hysteresis along it, free ends bridged across short gaps, small objects and holes cleaned."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

log = logging.getLogger(__package__)  # "napari_exouptake.tubes", the name before the split


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
