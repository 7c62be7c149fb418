"""Spots -> cells: rounded punctum pixels, :func:`assign_spots`, the disc around a punctum."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._inputs import _check_labels


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
