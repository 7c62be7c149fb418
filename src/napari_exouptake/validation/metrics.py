"""Accuracy against ground truth: puncta, segmentation, per-cell counts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..results import squeeze_plane
from ..spots import MatchCounts, match_spots

log = logging.getLogger(__name__)

#: Distance (pixels) within which a detected punctum matches a true one.
SPOT_MATCH_PX = 2.0


# --------------------------------------------------------------------------------------------
# segmentation: IoU matching and average precision
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelMatch(MatchCounts):
    """One-to-one matching of true and predicted objects at an IoU threshold.

    Attributes
    ----------
    truth_ids, pred_ids : (M,) int ndarray
        Label values of the matched pairs.
    iou : (M,) float ndarray
        Intersection over union of each pair.
    n_truth, n_pred : int
        Numbers of objects (distinct non-zero labels) in each image.
    threshold : float
        IoU threshold used.
    """

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray
    n_truth: int
    n_pred: int
    threshold: float

    def _n_matched(self) -> int:
        return self.truth_ids.size

    @property
    def ap(self) -> float:
        """Cellpose's average precision ``TP / (TP + FP + FN)`` (1.0 when both are empty)."""
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else 1.0


def _check_label_pair(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth)
    p = np.asarray(pred)
    for arr, name in ((t, "truth"), (p, "pred")):
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} labels must be an integer array, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} labels must be >= 0 (0 = background)")
    if t.shape != p.shape:
        raise ValueError(f"truth labels have shape {t.shape} but pred labels {p.shape}")
    return t, p


def _overlaps(
    truth: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse overlap table: (truth id, pred id, IoU) for every overlapping pair, + id lists."""
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    t_ids, t_area = np.unique(t[t > 0], return_counts=True)
    p_ids, p_area = np.unique(p[p > 0], return_counts=True)
    both = (t > 0) & (p > 0)
    base = int(p.max()) + 1 if p.size else 1
    codes, inter = np.unique(t[both] * base + p[both], return_counts=True)
    pair_t = codes // base
    pair_p = codes % base
    area_t = t_area[np.searchsorted(t_ids, pair_t)]
    area_p = p_area[np.searchsorted(p_ids, pair_p)]
    iou = inter / (area_t + area_p - inter)
    return pair_t, pair_p, iou, t_ids, p_ids


def match_labels(truth: Any, pred: Any, threshold: float = 0.5) -> LabelMatch:
    """Match objects of two label images one-to-one at ``IoU >= threshold``.

    IoUs come from one ``np.unique`` over the pixel pairs (no loop over objects). For
    ``threshold > 0.5`` every object has at most one partner; ties and lower thresholds are
    resolved by maximising the summed IoU (Hungarian algorithm on the contested objects only).

    Parameters
    ----------
    truth, pred : (Y, X) or (Z, Y, X) int ndarray
        Label images of equal shape, 0 = background.
    threshold : float, default 0.5
        IoU threshold in (0, 1].

    Returns
    -------
    LabelMatch
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {threshold}")
    t, p = _check_label_pair(truth, pred)
    pair_t, pair_p, iou, t_ids, p_ids = _overlaps(t, p)
    keep = iou >= threshold - 1e-12
    pair_t, pair_p, iou = pair_t[keep], pair_p[keep], iou[keep]
    _, t_inv, t_cnt = np.unique(pair_t, return_inverse=True, return_counts=True)
    _, p_inv, p_cnt = np.unique(pair_p, return_inverse=True, return_counts=True)
    contested = (t_cnt[t_inv] > 1) | (p_cnt[p_inv] > 1)
    out_t, out_p, out_i = [pair_t[~contested]], [pair_p[~contested]], [iou[~contested]]
    if contested.any():
        from scipy.optimize import linear_sum_assignment

        ct, cp, ci = pair_t[contested], pair_p[contested], iou[contested]
        ut, it = np.unique(ct, return_inverse=True)
        up, ip = np.unique(cp, return_inverse=True)
        cost = np.zeros((ut.size, up.size))
        cost[it, ip] = -ci
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < 0
        out_t.append(ut[r[ok]])
        out_p.append(up[c[ok]])
        out_i.append(-cost[r[ok], c[ok]])
    return LabelMatch(
        truth_ids=np.concatenate(out_t).astype(np.int64),
        pred_ids=np.concatenate(out_p).astype(np.int64),
        iou=np.concatenate(out_i).astype(float),
        n_truth=int(t_ids.size),
        n_pred=int(p_ids.size),
        threshold=float(threshold),
    )


def average_precision(
    truth: Any, pred: Any, thresholds: Sequence[float] = (0.5, 0.75, 0.9)
) -> np.ndarray:
    """Cellpose/StarDist average precision ``TP / (TP + FP + FN)`` at each IoU threshold.

    Parameters
    ----------
    truth, pred : (Y, X) or (Z, Y, X) int ndarray
        Label images of equal shape, 0 = background.
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    (len(thresholds),) float ndarray
    """
    return np.array([match_labels(truth, pred, thr).ap for thr in thresholds], dtype=float)


# --------------------------------------------------------------------------------------------
# puncta and per-cell counts against ground truth
# --------------------------------------------------------------------------------------------
def spot_accuracy(
    pred: pd.DataFrame, truth: pd.DataFrame, max_dist: float = SPOT_MATCH_PX
) -> pd.DataFrame:
    """Punctum detection accuracy per image and pooled.

    Parameters
    ----------
    pred, truth : pandas.DataFrame
        Tables with ``image``, ``y``, ``x`` (and ``z`` for 3D), pixel coordinates.
    max_dist : float, default 2.0
        Largest distance of a match, pixels (one-to-one matching,
        :func:`napari_exouptake.spots.match_spots`).

    Returns
    -------
    pandas.DataFrame
        One row per image plus a last row ``image == "ALL"`` (pooled counts), columns ``image``,
        ``n_pred``, ``n_truth``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``mean_distance_px``.
    """
    for df, name in ((pred, "pred"), (truth, "truth")):
        missing = {"image", "y", "x"} - set(df.columns)
        if missing:
            raise ValueError(f"{name} spots table lacks column(s) {sorted(missing)}")
    images = sorted(set(pred["image"].astype(str)) | set(truth["image"].astype(str)))
    pg = dict(list(pred.groupby(pred["image"].astype(str))))
    tg = dict(list(truth.groupby(truth["image"].astype(str))))
    empty = pd.DataFrame({"y": [], "x": []})
    rows = []
    dist_sum = 0.0
    for name in images:  # one matching per image (not per spot)
        p = pg.get(name, empty)
        t = tg.get(name, empty)
        cols = ["z", "y", "x"] if "z" in p.columns and "z" in t.columns else ["y", "x"]
        m = match_spots(p[cols], t[cols], max_dist)
        dist_sum += float(m.distances.sum())
        rows.append(
            {
                "image": name,
                "n_pred": m.n_pred,
                "n_truth": m.n_truth,
                "tp": m.tp,
                "fp": m.fp,
                "fn": m.fn,
                "mean_distance_px": m.mean_distance,
            }
        )
    table = pd.DataFrame(
        rows, columns=["image", "n_pred", "n_truth", "tp", "fp", "fn", "mean_distance_px"]
    )
    tot = table[["n_pred", "n_truth", "tp", "fp", "fn"]].sum()
    pooled = {
        "image": "ALL",
        **{k: int(v) for k, v in tot.items()},
        "mean_distance_px": dist_sum / tot["tp"] if tot["tp"] else float("nan"),
    }
    table = pd.concat([table, pd.DataFrame([pooled])], ignore_index=True)
    n_p, n_t, tp = table["n_pred"], table["n_truth"], table["tp"]
    table["precision"] = np.where(n_p > 0, tp / n_p.where(n_p > 0, 1), (n_t == 0).astype(float))
    table["recall"] = np.where(n_t > 0, tp / n_t.where(n_t > 0, 1), (n_p == 0).astype(float))
    denom = n_p + n_t
    table["f1"] = np.where(denom > 0, 2 * tp / denom.where(denom > 0, 1), 1.0)
    return table


def count_correlation(pred_counts: Any, truth_counts: Any) -> dict[str, float]:
    """Agreement of per-cell punctum counts over matched cells.

    Parameters
    ----------
    pred_counts, truth_counts : (N,) array-like of numbers
        Counts of the same N cells.

    Returns
    -------
    dict
        ``n_cells``, ``pearson_r`` (NaN when either side is constant or N < 2),
        ``mean_abs_error``, ``bias`` (mean of pred - truth), ``exact_fraction``.
    """
    p = np.asarray(pred_counts, dtype=float).ravel()
    t = np.asarray(truth_counts, dtype=float).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred_counts has {p.size} values but truth_counts {t.size}")
    n = int(p.size)
    if n == 0:
        return {
            "n_cells": 0,
            "pearson_r": float("nan"),
            "mean_abs_error": float("nan"),
            "bias": float("nan"),
            "exact_fraction": float("nan"),
        }
    if n >= 2 and p.std() > 0 and t.std() > 0:
        r = float(np.corrcoef(p, t)[0, 1])
    else:
        r = float("nan")
    return {
        "n_cells": n,
        "pearson_r": r,
        "mean_abs_error": float(np.abs(p - t).mean()),
        "bias": float((p - t).mean()),
        "exact_fraction": float((p == t).mean()),
    }


LabelSource = Mapping[str, Any] | Callable[[str], Any]


def _get_labels(source: LabelSource | None, name: str) -> np.ndarray | None:
    if source is None:
        return None
    if callable(source):
        lab = source(name)
    else:
        lab = source.get(name)
    if lab is None:
        return None
    if isinstance(lab, (str, Path)):
        from ..io import read_labels

        lab = read_labels(lab)
    return squeeze_plane(np.asarray(lab))


def accuracy_against_truth(
    cells: pd.DataFrame | None,
    spots: pd.DataFrame | None,
    *,
    truth_spots: pd.DataFrame | None = None,
    truth_cells: pd.DataFrame | None = None,
    pred_labels: LabelSource | None = None,
    truth_labels: LabelSource | None = None,
    labels_given: bool = False,
    max_dist: float = SPOT_MATCH_PX,
) -> dict[str, Any]:
    """Accuracy of one run against ground truth.

    Parameters
    ----------
    cells, spots : pandas.DataFrame or None
        The run's ``cells.csv`` (``image``, ``cell_id``, ``exo_spot_count``) and ``spots.csv``.
    truth_spots : pandas.DataFrame, optional
        ``image``, ``y``, ``x`` (``z``) of the true puncta (simulator ``truth_spots.csv``).
    truth_cells : pandas.DataFrame, optional
        ``image``, ``cell_id``, ``n_spots`` (simulator ``truth_cells.csv``).
    pred_labels, truth_labels : mapping or callable image name -> label array or path, optional
        Cell labels of the run and the truth. Without them cells are matched by ``cell_id``
        (correct only when the run used the true labels).
    labels_given : bool
        The run used the true labels (segmentation AP is then 1 by construction and is
        reported as such).
    max_dist : float
        Punctum match distance, pixels.

    Returns
    -------
    dict
        ``spots`` (the :func:`spot_accuracy` table) and ``spot_f1``, ``spot_precision``,
        ``spot_recall`` (pooled); ``count`` (:func:`count_correlation` of ``exo_spot_count``
        against ``n_spots``); ``segmentation_ap50`` (mean over images) and
        ``segmentation_ap50_per_image``; keys are absent when the inputs for them are.
    """
    out: dict[str, Any] = {"labels_given": bool(labels_given)}
    if spots is not None and truth_spots is not None:
        table = spot_accuracy(spots, truth_spots, max_dist=max_dist)
        pooled = table.iloc[-1]
        out.update(
            spots=table,
            spot_f1=float(pooled["f1"]),
            spot_precision=float(pooled["precision"]),
            spot_recall=float(pooled["recall"]),
        )
    if cells is None or truth_cells is None:
        return out
    if "n_spots" not in truth_cells.columns or "exo_spot_count" not in cells.columns:
        return out
    images = sorted(set(cells["image"].astype(str)) & set(truth_cells["image"].astype(str)))
    ap: dict[str, float] = {}
    pairs = []
    for name in images:  # one IoU table per image
        pl = _get_labels(pred_labels, name) if not labels_given else None
        tl = _get_labels(truth_labels, name)
        if pl is not None and tl is not None and pl.shape == tl.shape:
            m = match_labels(tl, pl, 0.5)
            ap[name] = m.ap
            pairs.append(
                pd.DataFrame({"image": name, "truth_id": m.truth_ids, "pred_id": m.pred_ids})
            )
        else:
            ids = truth_cells.loc[truth_cells["image"].astype(str) == name, "cell_id"].to_numpy()
            pairs.append(pd.DataFrame({"image": name, "truth_id": ids, "pred_id": ids}))
            if labels_given:
                ap[name] = 1.0
    if pairs:
        pair = pd.concat(pairs, ignore_index=True)
        c = cells.assign(image=cells["image"].astype(str))
        tc = truth_cells.assign(image=truth_cells["image"].astype(str))
        merged = (
            pair.merge(
                c[["image", "cell_id", "exo_spot_count"]],
                left_on=["image", "pred_id"],
                right_on=["image", "cell_id"],
                how="inner",
            )
            .drop(columns="cell_id")
            .merge(
                tc[["image", "cell_id", "n_spots"]],
                left_on=["image", "truth_id"],
                right_on=["image", "cell_id"],
                how="inner",
            )
        )
        out["count"] = count_correlation(merged["exo_spot_count"], merged["n_spots"])
        out["count"]["n_truth_cells"] = int(len(tc[tc["image"].isin(images)]))
    if ap:
        out["segmentation_ap50_per_image"] = ap
        out["segmentation_ap50"] = float(np.mean(list(ap.values())))
    return out


def format_accuracy(acc: Mapping[str, Any]) -> str:
    """Human-readable lines for :func:`accuracy_against_truth`'s result."""
    lines = ["accuracy against ground truth:"]
    if "spot_f1" in acc:
        pooled = acc["spots"].iloc[-1]
        lines.append(
            f"  puncta (match <= {SPOT_MATCH_PX:g} px): F1 {acc['spot_f1']:.3f}  precision "
            f"{acc['spot_precision']:.3f}  recall {acc['spot_recall']:.3f}  "
            f"({int(pooled['tp'])} TP, {int(pooled['fp'])} FP, {int(pooled['fn'])} FN)"
        )
    if "count" in acc:
        c = acc["count"]
        lines.append(
            f"  per-cell puncta count: Pearson r {c['pearson_r']:.3f}, mean |error| "
            f"{c['mean_abs_error']:.2f}, bias {c['bias']:+.2f} over {c['n_cells']} matched cells"
            f" (of {c.get('n_truth_cells', c['n_cells'])} true cells)"
        )
    if "segmentation_ap50" in acc:
        note = (
            " (ground-truth labels were given: 1 by construction)"
            if acc.get("labels_given")
            else ""
        )
        lines.append(f"  segmentation AP@0.5: {acc['segmentation_ap50']:.3f}{note}")
    if len(lines) == 1:
        lines.append("  (no ground truth to compare with)")
    return "\n".join(lines)
