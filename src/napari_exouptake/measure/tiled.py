"""Big 2D images one band of full rows at a time: :func:`assign_spots_tiled` and
:func:`measure_cells_tiled` (the same cell table as :func:`measure_cells`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_RADIUS_PX
from ._inputs import _EXO, _check_channel, _check_labels
from .assign import _disc_offsets, _spot_pixels
from .cells import _empty_columns, _spot_sums, _zero_spot_columns
from .runs import _Runs

logger = logging.getLogger(__name__)

#: rows per band of the tiled measurement (full-width bands: runs never cross a band)
TILED_BAND_ROWS = 512


def _bands(height: int, rows: int) -> list[tuple[int, int]]:
    rows = max(int(rows), 1)
    return [(y0, min(y0 + rows, height)) for y0 in range(0, height, rows)]


def assign_spots_tiled(
    spots: pd.DataFrame, cells: Any, *, band_rows: int = TILED_BAND_ROWS
) -> pd.DataFrame:
    """:func:`assign_spots` for a big 2D label image, read one band of rows at a time.

    Parameters
    ----------
    spots : pandas.DataFrame
        Columns ``y``, ``x`` (pixel coordinates).
    cells : (Y, X) int ndarray or dask array
        Cell labels, 0 = background.
    band_rows : int
        Rows read at once.

    Returns
    -------
    pandas.DataFrame
        As :func:`assign_spots`.
    """
    if not isinstance(spots, pd.DataFrame):
        raise ValueError(f"spots must be a pandas DataFrame, got {type(spots).__name__}")
    if cells.ndim != 2:
        raise ValueError(f"tiled assignment takes 2D (Y, X) labels, got shape {cells.shape}")
    out = spots.copy()
    if len(out) == 0:
        out["cell_id"] = pd.Series(dtype=np.int64)
        return out
    shape = tuple(int(v) for v in cells.shape)
    ip, inside = _spot_pixels(out, shape)
    cid = np.zeros(len(out), dtype=np.int64)
    for y0, y1 in _bands(shape[0], band_rows):
        sel = inside & (ip[:, 0] >= y0) & (ip[:, 0] < y1)
        if sel.any():
            lab = _check_labels(np.asarray(cells[y0:y1]), "cells")
            cid[sel] = lab[ip[sel, 0] - y0, ip[sel, 1]]
    out["cell_id"] = cid
    return out


def measure_cells_tiled(
    cells: Any,
    channels: Mapping[str, Any],
    spots: pd.DataFrame | None = None,
    *,
    pixel_size_um: float | None = None,
    marker_names: Sequence[str] | None = None,
    exo_background: float | None = None,
    spot_radius_px: float = DEFAULT_RADIUS_PX,
    exosome_key: str = _EXO,
    band_rows: int = TILED_BAND_ROWS,
    progress: Any = None,
    cancel: Any = None,
) -> pd.DataFrame:
    """:func:`measure_cells` for a big 2D image, one band of rows at a time: the same table.

    Sums, areas and centroid sums are accumulated per label over bands of full rows (the
    runs of :class:`_Runs` never cross a row, so they are the whole image's runs); the
    background sample is the whole image's; puncta are looked up in the band holding them.
    Only one band of labels and channels (as float32) is in memory at a time.

    Parameters
    ----------
    cells : (Y, X) int ndarray or dask array
        Cell labels, 0 = background.
    channels : dict of str to (Y, X) ndarray or dask array
        ``{"exosome": exo, "<marker>": img, ...}``; read band by band, as float32.
    spots : pandas.DataFrame, optional
        Detected puncta; their ``cell_id`` (:func:`assign_spots_tiled`) is used when present.
    pixel_size_um, marker_names, exo_background, spot_radius_px, exosome_key
        As in :func:`measure_cells` (no nuclei, no 3D).
    band_rows : int
        Rows per band.
    progress, cancel
        The protocol of :mod:`napari_exouptake.progress`.

    Returns
    -------
    pandas.DataFrame
        As :func:`measure_cells` (equal to float rounding; exactly for integer-valued images).
    """
    from ..progress import Cancelled

    shape, marker_names, names = _checked_tiled_inputs(
        cells, channels, spots, pixel_size_um, marker_names, exosome_key
    )
    h, w = shape
    has_spots = spots is not None and len(spots) > 0
    geo = _SpotGeometry(spots, cells, shape, spot_radius_px, band_rows) if has_spots else None
    step_bg = max(1, h * w // 65_536)  # measure_cells' background sample
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    bg_parts: list[np.ndarray] = []
    bands = _bands(h, band_rows)
    for k, (y0, y1) in enumerate(bands):
        if cancel is not None and cancel():
            raise Cancelled("measurement cancelled")
        if progress is not None:
            progress(k / len(bands), "per-cell measurement")
        ids, table, bg = _measure_band(cells, channels, names, y0, y1, w, step_bg, geo)
        keys.append(ids)
        vals.append(table)
        bg_parts.append(bg)
    cols = _empty_columns(2, marker_names, pixel_size_um, None, False)
    all_ids = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if all_ids.size == 0:
        logger.info("no cells in the label image")
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    ids, inv = np.unique(all_ids, return_inverse=True)
    n = ids.size
    allv = np.concatenate(vals)
    n_val = allv.shape[1]
    tot = np.stack([np.bincount(inv, weights=allv[:, j], minlength=n) for j in range(n_val)], 1)
    if exo_background is None:
        sub = np.concatenate(bg_parts) if bg_parts else np.zeros(0, np.float32)
        exo_background = float(np.median(sub)) if sub.size else 0.0
    out = _tiled_columns(ids, tot, spots, geo, marker_names, pixel_size_um, exo_background)
    df = pd.DataFrame(out)
    return df[[c for c in cols if c in df.columns]]


def _checked_tiled_inputs(
    cells: Any,
    channels: Mapping[str, Any],
    spots: Any,
    pixel_size_um: float | None,
    marker_names: Sequence[str] | None,
    exosome_key: str,
) -> tuple[tuple[int, int], Sequence[str], list[str]]:
    """The labels' shape, the marker names and every channel read (exosome first)."""
    if cells.ndim != 2:
        raise ValueError(f"tiled measurement takes 2D (Y, X) labels, got shape {cells.shape}")
    shape = tuple(int(v) for v in cells.shape)
    if exosome_key not in channels:
        raise ValueError(
            f"exosome channel {exosome_key!r} missing: channels given are {sorted(channels)}"
        )
    if marker_names is None:
        marker_names = [k for k in channels if k != exosome_key]
    for name in marker_names:
        if name not in channels:
            raise ValueError(f"marker {name!r} not among the channels {sorted(channels)}")
    names = [exosome_key, *marker_names]
    for name in names:
        a = channels[name]
        a_shape = tuple(a.shape[1:]) if a.ndim == 3 and a.shape[0] == 1 else tuple(a.shape)
        if a_shape != shape:
            raise ValueError(
                f"channel {name!r} has shape {tuple(a.shape)} but the labels have shape {shape}"
            )
    if pixel_size_um is not None and not (pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if spots is not None and not isinstance(spots, pd.DataFrame):
        raise ValueError(f"spots must be a pandas DataFrame, got {type(spots).__name__}")
    return shape, marker_names, names


class _SpotGeometry:
    """The puncta's rounded pixels, in-image mask, disc offsets and reach (rows), and their
    cell labels (their ``cell_id``, or assigned band by band)."""

    def __init__(
        self,
        spots: pd.DataFrame,
        cells: Any,
        shape: tuple[int, ...],
        spot_radius_px: float,
        band_rows: int,
    ) -> None:
        self.ip, self.inside = _spot_pixels(spots, shape)
        self.off = _disc_offsets(spot_radius_px, 2)
        self.reach = int(np.abs(self.off[:, 0]).max())
        self.lab_id = (
            spots["cell_id"].to_numpy(np.int64)
            if "cell_id" in spots
            else assign_spots_tiled(spots, cells, band_rows=band_rows)["cell_id"].to_numpy()
        )
        self.shape = shape

    def covered(self, lab: np.ndarray, y0: int, y1: int) -> np.ndarray:
        """Flat indices into the band ``lab`` (rows ``y0:y1``) within the disc of a punctum."""
        ip, off, reach = self.ip, self.off, self.reach
        sel = self.inside & (ip[:, 0] >= y0 - reach) & (ip[:, 0] < y1 + reach)
        pix = ip[sel][:, None, :] + off[None]
        ok = np.all((pix >= 0) & (pix < np.asarray(self.shape)), axis=2)
        ok &= (pix[..., 0] >= y0) & (pix[..., 0] < y1)
        px = pix[ok]
        return np.unique(np.ravel_multi_index((px[:, 0] - y0, px[:, 1]), lab.shape))


def _band_of(a: Any, y0: int, y1: int, w: int, name: str) -> np.ndarray:
    part = a[0, y0:y1] if a.ndim == 3 else a[y0:y1]
    return _check_channel(np.asarray(part, dtype=np.float32), (y1 - y0, w), name)


def _measure_band(
    cells: Any,
    channels: Mapping[str, Any],
    names: Sequence[str],
    y0: int,
    y1: int,
    w: int,
    step_bg: int,
    geo: _SpotGeometry | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One band of rows: its labels, a table per label (area, y sum, x sum, covered pixels,
    channel sums), and its pixels of the whole image's background sample."""
    lab = _check_labels(np.asarray(cells[y0:y1]), "cells")
    runs = _Runs(lab, None)
    first = -(-y0 * w // step_bg) * step_bg
    idx = np.arange(first, y1 * w, step_bg, dtype=np.int64) - y0 * w
    sub_bg = lab.ravel()[idx] == 0
    table = np.zeros((runs.n + 1, 4 + len(names)))
    table[:, 0] = runs.per_cell(runs.length)
    table[:, 1] = runs.per_cell(runs.coord_sum(0)) + y0 * table[:, 0]
    table[:, 2] = runs.per_cell(runs.coord_sum(1))
    if geo is not None:
        covered = geo.covered(lab, y0, y1)
        table[:, 3] = np.bincount(runs.compact(lab.ravel()[covered]), minlength=runs.n + 1)
    bg = None
    for j, name in enumerate(names):
        img = _band_of(channels[name], y0, y1, w, name)
        table[:, 4 + j] = runs.per_cell(runs.sums(img))
        if j == 0:
            bg = img.ravel()[idx][sub_bg]
        del img
    return runs.ids, table[1:], bg


def _tiled_columns(
    ids: np.ndarray,
    tot: np.ndarray,
    spots: pd.DataFrame | None,
    geo: _SpotGeometry | None,
    marker_names: Sequence[str],
    pixel_size_um: float | None,
    exo_background: float,
) -> dict[str, np.ndarray]:
    """The columns of :func:`measure_cells` from the per-label totals ``tot`` of the bands."""
    n = ids.size
    area = tot[:, 0]
    out: dict[str, np.ndarray] = {"cell_id": ids.astype(np.int64), "area_px": area}
    if pixel_size_um is not None:
        out["area_um2"] = area * pixel_size_um**2
    out["centroid_y"] = tot[:, 1] / area
    out["centroid_x"] = tot[:, 2] / area
    exo_sum = tot[:, 4]
    out["exo_mean_intensity"] = exo_sum / area
    out["exo_excess_intensity"] = exo_sum - float(exo_background) * area
    if geo is not None:
        lab_id = geo.lab_id
        pos = np.searchsorted(ids, lab_id)
        pos = np.clip(pos, 0, n - 1)
        sp_cell = np.where((lab_id > 0) & (ids[pos] == lab_id) & geo.inside, pos + 1, 0)
        _spot_sums(out, spots, sp_cell, n + 1)
        out["exo_area_fraction"] = tot[:, 3] / area
    else:
        _zero_spot_columns(out, n)
    for j, name in enumerate(marker_names):
        s = tot[:, 5 + j]
        out[f"{name}_mean_intensity"] = s / area
        out[f"{name}_integrated_intensity"] = s
    return out
