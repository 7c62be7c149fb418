"""The per-cell table (:func:`measure_cells`), built in named steps over the runs of the labels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_RADIUS_PX
from ._inputs import _EXO, _channels_dict, _check_channel, _check_labels, _squeeze_like
from .assign import _disc_offsets, _spot_pixels
from .runs import _Runs

logger = logging.getLogger(__name__)


def measure_cells(
    cells: np.ndarray,
    channels: Mapping[str, np.ndarray] | Any,
    spots: pd.DataFrame | None = None,
    *,
    nuclei: np.ndarray | None = None,
    pixel_size_um: float | None = None,
    z_step_um: float | None = None,
    marker_names: Sequence[str] | None = None,
    exo_background: float | None = None,
    spot_radius_px: float = DEFAULT_RADIUS_PX,
    resolved: Any = None,
    exosome_key: str = _EXO,
) -> pd.DataFrame:
    """Measure uptake and marker readouts for every cell, vectorised over cells.

    Parameters
    ----------
    cells : (Y, X) or (Z, Y, X) int ndarray
        Cell labels, 0 = background. Labels need not be consecutive.
    channels : dict of str to ndarray, or ImageData
        ``{"exosome": exo, "<marker>": img, ...}``, each the shape of ``cells`` (a leading
        Z of 1 is dropped for 2D labels). Or an ``ImageData`` with ``resolved`` (the
        ``ResolvedChannels`` of the config), from which the exosome and marker channels are taken.
    spots : pandas.DataFrame, optional
        Detected puncta (:func:`napari_exouptake.spots.detect_spots`); assigned to cells here
        when they lack ``cell_id``. None: no puncta (counts 0).
    nuclei : int ndarray, optional
        Nucleus labels (or a nucleus mask), the shape of ``cells``; a cell's nuclear region is
        where it overlaps ``nuclei > 0``. Enables nuclear/cytoplasmic and perinuclear columns.
    pixel_size_um : float, optional
        Lateral pixel size (adds ``area_um2`` / ``exo_nuc_dist_um``).
    z_step_um : float, optional
        Z step of 3D stacks (adds ``volume_um3``).
    marker_names : sequence of str, optional
        Marker channels to measure; default every key of ``channels`` except the exosome key.
    exo_background : float, optional
        Exosome-channel background per pixel for ``exo_excess_intensity``; default the median
        of the pixels outside every cell (0 when there are none).
    spot_radius_px : float, default ``config.DEFAULT_RADIUS_PX``
        Disc radius around each punctum for ``exo_area_fraction``.
    resolved : ResolvedChannels, optional
        Needed when ``channels`` is an ``ImageData``.
    exosome_key : str, default "exosome"
        Key of the exosome channel in ``channels``.

    Returns
    -------
    pandas.DataFrame
        One row per cell (cells without puncta included), sorted by ``cell_id``; columns as in
        the module docstring. No cells: an empty table with those columns.

    Raises
    ------
    ValueError
        Exosome channel missing, a channel or ``nuclei`` of another shape than ``cells``,
        non-integer labels, NaN pixels, an unknown marker name.
    """
    lab, exo, markers, nuc_mask, marker_names = _checked_inputs(
        cells, channels, spots, nuclei, pixel_size_um, marker_names, resolved, exosome_key
    )
    ndim = lab.ndim
    runs = _Runs(lab, nuc_mask)
    n = runs.n
    axes = ("z", "y", "x") if ndim == 3 else ("y", "x")
    cols = _empty_columns(ndim, marker_names, pixel_size_um, z_step_um, nuclei is not None)
    if n == 0:
        logger.info("no cells in the label image")
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})

    area = runs.per_cell(runs.length)
    out = _geometry_columns(runs, area, axes, pixel_size_um, z_step_um)
    _exosome_intensity_columns(out, runs, lab, exo, area, exo_background)
    sp_pos, sp_cell = _spot_columns(out, runs, lab, area, spots, axes, spot_radius_px)
    n_area = cyto_area = None
    if nuc_mask is not None:
        n_area = _perinuclear_columns(out, runs, lab, area, sp_pos, sp_cell, pixel_size_um)
        cyto_area = area - n_area
    _marker_columns(out, runs, markers, area, n_area, cyto_area)

    df = pd.DataFrame(out)
    return df[[c for c in cols if c in df.columns]]


def _checked_inputs(
    cells: Any,
    channels: Any,
    spots: Any,
    nuclei: Any,
    pixel_size_um: float | None,
    marker_names: Sequence[str] | None,
    resolved: Any,
    exosome_key: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None, Sequence[str]]:
    """Checked labels, exosome channel, markers, flat nucleus mask (or None), marker names."""
    lab = _check_labels(cells, "cells")
    ndim = lab.ndim
    chans = _channels_dict(channels, resolved)
    if exosome_key not in chans:
        raise ValueError(
            f"exosome channel {exosome_key!r} missing: channels given are {sorted(chans)}"
        )
    exo = _check_channel(
        _squeeze_like(np.asarray(chans[exosome_key]), ndim), lab.shape, exosome_key
    )
    if marker_names is None:
        marker_names = [k for k in chans if k != exosome_key]
    markers: dict[str, np.ndarray] = {}
    for name in marker_names:
        if name not in chans:
            raise ValueError(f"marker {name!r} not among the channels {sorted(chans)}")
        markers[name] = _check_channel(
            _squeeze_like(np.asarray(chans[name]), ndim), lab.shape, name
        )
    nuc_mask = None
    if nuclei is not None:
        nuc = _check_labels(nuclei, "nuclei")
        nuc = _squeeze_like(nuc, ndim)
        if nuc.shape != lab.shape:
            raise ValueError(f"nuclei shape {nuc.shape} differs from cells shape {lab.shape}")
        nuc_mask = nuc.ravel() > 0
    if pixel_size_um is not None and not (pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if spots is not None and not isinstance(spots, pd.DataFrame):
        raise ValueError(f"spots must be a pandas DataFrame, got {type(spots).__name__}")
    return lab, exo, markers, nuc_mask, marker_names


def _geometry_columns(
    runs: _Runs,
    area: np.ndarray,
    axes: tuple[str, ...],
    pixel_size_um: float | None,
    z_step_um: float | None,
) -> dict[str, np.ndarray]:
    """``cell_id``, ``area_px``, ``area_um2`` / ``volume_um3`` and the centroids."""
    ndim = len(axes)
    out: dict[str, np.ndarray] = {"cell_id": runs.ids.astype(np.int64), "area_px": area[1:]}
    if pixel_size_um is not None and ndim == 2:
        out["area_um2"] = area[1:] * pixel_size_um**2
    if pixel_size_um is not None and ndim == 3 and z_step_um is not None:
        out["volume_um3"] = area[1:] * pixel_size_um**2 * z_step_um

    # centroids from the runs: every run lies on one image row, so its coordinate sums are
    # closed-form (no per-pixel coordinate arrays)
    for a, name in enumerate(axes):
        out[f"centroid_{name}"] = runs.per_cell(runs.coord_sum(a))[1:] / area[1:]
    return out


def _exosome_intensity_columns(
    out: dict[str, np.ndarray],
    runs: _Runs,
    lab: np.ndarray,
    exo: np.ndarray,
    area: np.ndarray,
    exo_background: float | None,
) -> None:
    """``exo_mean_intensity`` and ``exo_excess_intensity`` (background: see measure_cells)."""
    exo_sum = runs.per_cell(runs.sums(exo))
    out["exo_mean_intensity"] = exo_sum[1:] / area[1:]
    if exo_background is None:
        # median of the pixels outside every cell (a regular subsample of at most ~65,000
        # pixels: the median's standard error is then ~0.5 % of the noise sigma)
        step = max(1, lab.size // 65_536)
        sub_lab = lab.ravel()[::step]
        sub = exo.ravel()[::step][sub_lab == 0]
        exo_background = float(np.median(sub)) if sub.size else 0.0
    out["exo_excess_intensity"] = exo_sum[1:] - float(exo_background) * area[1:]


def _zero_spot_columns(out: dict[str, np.ndarray], n: int) -> None:
    """The punctum columns of ``n`` cells without puncta."""
    zero = np.zeros(n)
    out["exo_spot_count"] = zero.astype(np.int64)
    out["exo_spot_estimate"] = zero.copy()
    out["exo_integrated_intensity"] = zero.copy()
    out["exo_area_fraction"] = zero.copy()


def _spot_sums(
    out: dict[str, np.ndarray], spots: pd.DataFrame, sp_cell: np.ndarray, m1: int
) -> None:
    """Count, cluster-aware estimate and integrated intensity of the puncta of each cell
    (``sp_cell``: compact cell index of each punctum, 0 = none; ``m1``: cells + 1)."""
    out["exo_spot_count"] = np.bincount(sp_cell, minlength=m1)[1:].astype(np.int64)
    est = spots["n_estimate"].to_numpy(float) if "n_estimate" in spots else np.ones(len(spots))
    out["exo_spot_estimate"] = np.bincount(sp_cell, weights=est, minlength=m1)[1:]
    inten = spots["intensity"].to_numpy(float) if "intensity" in spots else np.zeros(len(spots))
    out["exo_integrated_intensity"] = np.bincount(sp_cell, weights=inten, minlength=m1)[1:]


def _spot_columns(
    out: dict[str, np.ndarray],
    runs: _Runs,
    lab: np.ndarray,
    area: np.ndarray,
    spots: pd.DataFrame | None,
    axes: tuple[str, ...],
    spot_radius_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Punctum columns and ``exo_area_fraction``; returns the puncta's positions and compact
    cell indices (0 = outside every cell)."""
    ndim = len(axes)
    m1 = runs.n + 1
    if spots is None or len(spots) == 0:
        _zero_spot_columns(out, runs.n)
        sp_pos = np.empty((0, ndim), dtype=np.intp)
        sp_cell = np.empty(0, dtype=np.intp)
        return sp_pos, sp_cell
    ip, inside = _spot_pixels(spots, lab.shape)
    sp_cell = np.zeros(len(spots), dtype=np.intp)
    sp_cell[inside] = runs.compact(lab[tuple(ip[inside].T)])
    sp_pos = spots[list(axes)].to_numpy(dtype=float)
    _spot_sums(out, spots, sp_cell, m1)
    # area fraction: pixels within spot_radius_px of any punctum
    off = _disc_offsets(spot_radius_px, ndim)
    pix = ip[inside][:, None, :] + off[None]
    ok = np.all((pix >= 0) & (pix < np.asarray(lab.shape)), axis=2)
    covered = np.unique(np.ravel_multi_index(tuple(pix[ok].T), lab.shape))
    cov = np.bincount(runs.compact(lab.ravel()[covered]), minlength=m1).astype(np.float64)
    out["exo_area_fraction"] = cov[1:] / area[1:]
    return sp_pos, sp_cell


def _perinuclear_columns(
    out: dict[str, np.ndarray],
    runs: _Runs,
    lab: np.ndarray,
    area: np.ndarray,
    sp_pos: np.ndarray,
    sp_cell: np.ndarray,
    pixel_size_um: float | None,
) -> np.ndarray:
    """``exo_nuc_dist_px`` / ``_um`` and ``exo_perinuclear_index``; returns the nuclear area
    of each compact cell index, ``(N + 1,)``."""
    ndim = lab.ndim
    m1 = runs.n + 1
    rn = runs.nuclear
    n_area = runs.per_cell(runs.length, rn)
    has_nuc = n_area[1:] > 0
    ncent = np.full((ndim, m1), np.nan)
    for a in range(ndim):
        with np.errstate(invalid="ignore", divide="ignore"):
            ncent[a] = runs.per_cell(runs.coord_sum(a), rn) / n_area
    mean_pix_d = _mean_pixel_distance(runs, lab, area, ncent)
    in_cell = sp_cell > 0
    sc = sp_cell[in_cell]
    sd2 = np.zeros(sc.size)
    for a in range(ndim):
        sd2 += (sp_pos[in_cell, a] - ncent[a][sc]) ** 2
    sd = np.sqrt(sd2)
    okd = np.isfinite(sd)
    cnt = np.bincount(sc[okd], minlength=m1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_sd = np.bincount(sc[okd], weights=sd[okd], minlength=m1) / cnt
        mean_sd[cnt == 0] = np.nan
        out["exo_nuc_dist_px"] = mean_sd[1:]
        if pixel_size_um is not None:
            out["exo_nuc_dist_um"] = mean_sd[1:] * pixel_size_um
        out["exo_perinuclear_index"] = mean_sd[1:] / mean_pix_d[1:]
    if not has_nuc.all():
        logger.info("%d cell(s) without a nucleus: NaN nuclear columns", int((~has_nuc).sum()))
    return n_area


def _mean_pixel_distance(
    runs: _Runs, lab: np.ndarray, area: np.ndarray, ncent: np.ndarray
) -> np.ndarray:
    """Mean distance of every cell pixel to its nuclear centroid (the perinuclear index's
    normaliser), ``(N + 1,)``; NaN for cells without a nucleus."""
    m1 = runs.n + 1
    cell_px = np.flatnonzero(lab.ravel() > 0)
    cp_lab = runs.compact(lab.ravel()[cell_px])
    cc = np.unravel_index(cell_px, lab.shape)
    d2 = np.zeros(cell_px.size)
    for a in range(lab.ndim):
        d2 += (cc[a] - ncent[a][cp_lab]) ** 2
    del cc
    ok_px = np.isfinite(d2)
    mean_pix_d = np.bincount(cp_lab[ok_px], weights=np.sqrt(d2[ok_px]), minlength=m1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pix_d = mean_pix_d / area
    del d2, cp_lab, cell_px
    return mean_pix_d


def _marker_columns(
    out: dict[str, np.ndarray],
    runs: _Runs,
    markers: Mapping[str, np.ndarray],
    area: np.ndarray,
    n_area: np.ndarray | None,
    cyto_area: np.ndarray | None,
) -> None:
    """Per marker mean and integrated intensity and, with nuclei (``n_area`` given), the
    nuclear and cytoplasmic means and their ratio."""
    for name, img in markers.items():
        run_sum = runs.sums(img)
        s = runs.per_cell(run_sum)
        out[f"{name}_mean_intensity"] = s[1:] / area[1:]
        out[f"{name}_integrated_intensity"] = s[1:]
        if n_area is not None:
            ns = runs.per_cell(run_sum, runs.nuclear)
            with np.errstate(invalid="ignore", divide="ignore"):
                nm = np.where(n_area > 0, ns / n_area, np.nan)
                cm = np.where(cyto_area > 0, (s - ns) / cyto_area, np.nan)
                out[f"{name}_nuclear_mean"] = nm[1:]
                out[f"{name}_cytoplasmic_mean"] = cm[1:]
                out[f"{name}_nc_ratio"] = np.where(cm[1:] > 0, nm[1:] / cm[1:], np.nan)


def _empty_columns(
    ndim: int,
    marker_names: Sequence[str],
    pixel_size_um: float | None,
    z_step_um: float | None,
    with_nuclei: bool,
) -> list[str]:
    cols = ["cell_id", "area_px"]
    if pixel_size_um is not None and ndim == 2:
        cols.append("area_um2")
    if pixel_size_um is not None and ndim == 3 and z_step_um is not None:
        cols.append("volume_um3")
    if ndim == 3:
        cols.append("centroid_z")
    cols += [
        "centroid_y",
        "centroid_x",
        "exo_spot_count",
        "exo_spot_estimate",
        "exo_integrated_intensity",
        "exo_mean_intensity",
        "exo_excess_intensity",
        "exo_area_fraction",
    ]
    if with_nuclei:
        cols.append("exo_nuc_dist_px")
        if pixel_size_um is not None:
            cols.append("exo_nuc_dist_um")
        cols.append("exo_perinuclear_index")
    for name in marker_names:
        cols += [f"{name}_mean_intensity", f"{name}_integrated_intensity"]
        if with_nuclei:
            cols += [f"{name}_nuclear_mean", f"{name}_cytoplasmic_mean", f"{name}_nc_ratio"]
    return cols
