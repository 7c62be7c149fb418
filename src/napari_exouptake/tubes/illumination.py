"""Illumination and polarity: which way the tubes point (bright or dark), the well's inside,
and the background-corrected foreground the threshold and the ridge filter read."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._skeleton import otsu_or_none


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
