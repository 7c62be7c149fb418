"""Frames without puncta and the optical objects of a truth table (for detector checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

#: the kinds of :func:`noise_frame`
NOISE_KINDS = ("poisson8", "hotpix", "pattern", "autofluor")


def noise_frame(kind: str, seed: int = 0, shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A frame with no puncta, as real cameras and samples make them (for false-positive checks).

    Parameters
    ----------
    kind : {"poisson8", "hotpix", "pattern", "autofluor"}
        ``poisson8``: a low-count 8-bit camera (offset 10 ADU, 3 photo-electrons per pixel,
        read noise 1.5 ADU, quantised, clipped at 0). ``hotpix``: a 16-bit sCMOS (offset 100,
        gain 2 ADU/e- with 2 % pixel-to-pixel variation, 20 e- background, read noise 1.6 e-)
        with 0.05 % hot pixels of +50 to +3000 ADU. ``pattern``: a 12-bit CMOS with column
        (sd 3 ADU) and row (sd 1.5 ADU) fixed-pattern noise and pixel offsets (sd 1 ADU).
        ``autofluor``: 14 autofluorescent cells with sharp edges and a 25 % granular texture
        (3 px) over an uneven haze, Poisson and read noise.
    seed : int
    shape : (int, int)

    Returns
    -------
    ndarray
        uint8 (``poisson8``) or uint16.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    if kind == "poisson8":
        # low-count camera, 8-bit: offset 10 ADU, gain 1 ADU/e-, mean 3 e-, read noise 1.5 ADU
        e = rng.poisson(3.0, shape)
        adu = 10 + e + rng.normal(0, 1.5, shape)
        return np.clip(np.round(adu), 0, 255).astype(np.uint8)
    if kind == "hotpix":
        # sCMOS, 16-bit: offset 100, gain 2 ADU/e-, 20 e- background, read 1.6 e-, 0.05 % hot pixels
        gain = 2.0 * (1 + rng.normal(0, 0.02, shape))
        e = rng.poisson(20.0, shape)
        adu = 100 + gain * e + rng.normal(0, 2 * 1.6, shape)
        n = int(0.0005 * h * w)
        idx = rng.choice(h * w, n, replace=False)
        adu.flat[idx] += rng.uniform(50, 3000, n)
        return np.clip(np.round(adu), 0, 65535).astype(np.uint16)
    if kind == "pattern":
        # 12-bit CMOS with column/row fixed-pattern noise and pixel offset variation
        e = rng.poisson(40.0, shape).astype(float)
        col = rng.normal(0, 3, w)[None, :]
        row = rng.normal(0, 1.5, h)[:, None]
        off = rng.normal(0, 1.0, shape)
        adu = 200 + e + col + row + off + rng.normal(0, 2, shape)
        return np.clip(np.round(adu), 0, 4095).astype(np.uint16)
    if kind == "autofluor":
        # autofluorescent cells with sharp edges and haze, no puncta, Poisson, 16-bit
        yy, xx = np.mgrid[:h, :w]
        cells = np.zeros(shape)
        for _ in range(14):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            a, b = rng.uniform(25, 60, 2)
            th = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(th) + dy * np.sin(th)) / a
            v = (-dx * np.sin(th) + dy * np.cos(th)) / b
            cells += (u**2 + v**2 < 1) * rng.uniform(60, 200)
        tex = ndi.gaussian_filter(rng.normal(0, 1, shape), 3)
        tex /= tex.std()
        cells *= 1 + 0.25 * tex
        cells = ndi.gaussian_filter(cells, 1.0)
        haze = 80 * np.exp(-((yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2) / (2 * (0.4 * w) ** 2))
        lam = 30 + haze + cells
        adu = 100 + rng.poisson(lam) + rng.normal(0, 2, shape)
        return np.clip(np.round(adu), 0, 65535).astype(np.uint16)
    raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")


def optical_puncta(spots: pd.DataFrame) -> np.ndarray:
    """The optical objects of a simulated truth table: each single EV at its position, each
    aggregate (``cluster_id > 0``: members jittered ~1.1 px, below the resolution) as one
    object at its brightness-weighted centroid. What an ideal detector can place; score
    per-EV counts with the cluster-aware estimate instead.

    Parameters
    ----------
    spots : pandas.DataFrame
        ``SimulatedImage.spots`` (``y``, ``x``, ``amplitude``, ``sigma_px``, ``cluster_id``).

    Returns
    -------
    (N, 2) float ndarray of y, x
    """
    w = spots["amplitude"] * spots["sigma_px"] ** 2
    agg = spots[spots["cluster_id"] > 0].assign(w=w)
    cen = (
        agg.assign(wy=agg["y"] * agg["w"], wx=agg["x"] * agg["w"])
        .groupby("cluster_id")[["wy", "wx", "w"]]
        .sum()
    )
    return np.r_[
        spots.loc[spots["cluster_id"] == 0, ["y", "x"]].to_numpy(float),
        np.c_[cen["wy"] / cen["w"], cen["wx"] / cen["w"]],
    ]
