"""One simulated assay image (:func:`simulate_image`), 2D or 3D."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ._cells import (
    _label_dtype,
    _make_cells,
    _make_nuclei,
    _make_spots,
    _marker_kind,
    _render_gaussians,
    _smooth_noise,
)
from ._params import (
    _AF_GRAN,
    _AF_MED,
    _AGG_FRAC_EASY,
    _AGG_FRAC_SLOPE,
    _CONDITION_PARAMS,
    _GAIN_ADU_PER_E,
    _OFFSET_ADU,
    _OTHER_POS,
    _READ_NOISE_E,
    CONDITIONS,
    SimulatedImage,
    difficulty_value,
)

logger = logging.getLogger(__name__)


def simulate_image(
    seed: int,
    *,
    condition: str = "ev_high",
    difficulty: str | float = "normal",
    shape: tuple[int, int] = (512, 512),
    pixel_size_um: float = 0.325,
    cell_diameter_px: float = 36.0,
    markers: Sequence[str] = ("CD31", "COL1"),
    n_z: int = 1,
    spots_per_cell: float | None = None,
) -> SimulatedImage:
    """Simulate one multi-channel EV-uptake assay image with exact ground truth.

    Parameters
    ----------
    seed : int
        Seed for ``np.random.default_rng``; the same seed gives identical output.
    condition : {"untreated", "dye_only", "ev_low", "ev_high"}
        Treatment. ``untreated``: no EV puncta (rare specks only); ``dye_only``: PKH dye-only
        control with a few dye particles taken up; ``ev_low`` / ``ev_high``: increasing uptake
        and marker-positive fractions.
    difficulty : {"easy", "normal", "hard"} or float in [0, 1]
        Harder = dimmer and denser puncta, brighter autofluorescence, stronger uneven
        illumination. At ``hard`` the dimmest typical punctum (10th brightness percentile) has
        a peak of roughly 3-5x the local noise sigma.
    shape : (int, int)
        Image size (Y, X) in pixels, each >= 64.
    pixel_size_um : float
        Lateral pixel size in micrometres (metadata only).
    cell_diameter_px : float
        Typical cell diameter in pixels (16-120).
    markers : sequence of str
        Marker channel names, appended after DAPI, CellMask, PKH26. CD31-like names get a
        junctional membrane pattern, COL-like names a collagen pattern (perinuclear granules and
        extracellular fibres), anything else a cytoplasmic pattern.
    n_z : int
        Number of z planes; > 1 gives a (C, Z, Y, X) stack (1 um-ish steps, cells as flat slabs,
        puncta with a 3D Gaussian PSF) and 3D label images.
    spots_per_cell : float, optional
        Mean truth puncta per cell of average area (overrides the condition's uptake, e.g. to
        build dense benchmark images). Default: the condition's value x (1 + 0.8 difficulty).

    Returns
    -------
    SimulatedImage
    """
    if condition not in _CONDITION_PARAMS:
        raise ValueError(f"condition {condition!r} is not one of {list(CONDITIONS)}")
    d = difficulty_value(difficulty)
    if len(shape) != 2 or min(int(s) for s in shape) < 64:
        raise ValueError(f"shape {tuple(shape)!r} must be (Y, X) with both sides >= 64 pixels")
    shape = (int(shape[0]), int(shape[1]))
    if not 16 <= float(cell_diameter_px) <= 120:
        raise ValueError(f"cell_diameter_px {cell_diameter_px!r} must lie between 16 and 120")
    if not pixel_size_um or pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um {pixel_size_um!r} must be a positive number")
    if spots_per_cell is not None and not (0 <= float(spots_per_cell) <= 500):
        raise ValueError(f"spots_per_cell {spots_per_cell!r} must lie between 0 and 500")
    n_z = int(n_z)
    if n_z < 1:
        raise ValueError(f"n_z {n_z!r} must be >= 1")
    markers = tuple(str(m) for m in markers)
    if len({m.lower() for m in markers}) != len(markers):
        raise ValueError(f"markers {markers!r} contain duplicate names")

    rng = np.random.default_rng(seed)
    diameter = float(cell_diameter_px)
    h, w = shape
    cp = _CONDITION_PARAMS[condition]

    # ---- geometry
    confluence = rng.uniform(0.62, 0.85)
    # the tessellation scale is calibrated so the median equivalent-circle diameter of the
    # cells (the Cellpose convention) comes out close to cell_diameter_px
    cells, _ = _make_cells(rng, shape, 1.12 * diameter, confluence)
    n_cells = int(cells.max())
    nuclei, edt, geom = _make_nuclei(rng, cells, n_cells, diameter)
    ldt = _label_dtype(n_cells)
    cells = cells.astype(ldt)
    nuclei = nuclei.astype(ldt)
    in_cell = cells > 0
    in_nuc = nuclei > 0
    lab = cells.astype(np.int64)

    from skimage.segmentation import find_boundaries

    membrane = ndi.gaussian_filter(find_boundaries(cells, mode="inner").astype(float), 0.7)
    membrane /= max(membrane.max(), 1e-9)
    # cell thickness: thin lamellipodia at the rim, thick around the nucleus
    thick = np.where(in_cell, 0.35 + 0.65 * (1.0 - np.exp(-edt / (0.12 * diameter))), 0.0)
    dist_nuc = ndi.distance_transform_edt(~in_nuc)
    perinuc = np.where(in_cell, np.exp(-dist_nuc / (0.15 * diameter)), 0.0)

    # ---- illumination (smooth, multiplicative; stronger when harder)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    c0 = rng.uniform(0.25, 0.75, 2) * (h, w)
    r2 = ((yy - c0[0]) ** 2 + (xx - c0[1]) ** 2) / (0.5 * np.hypot(h, w)) ** 2
    vignette = 0.18 + 0.30 * d
    illum = (1.0 - vignette * r2) * (1.0 + (0.05 + 0.08 * d) * _smooth_noise(rng, shape, h / 3))
    illum = np.clip(illum / illum.max(), 0.25, 1.0)

    pad = lambda v: np.concatenate([[0.0], v])  # noqa: E731
    fine = _smooth_noise(rng, shape, 1.2)
    medium = _smooth_noise(rng, shape, 4.0)

    # ---- DAPI: per-nucleus brightness, chromatin texture, soft edges
    nb = pad(rng.lognormal(0.0, 0.22, n_cells))
    dapi = np.where(in_nuc, 1400.0 * nb[lab] * (1.0 + 0.12 * fine + 0.10 * medium), 0.0)
    dapi = np.clip(ndi.gaussian_filter(dapi, 1.0), 0, None) + 15.0

    # ---- CellMask: membrane + cytoplasm with per-cell brightness and texture
    cb = pad(rng.lognormal(0.0, 0.3, n_cells))
    tex = np.clip(1.0 + 0.22 * fine + 0.15 * medium, 0.2, None)
    cyto = cb[lab] * (380.0 * thick * tex * np.where(in_nuc, 0.8, 1.0) + 420.0 * membrane)
    cellmask = ndi.gaussian_filter(np.where(in_cell, cyto, 0.0), 1.1) + 30.0

    # ---- PKH26: autofluorescence + puncta
    af_level = 40.0 + 360.0 * d**1.3  # electrons, cytoplasmic autofluorescence
    afc = pad(rng.lognormal(0.0, 0.25, n_cells))
    gran = np.clip(
        1.0 + _AF_GRAN * d**1.5 * _smooth_noise(rng, shape, 2.5) + _AF_MED * medium, 0.3, None
    )
    autofl = af_level * afc[lab] * thick * gran * np.where(in_nuc, 0.6, 1.0)
    exo_bg = ndi.gaussian_filter(np.where(in_cell, autofl, 0.0), 1.2) + 20.0 + 30.0 * d

    amp_median = 560.0 - 380.0 * d  # electrons, peak of the median punctum
    if spots_per_cell is None:
        mean_per_cell = cp["spots_per_cell"] * (1.0 + 0.8 * d)
    else:
        mean_per_cell = float(spots_per_cell)
    if condition == "dye_only":
        amp_median *= 1.3  # dye micelles/aggregates are somewhat brighter than single EVs
    # fraction of puncta in aggregates f -> fraction of events that are aggregates (mean 4
    # members): p * 4 / (1 - p + 4 p) = f  <=>  p = f / (4 - 3 f)
    agg_frac = _AGG_FRAC_EASY + _AGG_FRAC_SLOPE * d
    p_agg = agg_frac / (4.0 - 3.0 * agg_frac)
    spots = _make_spots(rng, cells, nuclei, n_cells, mean_per_cell, p_agg, amp_median, diameter)

    # ---- markers
    marker_imgs = []
    truth_marker: dict[str, np.ndarray] = {}
    for name in markers:  # a handful of channels, not a hot loop
        kind = _marker_kind(name)
        pos_frac = cp["pos"].get(kind, _OTHER_POS[condition])
        positive = rng.random(n_cells) < pos_frac
        level = np.where(
            positive, rng.lognormal(0.0, 0.3, n_cells), 0.12 * rng.lognormal(0.0, 0.35, n_cells)
        )
        truth_marker[f"{name.lower()}_level"] = level
        truth_marker[f"{name.lower()}_positive"] = positive
        lv = pad(level)[lab]
        mtex = np.clip(1.0 + 0.3 * _smooth_noise(rng, shape, 1.5), 0.1, None)
        if kind == "angio":
            sig = lv * (900.0 * membrane * mtex + 180.0 * thick)
            extra = 0.0
        elif kind == "collagen":
            golgi = np.clip(1.0 + 0.6 * _smooth_noise(rng, shape, 1.3), 0, None)
            sig = lv * (700.0 * perinuc * golgi + 150.0 * thick * mtex)
            extra = _collagen_fibres(rng, shape, diameter, pos_frac)
        else:
            sig = lv * 500.0 * thick * mtex
            extra = 0.0
        img = ndi.gaussian_filter(np.where(in_cell, sig, 0.0) + extra, 1.1)
        img = img + 25.0 + 25.0 * af_level / 400.0 * thick  # a little autofluorescence
        marker_imgs.append(img)

    # ---- assemble expected electrons, illuminate, add noise
    channel_names = ("DAPI", "CellMask", "PKH26", *markers)
    if n_z == 1:
        spot_img = _render_gaussians(
            shape,
            spots["y"].to_numpy(),
            spots["x"].to_numpy(),
            spots["amplitude_e"].to_numpy(),
            spots["sigma_px"].to_numpy(),
        )
        expected = np.stack([dapi, cellmask, exo_bg + spot_img, *marker_imgs])
        expected *= illum[None]
        bg_exo_e = exo_bg * illum
        cells_out, nuclei_out = cells, nuclei
    else:
        expected, cells_out, nuclei_out, spots, bg_exo_e = _to_3d(
            rng, n_z, [dapi, cellmask, exo_bg, *marker_imgs], 2, spots, cells, nuclei, illum
        )

    # noise-free expected mean of every marker channel inside each truth cell, in ADU (offset +
    # gain x illuminated expected electrons): what a per-cell mean measures, before noise
    lab_out = cells_out.ravel().astype(np.int64)
    area_out = np.maximum(np.bincount(lab_out, minlength=n_cells + 1)[1:], 1)
    for k, name in enumerate(markers):
        ch = expected[3 + k].ravel()
        s_e = np.bincount(lab_out, weights=ch, minlength=n_cells + 1)[1:]
        truth_marker[f"{name.lower()}_true_mean"] = _OFFSET_ADU + _GAIN_ADU_PER_E * s_e / area_out

    counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float64)
    counts += rng.normal(0.0, _READ_NOISE_E, counts.shape)
    adu = np.clip(np.round(_OFFSET_ADU + _GAIN_ADU_PER_E * counts), 0, 65535).astype(np.uint16)

    # ---- truth tables
    ry = np.round(spots["y"].to_numpy()).astype(int)
    rx = np.round(spots["x"].to_numpy()).astype(int)
    if n_z == 1:
        ill = illum[ry, rx]
        bgv = bg_exo_e[ry, rx]
    else:
        rz = np.round(spots["z"].to_numpy()).astype(int)
        ill = illum[ry, rx]
        bgv = bg_exo_e[rz, ry, rx]
    amp_adu = spots["amplitude_e"].to_numpy() * ill * _GAIN_ADU_PER_E
    noise_adu = _GAIN_ADU_PER_E * np.sqrt(bgv + _READ_NOISE_E**2)
    cols = ["y", "x"] + (["z"] if n_z > 1 else [])
    spots_out = spots[cols].copy()
    spots_out["cell_id"] = spots["cell_id"].to_numpy()
    spots_out["amplitude"] = amp_adu
    spots_out["sigma_px"] = spots["sigma_px"].to_numpy()
    spots_out["snr"] = amp_adu / noise_adu
    spots_out["cluster_id"] = spots["cluster_id"].to_numpy()
    spots_out = spots_out.reset_index(drop=True)

    n_spots = np.bincount(spots_out["cell_id"].to_numpy(), minlength=n_cells + 1)[1:]
    area = np.bincount(cells.ravel().astype(np.int64), minlength=n_cells + 1)[1:]
    truth_cells = pd.DataFrame(
        {"cell_id": np.arange(1, n_cells + 1), "area_px": area, "n_spots": n_spots}
    )
    for key, val in truth_marker.items():
        truth_cells[key] = val

    params = {
        "cell_diameter_px": diameter,
        "confluence": float(confluence),
        "autofluorescence_e": float(af_level),
        "punctum_amplitude_median_e": float(amp_median),
        "mean_spots_per_cell_target": float(mean_per_cell),
        "aggregate_event_fraction": float(p_agg),
        "aggregate_fraction": float(agg_frac),
        "illumination_min": float(illum.min()),
        "gain_adu_per_e": _GAIN_ADU_PER_E,
        "read_noise_e": _READ_NOISE_E,
        "offset_adu": _OFFSET_ADU,
        "n_cells": n_cells,
    }
    logger.debug(
        "simulated %s (seed %s): %d cells, %d puncta", condition, seed, n_cells, len(spots_out)
    )
    return SimulatedImage(
        image=adu,
        channel_names=channel_names,
        pixel_size_um=float(pixel_size_um),
        cells=cells_out,
        nuclei=nuclei_out,
        spots=spots_out,
        truth_cells=truth_cells,
        condition=condition,
        difficulty=d,
        seed=int(seed) if np.ndim(seed) == 0 else 0,
        params=params,
    )


def _collagen_fibres(
    rng: np.random.Generator, shape: tuple[int, int], diameter: float, amount: float
) -> np.ndarray:
    """Extracellular collagen fibres: wavy, roughly co-aligned curves rendered as Gaussian beads.

    Returns expected electrons, (Y, X). ``amount`` (0-1) scales the number of fibres.
    """
    h, w = shape
    n_fib = int(rng.poisson((0.3 + amount) * 90 * h * w / 512**2)) + 1
    step = 1.0
    n_pts = int(rng.integers(80, 200))
    theta0 = rng.uniform(0, np.pi)
    ang0 = theta0 + rng.normal(0, 0.35, n_fib)  # fibres roughly co-aligned
    # smooth random walk of the direction along each fibre (waviness)
    dang = rng.normal(0, 0.035, (n_fib, n_pts))
    dang = ndi.gaussian_filter1d(dang, 4.0, axis=1) * 4.0
    ang = ang0[:, None] + np.cumsum(dang, axis=1)
    start = rng.uniform((-0.1 * h, -0.1 * w), (1.1 * h, 1.1 * w), (n_fib, 2))
    y = start[:, 0:1] + np.cumsum(step * np.sin(ang), axis=1)
    x = start[:, 1:2] + np.cumsum(step * np.cos(ang), axis=1)
    # brightness varies between fibres and smoothly along each one
    bright = rng.lognormal(0.0, 0.4, n_fib)[:, None] * np.clip(
        1.0 + 0.4 * ndi.gaussian_filter1d(rng.standard_normal((n_fib, n_pts)), 6.0, axis=1) * 3,
        0.1,
        None,
    )
    width = rng.uniform(0.8, 1.4, n_fib)[:, None] * np.ones((1, n_pts))
    ok = (y > -3) & (y < h + 2) & (x > -3) & (x < w + 2)
    img = _render_gaussians(
        shape,
        np.clip(y[ok], -2.4, h + 1.4),
        np.clip(x[ok], -2.4, w + 1.4),
        90.0 * bright[ok],
        width[ok],
    )
    return img


def _to_3d(rng, n_z, planes2d, exo_index, spots, cells, nuclei, illum):
    """Turn 2D expected images into a (C, Z, Y, X) stack with defocus and 3D puncta."""
    h, w = cells.shape
    z0 = (n_z - 1) / 2.0
    zs = np.arange(n_z)
    # cells are flat (a few um): in-focus near z0, defocused blur away from it
    out = np.empty((len(planes2d), n_z, h, w))
    for c, img in enumerate(planes2d):  # channels x planes: small fixed loops
        base = img.min()
        for z in zs:
            dz = abs(z - z0)
            weight = np.exp(-0.5 * (dz / max(1.2, n_z / 4)) ** 2)
            blurred = ndi.gaussian_filter(img - base, 0.01 + 0.9 * dz) if dz > 0 else img - base
            out[c, z] = base + weight * blurred
    bg_exo = out[exo_index] * illum[None]
    zspot = rng.uniform(max(z0 - 1.5, 0), min(z0 + 1.5, n_z - 1), len(spots))
    spots = spots.copy()
    spots["z"] = zspot
    sz = 1.6
    y, x = spots["y"].to_numpy(), spots["x"].to_numpy()
    amp, sig = spots["amplitude_e"].to_numpy(), spots["sigma_px"].to_numpy()
    for z in zs:
        a = amp * np.exp(-0.5 * ((z - zspot) / sz) ** 2)
        out[exo_index, z] += _render_gaussians((h, w), y, x, a, sig)
    out *= illum[None, None]
    nuc_half = max(1, n_z // 4)
    zmask = (np.abs(zs - z0) <= nuc_half)[:, None, None]
    cells3 = np.broadcast_to(cells, (n_z, h, w)).copy()
    nuclei3 = np.where(zmask, nuclei[None], 0).astype(nuclei.dtype)
    return out, cells3, nuclei3, spots, bg_exo
