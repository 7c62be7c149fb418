"""Scoring detected puncta against ground truth: one-to-one matching within a distance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MatchCounts", "SpotMatch", "match_spots"]


class MatchCounts:
    """True/false positives and negatives of a one-to-one matching.

    Subclasses hold ``n_pred`` and ``n_truth`` and say how many pairs matched (``_n_matched``);
    shared by :class:`SpotMatch` and :class:`napari_exouptake.validation.LabelMatch`.
    """

    n_pred: int
    n_truth: int

    def _n_matched(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def tp(self) -> int:
        return int(self._n_matched())

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_truth - self.tp


@dataclass(frozen=True)
class SpotMatch(MatchCounts):
    """One-to-one matching of predicted and true puncta.

    Attributes
    ----------
    pred_index, truth_index : (M,) int ndarray
        Row indices of the matched pairs.
    distances : (M,) float ndarray
        Distance of each pair, pixels.
    n_pred, n_truth : int
        Numbers of predicted and true puncta.
    """

    pred_index: np.ndarray
    truth_index: np.ndarray
    distances: np.ndarray
    n_pred: int
    n_truth: int

    def _n_matched(self) -> int:
        return self.pred_index.size

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float(self.n_truth == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_truth if self.n_truth else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        denom = self.n_pred + self.n_truth
        return 2.0 * self.tp / denom if denom else 1.0

    @property
    def mean_distance(self) -> float:
        return float(self.distances.mean()) if self.distances.size else float("nan")


def _as_points(points: Any, name: str) -> np.ndarray:
    if isinstance(points, pd.DataFrame):
        cols = [c for c in ("z", "y", "x") if c in points.columns]
        if "y" not in cols or "x" not in cols:
            raise ValueError(f"{name} table needs columns 'y' and 'x', has {list(points.columns)}")
        arr = points[cols].to_numpy(dtype=float)
    else:
        arr = np.asarray(points, dtype=float)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(
            f"{name} must be an (N, 2) or (N, 3) array of coordinates, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} coordinates contain NaN or infinite values")
    return arr


def match_spots(pred: Any, truth: Any, max_dist: float = 2.0) -> SpotMatch:
    """Match predicted to true puncta one-to-one within ``max_dist`` (minimum total distance).

    Candidate pairs come from a KD-tree (only pairs closer than ``max_dist``); each connected
    group of candidates is solved exactly with the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`), maximising the number of matches first and
    minimising the summed distance second.

    Parameters
    ----------
    pred, truth : (N, D) ndarray or DataFrame with columns ``y``, ``x`` (``z``)
        Coordinates in pixels; ``D`` must agree.
    max_dist : float, default 2.0
        Largest distance of a match, pixels.

    Returns
    -------
    SpotMatch
        Pairs plus ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = _as_points(pred, "pred")
    t = _as_points(truth, "truth")
    if len(p) and len(t) and p.shape[1] != t.shape[1]:
        raise ValueError(f"pred has {p.shape[1]} coordinates per point, truth {t.shape[1]}")
    if max_dist <= 0:
        raise ValueError(f"max_dist must be > 0, got {max_dist}")
    none = np.empty(0, dtype=np.intp)
    if len(p) == 0 or len(t) == 0:
        return SpotMatch(none, none, np.empty(0), len(p), len(t))
    sdm = cKDTree(p).sparse_distance_matrix(cKDTree(t), max_dist, output_type="coo_matrix")
    rows, cols, d = sdm.row, sdm.col, sdm.data
    # exact coincidences are stored as explicit zeros by some scipy versions; keep them
    if rows.size == 0:
        return SpotMatch(none, none, np.empty(0), len(p), len(t))
    from scipy.sparse import coo_matrix

    n_p, n_t = len(p), len(t)
    graph = coo_matrix((np.ones(rows.size), (rows, n_p + cols)), shape=(n_p + n_t, n_p + n_t))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[rows]
    # components with a single candidate pair are matched directly (the common case)
    counts = np.bincount(pair_comp, minlength=comp.max() + 1)
    single = counts[pair_comp] == 1
    out_p = [rows[single]]
    out_t = [cols[single]]
    out_d = [d[single]]
    multi = np.unique(pair_comp[~single])
    if multi.size:
        order = np.argsort(pair_comp, kind="stable")
        starts = np.searchsorted(pair_comp[order], multi)
        ends = np.searchsorted(pair_comp[order], multi, side="right")
        big = 1e6 * max_dist
        # loop over the dense groups only (validation, not a hot path)
        for s, e in zip(starts, ends, strict=True):
            sel = order[s:e]
            ur, ir = np.unique(rows[sel], return_inverse=True)
            uc, ic = np.unique(cols[sel], return_inverse=True)
            cost = np.full((ur.size, uc.size), big)
            # maximise matches first: each valid pair costs distance - big/2 (< any invalid)
            cost[ir, ic] = d[sel] - big / 2
            ri, ci = linear_sum_assignment(cost)
            ok = cost[ri, ci] < 0
            out_p.append(ur[ri[ok]])
            out_t.append(uc[ci[ok]])
            out_d.append(cost[ri[ok], ci[ok]] + big / 2)
    pi = np.concatenate(out_p).astype(np.intp)
    ti = np.concatenate(out_t).astype(np.intp)
    dd = np.concatenate(out_d)
    return SpotMatch(pi, ti, dd, n_p, n_t)
