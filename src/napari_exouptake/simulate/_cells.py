"""Cells, nuclei and puncta of a simulated field: geometry and rendering helpers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ._params import _ANGIO_MARKERS, _COLLAGEN_MARKERS


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
