"""Synthetic exosome-uptake assay images with exact ground truth.

The simulator is the project's only reference for whole-cell segmentation and EV-uptake puncta
with known answers, so it aims at images a microscopist would believe:

* irregular, elongated and *touching* cells (an anisotropic, domain-warped Voronoi tessellation
  whose orientations follow a smooth swirl field, as in confluent MSC / fibroblast cultures),
  grown in confluent patches with gaps of bare substrate;
* one irregular elliptical nucleus per cell, strictly inside it;
* a membrane / cytoplasm channel ("CellMask") with per-cell brightness, thickness profile,
  texture and brighter cell-cell junctions;
* an exosome channel ("PKH26") with diffraction-limited puncta (Gaussian PSF, sigma 1.0-1.6 px,
  log-normal brightness), a few extracellular puncta, perinuclear enrichment, and diffuse
  cytoplasmic autofluorescence. Some puncta are sub-resolution aggregates of 2-6 EVs
  (members jittered by ~1.1 px, below the optical resolution, so one aggregate is one optical
  object; the truth keeps every EV for counting): 5 % of puncta at easy, 17.5 % at normal
  ("some clustered puncta"), 30 % at hard. The autofluorescence has a medium-scale (4 px)
  texture and a punctum-scale granular one whose amplitude grows as difficulty**1.5 (relative
  amplitude 0.028 at normal: smooth-ish at punctum scale, as cytoplasmic flavin / NAD(P)H
  autofluorescence is in healthy cultured cells; 0.08 at hard: lipofuscin-like granules as in
  aged or stressed cells, punctum-sized and comparable to dim puncta);
* marker channels (e.g. CD31, angiogenesis: junctional membrane pattern; COL1, collagen:
  perinuclear granules plus extracellular fibres) whose per-cell levels come from a negative and
  a positive population, the positive fraction depending on the condition;
* a smooth multiplicative illumination field, Poisson shot noise, Gaussian read noise, a camera
  offset, and uint16 output.

Everything is drawn from ``np.random.default_rng(seed)``: the same seed gives identical arrays
and tables. Puncta positions in the truth table are the exact sub-pixel centres used to render.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = [
    "CONDITIONS",
    "DIFFICULTIES",
    "SimulatedImage",
    "difficulty_value",
    "image_seed",
    "NOISE_KINDS",
    "noise_frame",
    "optical_puncta",
    "simulate_image",
    "write_dataset",
]

logger = logging.getLogger(__name__)

#: Assay conditions in the order ``write_dataset`` cycles through them.
CONDITIONS: tuple[str, ...] = ("untreated", "dye_only", "ev_low", "ev_high")

#: Named difficulty levels and the number in [0, 1] each stands for.
DIFFICULTIES: dict[str, float] = {"easy": 0.0, "normal": 0.5, "hard": 1.0}

# Mean truth puncta per cell at difficulty 0 (multiplied by 1 + 0.8 * difficulty: denser when
# harder), EV dose in ug/mL, and the marker positive fractions per condition.
_CONDITION_PARAMS: dict[str, dict] = {
    "untreated": {"spots_per_cell": 0.02, "dose": 0.0, "pos": {"angio": 0.10, "collagen": 0.12}},
    "dye_only": {"spots_per_cell": 0.5, "dose": 0.0, "pos": {"angio": 0.12, "collagen": 0.15}},
    "ev_low": {"spots_per_cell": 3.0, "dose": 10.0, "pos": {"angio": 0.35, "collagen": 0.40}},
    "ev_high": {"spots_per_cell": 9.0, "dose": 50.0, "pos": {"angio": 0.60, "collagen": 0.65}},
}
_OTHER_POS = {"untreated": 0.15, "dye_only": 0.15, "ev_low": 0.35, "ev_high": 0.55}
_ANGIO_MARKERS = {"CD31", "PECAM1", "VWF", "KDR", "VEGFR2", "CD34", "VECAD", "CDH5"}
_COLLAGEN_MARKERS = {"COL1", "COL1A1", "COL2", "COL3", "COL3A1", "COLI", "COLIII", "COLLAGEN"}

# Camera model: ADU = offset + gain * (Poisson(electrons) + Normal(0, read_noise)).
_GAIN_ADU_PER_E = 0.9
_READ_NOISE_E = 2.2
_OFFSET_ADU = 100.0
#: z step (um) written to the metadata of 3D simulated stacks.
_Z_STEP_UM = 1.0
# Autofluorescence texture in the exosome channel: granular (2.5 px, punctum-sized) and medium
# (4 px) scale. The granular part (lipofuscin-like granules) grows with difficulty as
# _AF_GRAN * difficulty**1.5: nearly smooth at punctum scale at "normal" (relative amplitude
# 0.028), as granular as before at "hard" (0.08).
_AF_GRAN = 0.08
_AF_MED = 0.10
# Fraction of truth puncta that sit in sub-resolution aggregates: 5 % + 25 % x difficulty
# (easy 5 %, normal 17.5 %, hard 30 %).
_AGG_FRAC_EASY = 0.05
_AGG_FRAC_SLOPE = 0.25


@dataclass(frozen=True)
class SimulatedImage:
    """One simulated multi-channel assay image with its ground truth.

    Attributes
    ----------
    image : (C, Y, X) or (C, Z, Y, X) uint16 ndarray
        Camera counts (ADU), offset included. Z is present only when ``n_z > 1``.
    channel_names : tuple of str
        One per C, e.g. ``("DAPI", "CellMask", "PKH26", "CD31", "COL1")``.
    pixel_size_um : float
        Lateral pixel size in micrometres.
    cells : (Y, X) or (Z, Y, X) uint16/uint32 ndarray
        Cell label image, 0 = background, labels 1..N.
    nuclei : (Y, X) or (Z, Y, X) uint16/uint32 ndarray
        Nucleus label image; each nucleus carries the label of the cell that contains it.
    spots : pandas.DataFrame
        Truth puncta, one row each: ``y``, ``x`` (sub-pixel rendering centres, image pixel
        coordinates; ``z`` too when 3D), ``cell_id`` (cell label at the rounded position,
        0 = extracellular), ``amplitude`` (noise-free peak height of the punctum above the
        local background, in ADU after illumination and gain), ``sigma_px`` (PSF Gaussian sigma,
        px), ``snr`` (amplitude / local noise sigma, both in ADU), ``cluster_id`` (0 = single
        punctum, otherwise the aggregate it belongs to).
    truth_cells : pandas.DataFrame
        One row per cell (including cells with 0 puncta): ``cell_id``, ``area_px``, ``n_spots``
        (count of truth puncta with that ``cell_id``; every EV of an aggregate counts), and per
        marker ``<marker lower>_level`` (biological relative expression, negative population
        median ~0.12, positive ~1.0), ``<marker lower>_positive`` (bool, the population the
        cell was drawn from) and ``<marker lower>_true_mean`` (noise-free expected mean of
        that channel over the cell's pixels in ADU, offset included: level x staining pattern
        x illumination + autofluorescence, before Poisson and read noise; what
        ``measure_cells``' ``<marker>_mean_intensity`` estimates. The level is only
        recovered after flat-field correction).
    condition : str
        One of :data:`CONDITIONS`.
    difficulty : float
        Difficulty in [0, 1] (easy 0, normal 0.5, hard 1).
    seed : int
        The seed the image was generated from.
    params : dict
        Image-level parameters (cell diameter, confluence, autofluorescence, ...), for reference.
    """

    image: np.ndarray
    channel_names: tuple[str, ...]
    pixel_size_um: float
    cells: np.ndarray
    nuclei: np.ndarray
    spots: pd.DataFrame
    truth_cells: pd.DataFrame
    condition: str
    difficulty: float = 0.5
    seed: int = 0
    params: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# small helpers


def difficulty_value(difficulty: str | float) -> float:
    """Map a difficulty name (``easy``, ``normal``, ``hard``) or a number to a float in [0, 1].

    Parameters
    ----------
    difficulty : str or float
        A name from :data:`DIFFICULTIES`, or a number between 0 (easy) and 1 (hard).

    Returns
    -------
    float
    """
    if isinstance(difficulty, str):
        key = difficulty.strip().lower()
        if key in DIFFICULTIES:
            return DIFFICULTIES[key]
        try:
            difficulty = float(key)
        except ValueError:
            raise ValueError(
                f"difficulty {difficulty!r} is not one of {sorted(DIFFICULTIES)} or a number "
                "between 0 and 1"
            ) from None
    value = float(difficulty)
    if not 0.0 <= value <= 1.0 or not np.isfinite(value):
        raise ValueError(f"difficulty {difficulty!r} must lie between 0 (easy) and 1 (hard)")
    return value


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` in a dataset made with ``seed`` (independent of dataset size).

    Parameters
    ----------
    seed : int
        Dataset seed (>= 0).
    index : int
        Image index (>= 0).

    Returns
    -------
    int
        A 63-bit seed derived from ``(seed, index)`` with :class:`numpy.random.SeedSequence`.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with correlation length ~``scale`` px."""
    scale = max(float(scale), 0.5)
    if scale <= 4:
        field_ = ndi.gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    else:
        # Draw on a coarse grid and interpolate: cheap for large correlation lengths.
        step = scale / 2.0
        small = (int(np.ceil(shape[0] / step)) + 4, int(np.ceil(shape[1] / step)) + 4)
        coarse = ndi.gaussian_filter(rng.standard_normal(small), 1.0, mode="wrap")
        yy = np.arange(shape[0]) / step + 2.0
        xx = np.arange(shape[1]) / step + 2.0
        field_ = ndi.map_coordinates(
            coarse, np.meshgrid(yy, xx, indexing="ij"), order=3, mode="wrap"
        )
    field_ = field_ - field_.mean()
    std = field_.std()
    return field_ / std if std > 0 else field_


def _keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep, for every label, only its largest 4-connected piece (vectorised)."""
    from skimage.measure import label as cc_label

    comp = cc_label(labels, background=0, connectivity=1)
    n_comp = int(comp.max())
    if n_comp == 0:
        return labels
    flat_c = comp.ravel()
    flat_l = labels.ravel()
    area = np.bincount(flat_c, minlength=n_comp + 1)
    owner = np.zeros(n_comp + 1, dtype=np.int64)
    owner[flat_c] = flat_l
    ids = np.arange(1, n_comp + 1)
    # sort components by (owner, -area); the first of each owner is its largest piece
    order = np.lexsort((-area[ids], owner[ids]))
    sorted_ids = ids[order]
    sorted_owner = owner[sorted_ids]
    first = np.ones(sorted_ids.size, dtype=bool)
    first[1:] = sorted_owner[1:] != sorted_owner[:-1]
    keep = np.zeros(n_comp + 1, dtype=bool)
    keep[sorted_ids[first]] = True
    out = labels.copy()
    out[~keep[comp]] = 0
    return out


def _relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel to 1..N; returns (new labels, old id of each new id with index 0 = 0)."""
    old = np.unique(labels)
    old = old[old > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[old] = np.arange(1, old.size + 1)
    return lut[labels], np.concatenate([[0], old])


def _label_dtype(n: int) -> type:
    return np.uint16 if n < 65535 else np.uint32


def _render_gaussians(
    shape: tuple[int, int],
    y: np.ndarray,
    x: np.ndarray,
    amp: np.ndarray,
    sigma: np.ndarray,
) -> np.ndarray:
    """Sum of 2D Gaussians with peak ``amp`` at sub-pixel (y, x), vectorised local stamps."""
    out = np.zeros(shape[0] * shape[1], dtype=np.float64)
    if y.size == 0:
        return out.reshape(shape)
    half = int(np.ceil(3.5 * float(sigma.max())))
    offs = np.arange(-half, half + 1)
    cy = np.round(y).astype(np.int64)
    cx = np.round(x).astype(np.int64)
    py = cy[:, None, None] + offs[None, :, None]  # (N, K, 1)
    px = cx[:, None, None] + offs[None, None, :]  # (N, 1, K)
    s2 = 2.0 * sigma[:, None, None] ** 2
    val = amp[:, None, None] * np.exp(
        -((py - y[:, None, None]) ** 2) / s2 - ((px - x[:, None, None]) ** 2) / s2
    )
    py, px = np.broadcast_arrays(py, px)
    ok = (py >= 0) & (py < shape[0]) & (px >= 0) & (px < shape[1])
    flat = py[ok] * shape[1] + px[ok]
    out += np.bincount(flat, weights=val[ok], minlength=out.size)
    return out.reshape(shape)


def _marker_kind(name: str) -> str:
    key = re.sub(r"[^A-Z0-9]", "", name.upper())
    if key in _ANGIO_MARKERS:
        return "angio"
    if key in _COLLAGEN_MARKERS or key.startswith("COL"):
        return "collagen"
    return "other"


# ----------------------------------------------------------------------------------------------
# geometry


def _make_cells(
    rng: np.random.Generator, shape: tuple[int, int], diameter: float, confluence: float
) -> tuple[np.ndarray, dict]:
    """Irregular touching cells: anisotropic, domain-warped Voronoi cells inside patches."""
    h, w = shape
    spacing = 0.85 * diameter
    margin = diameter
    # jittered hexagonal seed lattice covering the image plus a margin
    rows = np.arange(-margin, h + margin, spacing * np.sqrt(3) / 2)
    cols = np.arange(-margin, w + margin, spacing)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    gx = gx + (np.arange(rows.size)[:, None] % 2) * spacing / 2
    seeds = np.column_stack([gy.ravel(), gx.ravel()])
    seeds += rng.uniform(-0.4, 0.4, seeds.shape) * spacing
    # drop ~20 % of seeds: neighbours grow into the room, giving a spread of cell sizes
    seeds = seeds[rng.random(len(seeds)) > 0.2]
    n = len(seeds)

    # smooth orientation ("swirl") field: confluent MSCs / fibroblasts align locally
    theta_field = np.pi * _smooth_noise(rng, shape, 5.0 * diameter) * 0.9
    sy = np.clip(np.round(seeds[:, 0]), 0, h - 1).astype(int)
    sx = np.clip(np.round(seeds[:, 1]), 0, w - 1).astype(int)
    theta = theta_field[sy, sx] + rng.normal(0, 0.25, n)
    # per image: from cobblestone (HUVEC-like) to spindle-shaped (MSC / fibroblast-like)
    elong_mean = rng.uniform(1.2, 2.6)
    elong = np.clip(elong_mean * rng.lognormal(0.0, 0.2, n), 1.0, 3.5)  # metric aspect ratio
    size = rng.lognormal(0.0, 0.15, n)  # relative size of the cell's territory

    # domain warp: wavy, irregular boundaries
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    amp = 0.10 * diameter
    wy = yy + amp * _smooth_noise(rng, shape, 0.35 * diameter)
    wx = xx + amp * _smooth_noise(rng, shape, 0.35 * diameter)
    pts = np.column_stack([wy.ravel(), wx.ravel()])
    k = min(9, n)
    _, nn = cKDTree(seeds).query(pts, k=k)
    nn = nn.reshape(len(pts), k)
    dy = pts[:, 0:1] - seeds[nn, 0]
    dx = pts[:, 1:2] - seeds[nn, 1]
    ct, st = np.cos(theta[nn]), np.sin(theta[nn])
    u = ct * dx + st * dy  # along the cell's long axis
    v = -st * dx + ct * dy
    sq = np.sqrt(elong[nn])
    dist = np.sqrt((u / sq) ** 2 + (v * sq) ** 2) / size[nn]
    best = np.argmin(dist, axis=1)
    owner = nn[np.arange(len(pts)), best]
    dmin = dist[np.arange(len(pts)), best].reshape(shape)
    owner = owner.reshape(shape) + 1

    # confluent patches with gaps of bare substrate: a cell exists where its seed lies in a patch,
    # and each cell has a maximal reach, so cells at a patch edge end with a free, ruffled edge
    patch = _smooth_noise(rng, shape, 2.5 * diameter)
    thr = np.quantile(patch, 1.0 - confluence)
    alive = np.concatenate([[False], patch[sy, sx] > thr])
    reach = 0.72 * diameter * (1.0 + 0.15 * _smooth_noise(rng, shape, 0.2 * diameter))
    fg = alive[owner] & (dmin < reach)
    labels = np.where(fg, owner, 0)
    labels = _keep_largest_component(labels)

    # remove slivers cut by the patch mask or the image border
    area = np.bincount(labels.ravel())
    min_area = 0.18 * np.pi * (diameter / 2) ** 2
    small = area < min_area
    small[0] = False
    labels[small[labels]] = 0
    labels, old = _relabel_sequential(labels)
    info = {"theta": theta[old[1:] - 1], "elong": elong[old[1:] - 1]}
    return labels, info


def _cell_moments(labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-cell area, centroid and orientation (arrays indexed by label, index 0 unused)."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    lab = labels.ravel()
    area = np.bincount(lab, minlength=n + 1).astype(float)
    a = np.maximum(area, 1)
    my = np.bincount(lab, yy.ravel(), minlength=n + 1) / a
    mx = np.bincount(lab, xx.ravel(), minlength=n + 1) / a
    cyy = np.bincount(lab, (yy.ravel() - my[lab]) ** 2, minlength=n + 1) / a
    cxx = np.bincount(lab, (xx.ravel() - mx[lab]) ** 2, minlength=n + 1) / a
    cxy = np.bincount(lab, (yy.ravel() - my[lab]) * (xx.ravel() - mx[lab]), minlength=n + 1) / a
    # angle of the major axis, measured from +x towards +y
    theta = 0.5 * np.arctan2(2 * cxy, cxx - cyy)
    return {"area": area, "cy": my, "cx": mx, "theta": theta}


def _make_nuclei(
    rng: np.random.Generator, cells: np.ndarray, n: int, diameter: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One irregular elliptical nucleus per cell, strictly inside it (label = cell label)."""
    from skimage.segmentation import find_boundaries

    interior = (cells > 0) & ~find_boundaries(cells, mode="inner")
    edt = ndi.distance_transform_edt(interior)
    idx = np.arange(1, n + 1)
    r_in = np.asarray(ndi.maximum(edt, cells, idx), dtype=float)
    pos = np.asarray(ndi.maximum_position(edt, cells, idx), dtype=float).reshape(-1, 2)
    mom = _cell_moments(cells, n)

    # nucleus geometry per cell (index 0 = background, unused)
    b = np.minimum(diameter * rng.uniform(0.17, 0.23, n), 0.85 * r_in)  # minor semi-axis
    b = np.maximum(b, 2.0)
    a = b * rng.uniform(1.15, 1.7, n)  # major semi-axis, along the cell's long axis
    th = mom["theta"][1:] + rng.normal(0, 0.15, n)
    # nudge the centre a little from the innermost point towards the centroid
    cy = 0.7 * pos[:, 0] + 0.3 * mom["cy"][1:]
    cx = 0.7 * pos[:, 1] + 0.3 * mom["cx"][1:]
    pad = lambda v: np.concatenate([[0.0], v])  # noqa: E731
    A, B, TH, CY, CX = pad(a), pad(b), pad(th), pad(cy), pad(cx)

    h, w = cells.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    lab = cells
    dy, dx = yy - CY[lab], xx - CX[lab]
    ct, st = np.cos(TH[lab]), np.sin(TH[lab])
    u = (ct * dx + st * dy) / np.maximum(A[lab], 1e-6)
    v = (-st * dx + ct * dy) / np.maximum(B[lab], 1e-6)
    wobble = 0.18 * _smooth_noise(rng, (h, w), 0.25 * diameter)
    inside = (u**2 + v**2) < 1.0 + wobble
    nuc = np.where(inside & interior, cells, 0)
    # guarantee at least the innermost pixel of every cell
    py, px = np.round(pos[:, 0]).astype(int), np.round(pos[:, 1]).astype(int)
    nuc[py, px] = idx
    nuc = _keep_largest_component(nuc)
    geom = {"cy": CY, "cx": CX, "a": A, "b": B, "theta": TH, "r_in": pad(r_in)}
    return nuc.astype(cells.dtype), edt, geom


# ----------------------------------------------------------------------------------------------
# puncta


def _sample_in_labels(
    rng: np.random.Generator, labels: np.ndarray, weight: np.ndarray, which: np.ndarray
) -> np.ndarray:
    """Sample one pixel (flat index) inside each label in ``which``, with per-pixel weights."""
    flat_l = labels.ravel()
    order = np.argsort(flat_l, kind="stable")
    sorted_l = flat_l[order]
    cw = np.cumsum(weight.ravel()[order])
    n = int(labels.max())
    start = np.searchsorted(sorted_l, np.arange(n + 2), side="left")
    lo = np.where(start[which] > 0, cw[np.maximum(start[which] - 1, 0)], 0.0)
    hi = cw[start[which + 1] - 1]
    target = lo + rng.random(which.size) * (hi - lo)
    pos = np.searchsorted(cw, target, side="right")
    pos = np.clip(pos, start[which], start[which + 1] - 1)
    return order[pos]


def _make_spots(
    rng: np.random.Generator,
    cells: np.ndarray,
    nuclei: np.ndarray,
    n_cells: int,
    mean_per_cell: float,
    p_aggregate: float,
    amp_median: float,
    diameter: float,
) -> pd.DataFrame:
    """Truth puncta: cell-associated events (single or aggregates) plus extracellular ones."""
    h, w = cells.shape
    area = np.bincount(cells.ravel(), minlength=n_cells + 1)[1:].astype(float)
    mean_members = 1.0 + p_aggregate * 3.0  # aggregates have 2..6 members (mean 4)
    rel = area / max(area.mean(), 1.0) if n_cells else area
    # over-dispersed uptake: gamma-distributed cell-to-cell propensity (shape 2)
    lam = mean_per_cell / mean_members * rel * rng.gamma(2.0, 0.5, n_cells)
    events = rng.poisson(lam)
    which = np.repeat(np.arange(1, n_cells + 1), events)

    # within a cell: enriched around the nucleus (endolysosomal compartment), fewer on top of it
    dist_nuc = ndi.distance_transform_edt(nuclei == 0)
    weight = np.where(nuclei > 0, 0.35, 1.0 + 2.5 * np.exp(-dist_nuc / (0.18 * diameter)))
    weight = weight * (cells > 0)
    flat = _sample_in_labels(rng, cells, weight, which) if which.size else np.zeros(0, int)
    ey = flat // w + rng.uniform(-0.5, 0.5, flat.size)
    ex = flat % w + rng.uniform(-0.5, 0.5, flat.size)

    # extracellular puncta (on the substrate), ~2 % of cell-associated events + rare debris
    bg = np.flatnonzero(cells.ravel() == 0)
    n_ec = rng.poisson(0.02 * which.size + 0.3)
    if bg.size and n_ec:
        pick = bg[rng.integers(0, bg.size, n_ec)]
        ey = np.concatenate([ey, pick // w + rng.uniform(-0.5, 0.5, n_ec)])
        ex = np.concatenate([ex, pick % w + rng.uniform(-0.5, 0.5, n_ec)])
    n_ev = ey.size

    # aggregates: 2-6 puncta within ~2-3 px of the event centre
    is_agg = rng.random(n_ev) < p_aggregate
    members = np.where(is_agg, rng.integers(2, 7, n_ev), 1)
    ev_id = np.repeat(np.arange(n_ev), members)
    cluster = np.where(is_agg, np.cumsum(is_agg), 0)[ev_id]
    jitter = rng.normal(0.0, 1.1, (ev_id.size, 2)) * (cluster > 0)[:, None]
    y = np.clip(ey[ev_id] + jitter[:, 0], 0.0, h - 1.0)
    x = np.clip(ex[ev_id] + jitter[:, 1], 0.0, w - 1.0)
    amp = amp_median * rng.lognormal(0.0, 0.45, y.size)
    sigma = rng.uniform(1.0, 1.6, y.size)
    cell_id = cells[np.round(y).astype(int), np.round(x).astype(int)]
    return pd.DataFrame(
        {
            "y": y,
            "x": x,
            "cell_id": cell_id.astype(np.int64),
            "amplitude_e": amp,
            "sigma_px": sigma,
            "cluster_id": cluster.astype(np.int64),
        }
    )


# ----------------------------------------------------------------------------------------------
# the image


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


# ----------------------------------------------------------------------------------------------
# datasets


def _config_yaml(
    channel_names: Sequence[str],
    markers: Sequence[str],
    pixel_size_um: float,
    diameter: float,
    conditions: Sequence[str],
) -> str:
    from .config import DEFAULT_RADIUS_PX

    lines = [
        "# Assay config for a simulated napari-exouptake dataset (exouptake simulate).",
        "channels:",
        f"  nucleus: {channel_names[0]}",
        f"  cell: {channel_names[1]}",
        f"  exosome: {channel_names[2]}",
    ]
    if markers:
        lines.append("  markers:")
        for m in markers:
            kind = (
                {"angio": "angiogenesis", "collagen": "collagen"}[_marker_kind(m)]
                if _marker_kind(m) != "other"
                else "other"
            )
            lines.append(f"    {m.lower()}: {{channel: {m}, kind: {kind}}}")
    lines += [
        f"pixel_size_um: {pixel_size_um:g}",
        "segmentation:",
        "  mode: cells",
        "  model: demo-cells",
        f"  diameter_px: {diameter:g}",
        "spots:",
        f"  radius_px: {DEFAULT_RADIUS_PX:g}",
        "  threshold: auto",
        "positivity:",
        "  control_condition: dye_only",
    ]
    collagen = [m for m in markers if _marker_kind(m) == "collagen"]
    if collagen:
        lines.append(f"collagen: {{channel: {collagen[0]}}}")
    lines.append("conditions:")
    for c in conditions:
        lines.append(f'  "{c}_*": {c}')
    return "\n".join(lines) + "\n"


def _write_image(path: Path, data: np.ndarray, channel_names, pixel_size_um: float) -> None:
    try:
        from .io import write_ome_tiff
    except ImportError:
        write_ome_tiff = None
    z_step = _Z_STEP_UM if data.ndim == 4 else None
    if write_ome_tiff is not None:
        write_ome_tiff(path, data, channel_names, pixel_size_um, z_step_um=z_step)
        return
    import tifffile

    axes = "CYX" if data.ndim == 3 else "CZYX"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        photometric="minisblack",
        compression="zlib",
        metadata={
            "axes": axes,
            "Channel": {"Name": list(channel_names)},
            "PhysicalSizeX": pixel_size_um,
            "PhysicalSizeY": pixel_size_um,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
            **({"PhysicalSizeZ": z_step, "PhysicalSizeZUnit": "µm"} if z_step else {}),
        },
    )


def _write_labels(path: Path, labels: np.ndarray) -> None:
    try:
        from .io import write_labels
    except ImportError:
        write_labels = None
    if write_labels is not None:
        write_labels(path, labels)
        return
    import tifffile

    tifffile.imwrite(path, labels, compression="zlib", photometric="minisblack")


def write_dataset(
    out_dir: str | Path,
    n_images: int = 8,
    seed: int = 0,
    *,
    difficulty: str | float = "normal",
    shape: tuple[int, int] = (512, 512),
    conditions: Sequence[str] | None = None,
    pixel_size_um: float = 0.325,
    cell_diameter_px: float = 36.0,
    markers: Sequence[str] = ("CD31", "COL1"),
    n_z: int = 1,
) -> Path:
    """Write a simulated assay dataset in the contract layout.

    Layout under ``out_dir``::

        images/<name>.ome.tif           (C, Y, X) or (C, Z, Y, X) uint16, channel names, pixel size
        labels/<name>_cells.tif         cell labels
        labels/<name>_nuclei.tif        nucleus labels (same id as the containing cell)
        truth_spots.csv                 image, y, x[, z], cell_id, amplitude, sigma_px, snr, ...
        truth_cells.csv                 image, cell_id, area_px, n_spots, <marker>_level, ...
        conditions.csv                  image, condition, dose (ug/mL)
        config.yaml                     an assay config that fits the images

    Image ``i`` is named ``<condition>_<iii>`` with the condition cycling over ``conditions``,
    and is simulated from :func:`image_seed` ``(seed, i)``, so it does not depend on
    ``n_images``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    n_images : int
        Number of images (>= 1).
    seed : int
        Dataset seed.
    difficulty : str or float
        See :func:`simulate_image`.
    shape : (int, int)
        Image size (Y, X) in pixels.
    conditions : sequence of str, optional
        Conditions to cycle through; default :data:`CONDITIONS`.
    pixel_size_um, cell_diameter_px, markers, n_z
        See :func:`simulate_image`.

    Returns
    -------
    Path
        ``out_dir``.
    """
    n_images = int(n_images)
    if n_images < 1:
        raise ValueError(f"n_images {n_images!r} must be >= 1")
    conditions = tuple(CONDITIONS if conditions is None else conditions)
    if not conditions:
        raise ValueError("conditions must name at least one condition")
    for c in conditions:
        if c not in _CONDITION_PARAMS:
            raise ValueError(f"condition {c!r} is not one of {list(CONDITIONS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    spot_tables, cell_tables, cond_rows = [], [], []
    channel_names: tuple[str, ...] = ()
    for i in range(n_images):  # one image per iteration: I/O bound, not a per-spot loop
        cond = conditions[i % len(conditions)]
        name = f"{cond}_{i:03d}"
        sim = simulate_image(
            image_seed(seed, i),
            condition=cond,
            difficulty=difficulty,
            shape=shape,
            pixel_size_um=pixel_size_um,
            cell_diameter_px=cell_diameter_px,
            markers=markers,
            n_z=n_z,
        )
        channel_names = sim.channel_names
        _write_image(
            out / "images" / f"{name}.ome.tif", sim.image, sim.channel_names, sim.pixel_size_um
        )
        _write_labels(out / "labels" / f"{name}_cells.tif", sim.cells)
        _write_labels(out / "labels" / f"{name}_nuclei.tif", sim.nuclei)
        spot_tables.append(sim.spots.assign(image=name))
        cell_tables.append(sim.truth_cells.assign(image=name))
        cond_rows.append(
            {
                "image": name,
                "condition": cond,
                "dose": _CONDITION_PARAMS[cond]["dose"],
                "dose_unit": "ug/mL",
                "seed": image_seed(seed, i),
            }
        )
        logger.info("wrote %s: %d cells, %d puncta", name, len(sim.truth_cells), len(sim.spots))

    spots = pd.concat(spot_tables, ignore_index=True)
    cells = pd.concat(cell_tables, ignore_index=True)
    spots = spots[["image", *[c for c in spots.columns if c != "image"]]]
    cells = cells[["image", *[c for c in cells.columns if c != "image"]]]
    spots.to_csv(out / "truth_spots.csv", index=False, float_format="%.4f")
    cells.to_csv(out / "truth_cells.csv", index=False, float_format="%.5g")
    pd.DataFrame(cond_rows).to_csv(out / "conditions.csv", index=False)
    (out / "config.yaml").write_text(
        _config_yaml(
            channel_names, markers, pixel_size_um, cell_diameter_px, list(dict.fromkeys(conditions))
        )
    )
    return out


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
