"""Per-cell measurement, spot-to-cell assignment, thresholds and positivity calls.

Everything here is vectorised over cells and spots, for 2D ``(Y, X)`` and 3D ``(Z, Y, X)``
label images alike. Per-cell sums use a run-length view of the labels (:class:`_Runs`): one
pass finds the runs of equal label along each row, then every channel costs one sequential
pass over the cell runs (a small numba kernel), and areas and centroids are closed-form sums
over runs; ``np.bincount`` gathers runs into cells. 12.0-13.6x faster than
``regionprops_table`` for the same columns on a 2048 x 2048, 4-channel, 923-cell image
(benchmarks/quantify.py, best of 5; 8.2x with ``np.add.reduceat`` before).

Column definitions (see ``docs/quantification.md``):

``cell_id``, ``area_px`` (pixels; voxels in 3D), ``area_um2`` (2D, pixel size known),
``volume_um3`` (3D, pixel size and z step known), ``centroid_y``, ``centroid_x`` (``centroid_z``),
``exo_spot_count`` (detected puncta whose rounded position lies in the cell),
``exo_spot_estimate`` (sum of their cluster-aware ``n_estimate``),
``exo_integrated_intensity`` (sum of the puncta's background-corrected ``intensity``),
``exo_mean_intensity`` (mean raw exosome-channel value over the cell),
``exo_excess_intensity`` (sum over the cell of exosome channel minus ``exo_background``: uptake
including dim, undetected material), ``exo_area_fraction`` (fraction of the cell's pixels within
``spot_radius_px`` of a punctum) and, with nuclei, ``exo_nuc_dist_px`` / ``exo_nuc_dist_um``
(mean distance of the cell's puncta to its nuclear centroid) and ``exo_perinuclear_index``
(that distance over the mean distance of all the cell's pixels: < 1 = perinuclear enrichment).
Per marker ``<name>_mean_intensity``, ``<name>_integrated_intensity`` (raw sum) and, with
nuclei, ``<name>_nuclear_mean``, ``<name>_cytoplasmic_mean``, ``<name>_nc_ratio``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .config import DEFAULT_RADIUS_PX

__all__ = [
    "apply_positivity",
    "assign_spots",
    "assign_spots_tiled",
    "auto_threshold",
    "control_threshold",
    "measure_cells",
    "measure_cells_tiled",
    "mixture_threshold",
    "positivity_calls",
    "summarize_image",
]

logger = logging.getLogger(__name__)

_EXO = "exosome"


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def _check_labels(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D (Y, X) or 3D (Z, Y, X) label image, got {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); 0 is background")
    return arr


def _check_channel(arr: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == len(shape) + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == len(shape) - 1 and len(shape) == 3 and shape[0] == 1:
        a = a[None]
    if a.shape != shape:
        raise ValueError(f"channel {name!r} has shape {a.shape} but the labels have shape {shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"channel {name!r} must be real numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"channel {name!r} contains NaN or infinite pixels")
    return a


def _channels_dict(channels: Any, resolved: Any) -> dict[str, np.ndarray]:
    """Turn a mapping, or an ``ImageData`` plus ``ResolvedChannels``, into name -> array."""
    if isinstance(channels, Mapping):
        return dict(channels)
    if hasattr(channels, "data") and hasattr(channels, "channel_names"):
        if resolved is None:
            raise ValueError(
                "measure_cells got an ImageData: pass resolved=cfg.channels.resolve(...)"
            )
        data = np.asarray(channels.data)
        if data.ndim != 4:
            raise ValueError(f"ImageData.data must be (C, Z, Y, X), got shape {data.shape}")
        out: dict[str, np.ndarray] = {}
        if resolved.exosome is not None:
            out[_EXO] = data[resolved.exosome]
        for name, idx in resolved.markers.items():
            out[name] = data[idx]
        return out
    raise ValueError(
        "channels must be a dict name -> (Z, Y, X) array or an ImageData, got "
        f"{type(channels).__name__}"
    )


def _squeeze_like(arr: np.ndarray, ndim: int) -> np.ndarray:
    if arr.ndim == 3 and ndim == 2 and arr.shape[0] == 1:
        return arr[0]
    return arr


class _Runs:
    """Run-length view of a label image: maximal runs of equal label (and equal nucleus mask)
    along the last axis, never crossing a row.

    Per-cell sums become sums over runs (a few hundred thousand instead of millions of
    pixels): one pass per channel over the cell runs, and closed-form coordinate sums.

    Attributes
    ----------
    start : (R,) intp
        Flat index of each run's first pixel (cell runs only; background runs dropped).
    _end : (R,) intp
        Flat index one past each run's last pixel.
    length : (R,) float64
        Pixels per run.
    cell : (R,) intp
        Compact cell index of each run (1..N).
    ids : (N,) int
        Original label of each compact index.
    nuclear : (R,) bool or None
        Whether the run lies in the nucleus mask.
    """

    def __init__(self, lab: np.ndarray, nuc_mask: np.ndarray | None) -> None:
        self.shape = lab.shape
        flat = lab.ravel()
        size = flat.size
        width = lab.shape[-1]
        change = np.empty(size, dtype=bool)
        if size:
            change[0] = True
            np.not_equal(flat[1:], flat[:-1], out=change[1:])
            change[::width] = True
            if nuc_mask is not None:
                change[1:] |= nuc_mask[1:] != nuc_mask[:-1]
        start = np.flatnonzero(change)
        del change
        run_lab = flat[start]
        fg = run_lab > 0
        self.start = start[fg]
        end = np.append(start[1:], size)[fg]
        self.length = (end - self.start).astype(np.float64)
        self._end = end
        lab_fg = run_lab[fg]
        self.ids = np.unique(lab_fg)
        self.n = int(self.ids.size)
        mx = int(self.ids[-1]) if self.n else 0
        self._lut = None
        if mx <= 4 * size + 1024:
            self._lut = np.zeros(mx + 1, dtype=np.intp)
            self._lut[self.ids] = np.arange(1, self.n + 1)
        self.cell = self.compact(lab_fg)
        self.nuclear = None if nuc_mask is None else nuc_mask[self.start]

    def compact(self, labels: np.ndarray) -> np.ndarray:
        """Compact index (0 = background, 1..N) of label values."""
        labels = np.asarray(labels)
        if self._lut is not None:
            out = np.zeros(labels.shape, dtype=np.intp)
            ok = (labels > 0) & (labels < self._lut.size)
            out[ok] = self._lut[labels[ok]]
            return out
        pos = np.searchsorted(self.ids, labels)
        pos = np.clip(pos, 0, max(self.n - 1, 0))
        hit = (self.ids[pos] == labels) & (labels > 0) if self.n else np.zeros(labels.shape, bool)
        return np.where(hit, pos + 1, 0).astype(np.intp)

    def per_cell(self, run_values: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
        """Sum of per-run values for each compact cell index, ``(N + 1,)`` float64."""
        if select is None:
            return np.bincount(self.cell, weights=run_values, minlength=self.n + 1)
        return np.bincount(self.cell[select], weights=run_values[select], minlength=self.n + 1)

    def coord_sum(self, axis: int) -> np.ndarray:
        """Sum over each run of the pixel coordinate along ``axis`` (float64)."""
        ndim = len(self.shape)
        if axis == ndim - 1:
            x0 = (self.start % self.shape[-1]).astype(np.float64)
            return self.length * x0 + 0.5 * self.length * (self.length - 1.0)
        stride = int(np.prod(self.shape[axis + 1 :]))
        c = (self.start // stride) % self.shape[axis]
        return self.length * c

    def sums(self, image: np.ndarray) -> np.ndarray:
        """Sum of ``image`` over each cell run (float64), one sequential pass over the cell
        pixels (background runs are skipped)."""
        flat = np.ascontiguousarray(image).ravel()
        if flat.size == 0 or self.start.size == 0:
            return np.zeros(self.start.size)
        if flat.dtype.kind == "b":
            flat = flat.view(np.uint8)
        out = np.empty(self.start.size, dtype=np.float64)
        _run_sum_kernel()(flat, self.start, self._end, out)
        return out


@functools.cache
def _run_sum_kernel() -> Any:
    """Compiled ``out[i] = sum(flat[start[i]:end[i]])`` (int64 accumulator for integer
    images: exact; float64 for float images).

    Hand-written because numpy has no segment sum that skips the gaps between segments
    (``np.add.reduceat`` also sums every background run and costs ~3x more on a 2048 x 2048
    image); numba is already installed as a dependency of skan. Compiled on first use and
    cached on disk.
    """
    from ._numba import njit_cached

    def run_sums(flat, start, end, out):  # pragma: no cover - compiled
        for i in range(start.size):
            acc = 0  # int64 for integer images, float64 for float ones
            for j in range(start[i], end[i]):
                acc += flat[j]
            out[i] = acc

    return njit_cached(run_sums, nogil=True, fastmath=True)


# --------------------------------------------------------------------------------------------
# spots -> cells
# --------------------------------------------------------------------------------------------
def _spot_pixels(spots: pd.DataFrame, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Rounded integer positions ``(N, ndim)`` and an in-image mask ``(N,)``."""
    ndim = len(shape)
    cols = ["z", "y", "x"] if ndim == 3 else ["y", "x"]
    missing = [c for c in cols if c not in spots.columns]
    if missing:
        raise ValueError(
            f"spots table lacks column(s) {missing} needed for {ndim}D labels "
            f"(has {list(spots.columns)})"
        )
    pos = spots[cols].to_numpy(dtype=float)
    if not np.isfinite(pos).all():
        raise ValueError("spots table has NaN or infinite coordinates")
    ip = np.floor(pos + 0.5).astype(np.intp)
    inside = np.all((ip >= 0) & (ip < np.asarray(shape)), axis=1)
    return ip, inside


def assign_spots(spots: pd.DataFrame, cells: np.ndarray) -> pd.DataFrame:
    """Give every punctum the label of the cell under its rounded position.

    Parameters
    ----------
    spots : pandas.DataFrame
        Columns ``y``, ``x`` (and ``z`` for 3D labels), pixel coordinates.
    cells : (Y, X) or (Z, Y, X) int ndarray
        Cell labels, 0 = background.

    Returns
    -------
    pandas.DataFrame
        A copy of ``spots`` with an int64 ``cell_id`` column (0 = outside every cell or outside
        the image).
    """
    lab = _check_labels(cells, "cells")
    if not isinstance(spots, pd.DataFrame):
        raise ValueError(f"spots must be a pandas DataFrame, got {type(spots).__name__}")
    out = spots.copy()
    if len(out) == 0:
        out["cell_id"] = pd.Series(dtype=np.int64)
        return out
    ip, inside = _spot_pixels(out, lab.shape)
    cid = np.zeros(len(out), dtype=np.int64)
    if inside.any():
        cid[inside] = lab[tuple(ip[inside].T)]
    out["cell_id"] = cid
    return out


def _disc_offsets(radius: float, ndim: int) -> np.ndarray:
    r = max(float(radius), 0.5)
    n = int(np.floor(r))
    grids = np.meshgrid(*[np.arange(-n, n + 1)] * ndim, indexing="ij")
    off = np.stack([g.ravel() for g in grids], axis=1)
    return off[(off**2).sum(axis=1) <= r * r + 1e-9]


# --------------------------------------------------------------------------------------------
# per-cell measurement
# --------------------------------------------------------------------------------------------
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

    runs = _Runs(lab, nuc_mask)
    ids, n = runs.ids, runs.n
    axes = ("z", "y", "x") if ndim == 3 else ("y", "x")
    cols = _empty_columns(ndim, marker_names, pixel_size_um, z_step_um, nuclei is not None)
    if n == 0:
        logger.info("no cells in the label image")
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    m1 = n + 1

    area = runs.per_cell(runs.length)
    out: dict[str, np.ndarray] = {"cell_id": ids.astype(np.int64), "area_px": area[1:]}
    if pixel_size_um is not None and ndim == 2:
        out["area_um2"] = area[1:] * pixel_size_um**2
    if pixel_size_um is not None and ndim == 3 and z_step_um is not None:
        out["volume_um3"] = area[1:] * pixel_size_um**2 * z_step_um

    # centroids from the runs: every run lies on one image row, so its coordinate sums are
    # closed-form (no per-pixel coordinate arrays)
    for a, name in enumerate(axes):
        out[f"centroid_{name}"] = runs.per_cell(runs.coord_sum(a))[1:] / area[1:]

    # ---- exosome channel
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

    if spots is None or len(spots) == 0:
        zero = np.zeros(n)
        out["exo_spot_count"] = zero.astype(np.int64)
        out["exo_spot_estimate"] = zero.copy()
        out["exo_integrated_intensity"] = zero.copy()
        out["exo_area_fraction"] = zero.copy()
        sp_pos = np.empty((0, ndim), dtype=np.intp)
        sp_cell = np.empty(0, dtype=np.intp)
    else:
        ip, inside = _spot_pixels(spots, lab.shape)
        sp_cell = np.zeros(len(spots), dtype=np.intp)
        sp_cell[inside] = runs.compact(lab[tuple(ip[inside].T)])
        sp_pos = spots[list(axes)].to_numpy(dtype=float)
        out["exo_spot_count"] = np.bincount(sp_cell, minlength=m1)[1:].astype(np.int64)
        est = spots["n_estimate"].to_numpy(float) if "n_estimate" in spots else np.ones(len(spots))
        out["exo_spot_estimate"] = np.bincount(sp_cell, weights=est, minlength=m1)[1:]
        inten = spots["intensity"].to_numpy(float) if "intensity" in spots else np.zeros(len(spots))
        out["exo_integrated_intensity"] = np.bincount(sp_cell, weights=inten, minlength=m1)[1:]
        # area fraction: pixels within spot_radius_px of any punctum
        off = _disc_offsets(spot_radius_px, ndim)
        pix = ip[inside][:, None, :] + off[None]
        ok = np.all((pix >= 0) & (pix < np.asarray(lab.shape)), axis=2)
        covered = np.unique(np.ravel_multi_index(tuple(pix[ok].T), lab.shape))
        cov = np.bincount(runs.compact(lab.ravel()[covered]), minlength=m1).astype(np.float64)
        out["exo_area_fraction"] = cov[1:] / area[1:]

    # ---- nuclei: perinuclear distance and nuclear / cytoplasmic compartments
    if nuc_mask is not None:
        rn = runs.nuclear
        n_area = runs.per_cell(runs.length, rn)
        has_nuc = n_area[1:] > 0
        ncent = np.full((ndim, m1), np.nan)
        for a in range(ndim):
            with np.errstate(invalid="ignore", divide="ignore"):
                ncent[a] = runs.per_cell(runs.coord_sum(a), rn) / n_area
        # mean distance of every cell pixel to its nuclear centroid (normaliser)
        cell_px = np.flatnonzero(lab.ravel() > 0)
        cp_lab = runs.compact(lab.ravel()[cell_px])
        cc = np.unravel_index(cell_px, lab.shape)
        d2 = np.zeros(cell_px.size)
        for a in range(ndim):
            d2 += (cc[a] - ncent[a][cp_lab]) ** 2
        del cc
        ok_px = np.isfinite(d2)
        mean_pix_d = np.bincount(cp_lab[ok_px], weights=np.sqrt(d2[ok_px]), minlength=m1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_pix_d = mean_pix_d / area
        del d2, cp_lab, cell_px
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
        cyto_area = area - n_area

    for name, img in markers.items():
        run_sum = runs.sums(img)
        s = runs.per_cell(run_sum)
        out[f"{name}_mean_intensity"] = s[1:] / area[1:]
        out[f"{name}_integrated_intensity"] = s[1:]
        if nuc_mask is not None:
            ns = runs.per_cell(run_sum, runs.nuclear)
            with np.errstate(invalid="ignore", divide="ignore"):
                nm = np.where(n_area > 0, ns / n_area, np.nan)
                cm = np.where(cyto_area > 0, (s - ns) / cyto_area, np.nan)
                out[f"{name}_nuclear_mean"] = nm[1:]
                out[f"{name}_cytoplasmic_mean"] = cm[1:]
                out[f"{name}_nc_ratio"] = np.where(cm[1:] > 0, nm[1:] / cm[1:], np.nan)

    df = pd.DataFrame(out)
    return df[[c for c in cols if c in df.columns]]


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
    spot_radius_px: float = 1.8,
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
    from .progress import Cancelled

    if cells.ndim != 2:
        raise ValueError(f"tiled measurement takes 2D (Y, X) labels, got shape {cells.shape}")
    shape = tuple(int(v) for v in cells.shape)
    h, w = shape
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

    def band_of(a: Any, y0: int, y1: int) -> np.ndarray:
        part = a[0, y0:y1] if a.ndim == 3 else a[y0:y1]
        return _check_channel(np.asarray(part, dtype=np.float32), (y1 - y0, w), name)

    has_spots = spots is not None and len(spots) > 0
    if has_spots:
        ip, inside = _spot_pixels(spots, shape)
        off = _disc_offsets(spot_radius_px, 2)
        reach = int(np.abs(off[:, 0]).max())
        lab_id = (
            spots["cell_id"].to_numpy(np.int64)
            if "cell_id" in spots
            else assign_spots_tiled(spots, cells, band_rows=band_rows)["cell_id"].to_numpy()
        )
    step_bg = max(1, h * w // 65_536)  # measure_cells' background sample
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    bg_parts: list[np.ndarray] = []
    bands = _bands(h, band_rows)
    n_val = 4 + len(names)  # area, y sum, x sum, covered, channel sums
    for k, (y0, y1) in enumerate(bands):
        if cancel is not None and cancel():
            raise Cancelled("measurement cancelled")
        if progress is not None:
            progress(k / len(bands), "per-cell measurement")
        lab = _check_labels(np.asarray(cells[y0:y1]), "cells")
        runs = _Runs(lab, None)
        first = -(-y0 * w // step_bg) * step_bg
        idx = np.arange(first, y1 * w, step_bg, dtype=np.int64) - y0 * w
        sub_bg = lab.ravel()[idx] == 0
        table = np.zeros((runs.n + 1, n_val))
        table[:, 0] = runs.per_cell(runs.length)
        table[:, 1] = runs.per_cell(runs.coord_sum(0)) + y0 * table[:, 0]
        table[:, 2] = runs.per_cell(runs.coord_sum(1))
        if has_spots:
            sel = inside & (ip[:, 0] >= y0 - reach) & (ip[:, 0] < y1 + reach)
            pix = ip[sel][:, None, :] + off[None]
            ok = np.all((pix >= 0) & (pix < np.asarray(shape)), axis=2)
            ok &= (pix[..., 0] >= y0) & (pix[..., 0] < y1)
            px = pix[ok]
            covered = np.unique(np.ravel_multi_index((px[:, 0] - y0, px[:, 1]), lab.shape))
            table[:, 3] = np.bincount(runs.compact(lab.ravel()[covered]), minlength=runs.n + 1)
        for j, name in enumerate(names):
            img = band_of(channels[name], y0, y1)
            table[:, 4 + j] = runs.per_cell(runs.sums(img))
            if j == 0:
                bg_parts.append(img.ravel()[idx][sub_bg])
            del img
        keys.append(runs.ids)
        vals.append(table[1:])
        del lab, runs
    cols = _empty_columns(2, marker_names, pixel_size_um, None, False)
    all_ids = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if all_ids.size == 0:
        logger.info("no cells in the label image")
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    ids, inv = np.unique(all_ids, return_inverse=True)
    n = ids.size
    allv = np.concatenate(vals)
    tot = np.stack([np.bincount(inv, weights=allv[:, j], minlength=n) for j in range(n_val)], 1)
    area = tot[:, 0]
    out: dict[str, np.ndarray] = {"cell_id": ids.astype(np.int64), "area_px": area}
    if pixel_size_um is not None:
        out["area_um2"] = area * pixel_size_um**2
    out["centroid_y"] = tot[:, 1] / area
    out["centroid_x"] = tot[:, 2] / area
    exo_sum = tot[:, 4]
    out["exo_mean_intensity"] = exo_sum / area
    if exo_background is None:
        sub = np.concatenate(bg_parts) if bg_parts else np.zeros(0, np.float32)
        exo_background = float(np.median(sub)) if sub.size else 0.0
    out["exo_excess_intensity"] = exo_sum - float(exo_background) * area
    if has_spots:
        pos = np.searchsorted(ids, lab_id)
        pos = np.clip(pos, 0, n - 1)
        sp_cell = np.where((lab_id > 0) & (ids[pos] == lab_id) & inside, pos + 1, 0)
        m1 = n + 1
        out["exo_spot_count"] = np.bincount(sp_cell, minlength=m1)[1:].astype(np.int64)
        est = spots["n_estimate"].to_numpy(float) if "n_estimate" in spots else np.ones(len(spots))
        out["exo_spot_estimate"] = np.bincount(sp_cell, weights=est, minlength=m1)[1:]
        inten = spots["intensity"].to_numpy(float) if "intensity" in spots else np.zeros(len(spots))
        out["exo_integrated_intensity"] = np.bincount(sp_cell, weights=inten, minlength=m1)[1:]
        out["exo_area_fraction"] = tot[:, 3] / area
    else:
        zero = np.zeros(n)
        out["exo_spot_count"] = zero.astype(np.int64)
        out["exo_spot_estimate"] = zero.copy()
        out["exo_integrated_intensity"] = zero.copy()
        out["exo_area_fraction"] = zero.copy()
    for j, name in enumerate(marker_names):
        s = tot[:, 5 + j]
        out[f"{name}_mean_intensity"] = s / area
        out[f"{name}_integrated_intensity"] = s
    df = pd.DataFrame(out)
    return df[[c for c in cols if c in df.columns]]


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


# --------------------------------------------------------------------------------------------
# thresholds and positivity
# --------------------------------------------------------------------------------------------
def auto_threshold(values: np.ndarray, *, log: bool = True, nbins: int = 256) -> float:
    """Two-population threshold: Otsu's method on log values.

    Marker intensities of negative and positive cells are roughly log-normal, so the split is
    found on ``log(value - min + small)``. Returns ``+inf`` (nobody positive) when fewer than
    two distinct finite values exist.

    Parameters
    ----------
    values : (N,) array
        Per-cell metric.
    log : bool, default True
        Work on log values (False: linear Otsu).
    nbins : int, default 256
        Histogram bins.

    Returns
    -------
    float
        Threshold in the units of ``values``; positive means ``value >= threshold``.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or v.min() == v.max():
        return float("inf")
    if log:
        lo = v.min()
        eps = max((np.median(v) - lo) * 1e-3, 1e-12)
        t = np.log(v - lo + eps)
    else:
        lo, eps = 0.0, 0.0
        t = v
    hist, edges = np.histogram(t, bins=nbins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(np.argmax(between[:-1]))
    thr_t = edges[k + 1]
    return float(np.exp(thr_t) + lo - eps) if log else float(thr_t)


#: fewer cells than this in an ``auto`` fit: the threshold is reported with a warning
MIN_AUTO_CELLS = 100
#: a two-population fit is accepted when Ashman's D between its components is at least this
#: (D > 2: the two populations are cleanly separated) ...
MIN_SEPARATION_D = 2.0
#: ... and the smaller population holds at least this fraction of the cells
MIN_MINOR_FRACTION = 0.02
#: fallback when no second population separates: median + this many robust SD (log scale)
FALLBACK_ROBUST_SD = 3.0


def _em_two_gaussians(t: np.ndarray, iters: int = 300) -> tuple[np.ndarray, ...]:
    """1D two-component Gaussian mixture by expectation-maximisation.

    Started from the lower and upper halves of the sorted values. Returns weights, means,
    standard deviations (components sorted by mean) and the log-likelihood.
    """
    t = np.sort(t)
    n = t.size
    k = n // 2
    w = np.array([0.5, 0.5])
    mu = np.array([t[:k].mean(), t[k:].mean()])
    floor = max(1e-3 * float(t.std()), 1e-9)
    sd = np.maximum(np.array([t[:k].std(), t[k:].std()]), floor)
    ll_old = -np.inf
    ll = -np.inf
    for _ in range(iters):
        dens = w / (sd * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((t[:, None] - mu) / sd) ** 2)
        tot = dens.sum(axis=1) + 1e-300
        ll = float(np.log(tot).sum())
        resp = dens / tot[:, None]
        nk = np.maximum(resp.sum(axis=0), 1e-12)
        w = nk / n
        mu = (resp * t[:, None]).sum(axis=0) / nk
        sd = np.maximum(np.sqrt((resp * (t[:, None] - mu) ** 2).sum(axis=0) / nk), floor)
        if ll - ll_old < 1e-9 * max(1.0, abs(ll)):
            break
        ll_old = ll
    order = np.argsort(mu)
    return w[order], mu[order], sd[order], ll


def mixture_threshold(values: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Marker threshold from a two-population fit, with a documented fallback.

    Marker intensities of negative and positive cells are roughly log-normal, so a mixture of
    two Gaussians is fitted to ``log(value)`` (values shifted to be positive when needed).
    The fit is accepted when it separates: the two-component model beats one component by
    BIC (by more than 10), Ashman's D between the components is at least
    :data:`MIN_SEPARATION_D` and the smaller component holds at least
    :data:`MIN_MINOR_FRACTION` of the cells. The threshold is then where a cell is equally
    likely to belong to either component. Unlike Otsu's method, this does not assume two
    populations of similar size, so a run of controls (say 10 % positive cells) is not split
    in the middle of its negative population.

    When no second population separates, the cells are taken as one (negative) population and
    cells above ``median + 3 x 1.4826 x MAD`` of the log values are positive (about 0.1 % of
    a log-normal population), with a warning.

    Parameters
    ----------
    values : (N,) array
        Per-cell metric (e.g. ``cd31_mean_intensity``).

    Returns
    -------
    (float, dict)
        The threshold (positive means ``value >= threshold``; ``+inf`` when fewer than two
        distinct finite values exist) and what it was fitted on: ``rule`` (``mixture``,
        ``single_population`` or ``none``), ``n_cells``, ``separation_d``,
        ``positive_component_fraction`` and ``warnings`` (a list of sentences).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    info: dict[str, Any] = {"rule": "none", "n_cells": int(v.size), "warnings": []}
    if v.size < 2 or v.min() == v.max():
        info["warnings"].append(
            f"{v.size} cell(s) with distinct values: nobody can be called positive"
        )
        return float("inf"), info
    if v.size < MIN_AUTO_CELLS:
        info["warnings"].append(
            f"fitted on {v.size} cells (fewer than {MIN_AUTO_CELLS}): the automatic threshold "
            "is unreliable; set a fixed value or a control rule"
        )
    lo = float(v.min())
    shift = 0.0 if lo > 0 else -lo + max((np.median(v) - lo) * 1e-3, 1e-12)
    t = np.log(v + shift)
    n = t.size
    s1 = max(float(t.std()), 1e-12)
    ll1 = float(np.sum(-0.5 * ((t - t.mean()) / s1) ** 2 - np.log(s1 * np.sqrt(2 * np.pi))))
    w, mu, sd, ll2 = _em_two_gaussians(t)
    d = float(np.sqrt(2.0) * abs(mu[1] - mu[0]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2))
    dbic = (-2 * ll1 + 2 * np.log(n)) - (-2 * ll2 + 5 * np.log(n))
    info["separation_d"] = round(d, 2)
    separates = dbic > 10 and d >= MIN_SEPARATION_D and w.min() >= MIN_MINOR_FRACTION
    if separates:
        grid = np.linspace(mu[0], mu[1], 4001)
        logp = np.log(w / sd) - 0.5 * ((grid[:, None] - mu) / sd) ** 2
        above = np.flatnonzero(logp[:, 1] >= logp[:, 0])
        thr_t = grid[above[0]] if above.size else mu[1]
        info["rule"] = "mixture"
        info["positive_component_fraction"] = round(float(w[1]), 3)
        return float(np.exp(thr_t) - shift), info
    med = float(np.median(t))
    rsd = 1.4826 * float(np.median(np.abs(t - med)))
    info["rule"] = "single_population"
    info["warnings"].append(
        "no separate positive population (two-population fit: D = "
        f"{d:.2f}, needs >= {MIN_SEPARATION_D:g}): cells above median + "
        f"{FALLBACK_ROBUST_SD:g} robust SD are called positive; include positive cells in the "
        "run or set a fixed value or a control rule"
    )
    return float(np.exp(med + FALLBACK_ROBUST_SD * rsd) - shift), info


def _rule_attr(rule: Any, key: str, default: Any = None) -> Any:
    if rule is None:
        return default
    if isinstance(rule, Mapping):
        return rule.get(key, default)
    return getattr(rule, key, default)


def _metric_column(df: pd.DataFrame, prefix: str, metric: str) -> str:
    for cand in (metric, f"{prefix}_{metric}"):
        if cand in df.columns:
            return cand
    raise ValueError(
        f"positivity metric {metric!r} for {prefix!r}: neither {metric!r} nor "
        f"{prefix + '_' + metric!r} is a column of the cells table"
    )


def control_threshold(control_values: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of the control cells' values, taken as an observed value.

    numpy's ``method="higher"``: the threshold is one of the control cells' values, so with
    ``value > threshold`` at most ``100 - percentile`` % of the control cells are positive,
    also for counts with ties (an interpolated percentile would not promise that).
    """
    cv = np.asarray(control_values, dtype=float)
    cv = cv[np.isfinite(cv)]
    return float(np.percentile(cv, percentile, method="higher"))


def _threshold_for(
    rule: Any, values: np.ndarray, control_values: np.ndarray | None, what: str
) -> tuple[float, bool, dict[str, Any]]:
    """Threshold, whether the comparison is strict (``>``) or not (``>=``), and its record."""
    method = _rule_attr(rule, "method", "auto")
    if method == "fixed":
        value = _rule_attr(rule, "value")
        if value is None:
            raise ValueError(f"positivity for {what}: method 'fixed' needs a value")
        return float(value), False, {"fitted_on": "fixed value", "warnings": []}
    if method == "auto":
        thr, info = mixture_threshold(values)
        info["fitted_on"] = f"all {info['n_cells']} cells of the run"
        return thr, False, info
    if method == "control":
        if control_values is None:
            raise ValueError(
                f"positivity for {what}: method 'control' needs control cells "
                "(set positivity.control_condition and pass control_cells)"
            )
        cv = control_values[np.isfinite(control_values)]
        if cv.size == 0:
            raise ValueError(f"positivity for {what}: the control cells have no finite values")
        pct = float(_rule_attr(rule, "percentile", 95.0))
        info = {"fitted_on": f"{cv.size} control cells", "n_cells": int(cv.size), "warnings": []}
        if cv.size < MIN_AUTO_CELLS:
            info["warnings"].append(
                f"the control has {cv.size} cells (fewer than {MIN_AUTO_CELLS}): its "
                f"{pct:g}th percentile is uncertain"
            )
        return control_threshold(cv, pct), True, info
    raise ValueError(f"positivity for {what}: unknown method {method!r} (fixed, auto, control)")


def positivity_calls(
    cells_df: pd.DataFrame,
    positivity_cfg: Any = None,
    marker_names: Sequence[str] | None = None,
    control_cells: pd.DataFrame | None = None,
    *,
    marker_rules: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, dict[str, Any]]]:
    """:func:`apply_positivity` plus a record of each rule.

    Returns
    -------
    (pandas.DataFrame, dict of str to float, dict of str to dict)
        As :func:`apply_positivity`, and per readout (``"exo"``, marker names): ``method``,
        ``metric`` (the column), ``percentile`` (control rules), ``threshold``,
        ``comparison`` (``">="`` or ``">"``), ``fitted_on`` (which cells), ``rule``
        (``auto``: ``mixture`` or ``single_population``), ``n_positive``, ``n_cells`` and
        ``warnings`` (sentences, empty when all is well).
    """
    if not isinstance(cells_df, pd.DataFrame):
        raise ValueError(f"cells_df must be a pandas DataFrame, got {type(cells_df).__name__}")
    exo_rule = _rule_attr(positivity_cfg, "exosome") or {
        "method": "fixed",
        "value": 1,
        "metric": "exo_spot_count",
    }
    default_marker_rule = _rule_attr(positivity_cfg, "markers") or {
        "method": "auto",
        "metric": "mean_intensity",
    }
    if marker_names is None:
        marker_names = [
            c[: -len("_mean_intensity")]
            for c in cells_df.columns
            if c.endswith("_mean_intensity") and not c.startswith("exo_")
        ]
    out = cells_df.copy()
    thresholds: dict[str, float] = {}
    records: dict[str, dict[str, Any]] = {}
    jobs = [("exo", exo_rule)] + [
        (m, (marker_rules or {}).get(m) or default_marker_rule) for m in marker_names
    ]
    for prefix, rule in jobs:
        metric = _rule_attr(rule, "metric", "mean_intensity")
        col = _metric_column(out, prefix, metric)
        vals = out[col].to_numpy(dtype=float)
        cvals = None
        if control_cells is not None:
            if col not in control_cells.columns:
                raise ValueError(f"control cells lack column {col!r}")
            cvals = control_cells[col].to_numpy(dtype=float)
        thr, strict, info = _threshold_for(rule, vals, cvals, prefix)
        with np.errstate(invalid="ignore"):
            pos = (vals > thr if strict else vals >= thr) & np.isfinite(vals)
        out[f"{prefix}_positive"] = pos
        thresholds[prefix] = thr
        method = _rule_attr(rule, "method", "auto")
        rec: dict[str, Any] = {"method": method, "metric": col}
        if method == "control":
            rec["percentile"] = float(_rule_attr(rule, "percentile", 95.0))
        rec.update(
            threshold=thr if np.isfinite(thr) else None,
            comparison=">" if strict else ">=",
            n_positive=int(pos.sum()),
            n_cells=int(len(vals)),
        )
        rec.update({k: v for k, v in info.items() if k != "n_cells"})
        if "n_cells" in info:
            rec["n_cells_fitted"] = info["n_cells"]
        records[prefix] = rec
    return out, thresholds, records


def apply_positivity(
    cells_df: pd.DataFrame,
    positivity_cfg: Any = None,
    marker_names: Sequence[str] | None = None,
    control_cells: pd.DataFrame | None = None,
    *,
    marker_rules: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Call every cell positive or negative for uptake and for each marker.

    Parameters
    ----------
    cells_df : pandas.DataFrame
        Output of :func:`measure_cells`.
    positivity_cfg : PositivityConfig, optional
        ``.exosome`` and ``.markers`` rules (``PositivityRule``: ``method``, ``value``,
        ``metric``, ``percentile``). None: uptake = at least one punctum, markers = auto.
    marker_names : sequence of str, optional
        Default: every ``<name>`` with a ``<name>_mean_intensity`` column (exosome excluded).
    control_cells : pandas.DataFrame, optional
        Cells of the control condition (e.g. dye-only) for ``control`` rules.
    marker_rules : dict of str to PositivityRule, optional
        Per-marker rules overriding ``positivity_cfg.markers`` (``MarkerConfig.positivity``).

    Returns
    -------
    (pandas.DataFrame, dict of str to float)
        A copy with bool ``exo_positive`` and ``<name>_positive`` columns, and the threshold
        used for each (keys ``"exo"`` and the marker names). ``fixed``: ``metric >= value``;
        ``auto`` (:func:`mixture_threshold`): ``metric >= threshold``; ``control``
        (:func:`control_threshold`): ``metric >`` the percentile of the control cells.
    """
    out, thresholds, _ = positivity_calls(
        cells_df, positivity_cfg, marker_names, control_cells, marker_rules=marker_rules
    )
    return out, thresholds


def summarize_image(
    cells_df: pd.DataFrame,
    spots_df: pd.DataFrame | None,
    marker_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Image-level summary of a cells table and a spots table.

    Returns
    -------
    dict
        ``n_cells``, ``n_spots`` (all puncta, extracellular included), ``n_spots_in_cells``,
        ``mean_spots_per_cell``, ``mean_spot_estimate_per_cell``,
        ``mean_exo_integrated_intensity``, ``exo_positive_fraction`` and per marker
        ``<name>_positive_fraction`` (NaN where the column is absent or there are no cells).
    """
    n_cells = int(len(cells_df))
    n_spots = 0 if spots_df is None else int(len(spots_df))
    if spots_df is not None and "cell_id" in spots_df.columns:
        in_cells = int((spots_df["cell_id"].to_numpy() > 0).sum())
    else:
        in_cells = int(cells_df["exo_spot_count"].sum()) if "exo_spot_count" in cells_df else 0

    def mean(col: str) -> float:
        if n_cells == 0 or col not in cells_df.columns:
            return float("nan")
        return float(cells_df[col].astype(float).mean())

    if marker_names is None:
        marker_names = [
            c[: -len("_positive")]
            for c in cells_df.columns
            if c.endswith("_positive") and c != "exo_positive"
        ]
    out: dict[str, float] = {
        "n_cells": n_cells,
        "n_spots": n_spots,
        "n_spots_in_cells": in_cells,
        "mean_spots_per_cell": mean("exo_spot_count"),
        "mean_spot_estimate_per_cell": mean("exo_spot_estimate"),
        "mean_exo_integrated_intensity": mean("exo_integrated_intensity"),
        "exo_positive_fraction": mean("exo_positive"),
    }
    for name in marker_names:
        out[f"{name}_positive_fraction"] = mean(f"{name}_positive")
    return out
