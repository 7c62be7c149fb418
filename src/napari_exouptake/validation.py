"""Accuracy against ground truth, and agreement with reference results.

Two questions, two families of functions:

* **Is the analysis right?** (ground truth: simulator output or a hand-annotated dataset)
  :func:`spot_accuracy` (punctum precision / recall / F1, one-to-one matching within 2 px),
  :func:`match_labels` / :func:`average_precision` (segmentation AP at IoU 0.5, Cellpose's
  definition ``TP / (TP + FP + FN)``) and :func:`count_correlation` (Pearson r of per-cell punctum
  counts over cells matched at IoU >= 0.5), gathered by :func:`accuracy_against_truth`.
* **Does this installation give the same numbers as the reference?** (a dataset bundle's
  reference results, or any earlier results folder) :func:`compare_results` compares per-image and
  per-cell tables metric by metric within per-metric :class:`Tolerance` s and returns one
  :class:`MetricComparison` per metric.

``exouptake validate RESULTS_DIR --truth DIR`` is :mod:`napari_exouptake.commands.validate`.

Metric names used by tolerances: ``images.<column>`` (one value per image), ``cells.<column>``
(one value per cell, cells matched by label overlap or ``cell_id``), ``spots.f1`` (puncta of the
two runs matched within 0.5 px) and ``segmentation.ap50`` (mean AP at IoU 0.5 of the cell labels
of the two runs). A tolerance key may be a glob (``cells.*_positive``); the most specific key wins.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import squeeze_plane
from .spots import MatchCounts

__all__ = [
    "DEFAULT_TOLERANCES",
    "DEFAULT_TOLERANCES_SEGMENTATION",
    "LabelMatch",
    "MetricComparison",
    "RunTables",
    "Tolerance",
    "accuracy_against_truth",
    "average_precision",
    "compare_results",
    "count_correlation",
    "format_accuracy",
    "format_comparisons",
    "match_labels",
    "read_results",
    "resolve_tolerance",
    "spot_accuracy",
]

log = logging.getLogger(__name__)

#: Distance (pixels) within which a detected punctum matches a true one.
SPOT_MATCH_PX = 2.0
#: Distance (pixels) within which a re-run's punctum matches a reference punctum.
REFERENCE_SPOT_MATCH_PX = 0.5

#: Tolerances when cell labels are given (ground truth): only floating-point arithmetic and
#: puncta right at the detection threshold may differ between machines.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "images.*": {"rtol": 1e-3, "atol": 1e-6},
    "images.n_cells": {"atol": 0},
    "images.n_spots": {"rtol": 0.01, "atol": 0},
    "images.*_positive_fraction": {"atol": 0.01},
    "cells.*": {"rtol": 1e-3, "atol": 1e-6, "min_fraction": 0.99},
    "cells.area_px": {"atol": 0, "min_fraction": 1.0},
    "cells.*_positive": {"atol": 0, "min_fraction": 0.98},
    "spots.f1": {"min": 0.98},
    "segmentation.ap50": {"min": 0.999},
}

#: Tolerances when the analysis segments with Cellpose: CPU and GPU (and different BLAS
#: libraries) give slightly different outlines, which move per-cell numbers a little.
DEFAULT_TOLERANCES_SEGMENTATION: dict[str, dict[str, float]] = {
    "images.*": {"rtol": 0.05, "atol": 0.02},
    "images.n_cells": {"rtol": 0.05, "atol": 1},
    "images.n_spots": {"rtol": 0.01, "atol": 0},
    "cells.*": {"rtol": 0.05, "atol": 1e-6, "min_fraction": 0.9},
    "cells.*_positive": {"atol": 0, "min_fraction": 0.9},
    "spots.f1": {"min": 0.98},
    "segmentation.ap50": {"min": 0.9},
}

#: Columns never compared (identifiers and free text).
_SKIP_COLUMNS = {"image", "cell_id", "spot_id", "condition"}


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
def _match_spots(pred: pd.DataFrame, truth: pd.DataFrame, max_dist: float):
    try:
        from .spots import match_spots
    except ImportError:  # pragma: no cover - spots.py is part of the package
        match_spots = None
    if match_spots is not None:
        return match_spots(pred, truth, max_dist=max_dist)
    raise ImportError("napari_exouptake.spots.match_spots is not available")


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
        m = _match_spots(p[cols], t[cols], max_dist)
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
        from .io import read_labels

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


# --------------------------------------------------------------------------------------------
# agreement with reference results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """How close a re-run must be to the reference for one metric.

    A value agrees when ``|new - ref| <= atol + rtol * |ref|`` (``numpy.isclose``); the metric
    passes when at least ``min_fraction`` of its values agree. Score metrics (``spots.f1``,
    ``segmentation.ap50``) pass when the score is at least ``min``.
    """

    rtol: float = 0.0
    atol: float = 0.0
    min_fraction: float = 1.0
    min: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], metric: str = "?") -> Tolerance:
        if not isinstance(data, Mapping):
            raise ValueError(f"tolerance of {metric!r} must be a mapping, got {data!r}")
        unknown = set(data) - {"rtol", "atol", "min_fraction", "min"}
        if unknown:
            raise ValueError(
                f"tolerance of {metric!r} has unknown key(s) {sorted(unknown)}; "
                "allowed: rtol, atol, min_fraction, min"
            )
        vals = {}
        for k, v in data.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"tolerance {metric}.{k} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"tolerance {metric}.{k} must be >= 0, got {v}")
            vals[k] = float(v)
        if vals.get("min_fraction", 1.0) > 1:
            raise ValueError(f"tolerance {metric}.min_fraction must be <= 1")
        return cls(**vals)

    def describe(self) -> str:
        if self.min is not None:
            return f">= {self.min:g}"
        parts = []
        if self.atol or not self.rtol:
            parts.append(f"atol {self.atol:g}")
        if self.rtol:
            parts.append(f"rtol {self.rtol:g}")
        text = ", ".join(parts)
        if self.min_fraction < 1:
            text += f", {self.min_fraction:.0%} of values"
        return text


def resolve_tolerance(metric: str, tolerances: Mapping[str, Any]) -> Tolerance:
    """The tolerance of ``metric``: an exact key, else the most specific matching glob.

    Keys of the same specificity: the longer glob (fewer wildcards) wins. A metric that no key
    matches must agree exactly.
    """
    if metric in tolerances:
        return Tolerance.from_dict(tolerances[metric], metric)
    best: tuple[int, str] | None = None
    for key in tolerances:
        if any(ch in key for ch in "*?[") and fnmatch.fnmatchcase(metric, key):
            score = len(key.replace("*", ""))
            if best is None or score > best[0]:
                best = (score, key)
    if best is None:
        return Tolerance()
    return Tolerance.from_dict(tolerances[best[1]], best[1])


@dataclass(frozen=True)
class MetricComparison:
    """Agreement of one metric between a re-run and the reference.

    Attributes
    ----------
    metric : str
        ``images.<column>``, ``cells.<column>``, ``spots.f1`` or ``segmentation.ap50``.
    n : int
        Number of values compared (images, cells); 1 for scores.
    n_agree : int
        Values within tolerance.
    max_abs_diff : float
        Largest absolute difference (NaN for scores).
    score : float or None
        The score of score metrics.
    tolerance : Tolerance
    ok : bool
    detail : str
        Where the worst disagreement is (image, cell).
    """

    metric: str
    n: int
    n_agree: int
    max_abs_diff: float
    score: float | None
    tolerance: Tolerance
    ok: bool
    detail: str = ""


@dataclass
class RunTables:
    """The tables of one run (a results folder or an in-memory analysis).

    Attributes
    ----------
    cells, images : pandas.DataFrame
    spots : pandas.DataFrame or None
    labels : mapping or callable image name -> (Y, X) label array or path, or None
        Cell labels (``labels/<image>_cells.tif`` of a results folder).
    """

    cells: pd.DataFrame
    images: pd.DataFrame
    spots: pd.DataFrame | None = None
    labels: LabelSource | None = field(default=None, repr=False)


def read_results(results_dir: str | Path, *, with_labels: bool = True) -> RunTables:
    """Read a results folder (``cells.csv``, ``images.csv``, ``spots.csv``, ``labels/``).

    Raises
    ------
    FileNotFoundError
        When ``cells.csv`` or ``images.csv`` is missing (the message names the folder).
    """
    d = Path(results_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"results folder {d} does not exist")
    for name in ("cells.csv", "images.csv"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: no {name}; is this an exouptake results folder?")
    cells = pd.read_csv(d / "cells.csv")
    images = pd.read_csv(d / "images.csv")
    spots = pd.read_csv(d / "spots.csv") if (d / "spots.csv").is_file() else None
    labels = None
    lab_dir = d / "labels"
    if with_labels and lab_dir.is_dir() and any(lab_dir.glob("*_cells.tif")):

        def labels(name: str, _dir: Path = lab_dir) -> Path | None:
            p = _dir / f"{name}_cells.tif"
            return p if p.is_file() else None

    return RunTables(cells=cells, images=images, spots=spots, labels=labels)


def _numeric_columns(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    cols = []
    for c in a.columns:
        if c in _SKIP_COLUMNS or c not in b.columns:
            continue
        if (pd.api.types.is_numeric_dtype(a[c]) or pd.api.types.is_bool_dtype(a[c])) and (
            pd.api.types.is_numeric_dtype(b[c]) or pd.api.types.is_bool_dtype(b[c])
        ):
            cols.append(c)
    return cols


def _compare_values(
    metric: str,
    ref: np.ndarray,
    new: np.ndarray,
    where: Sequence[str],
    tol: Tolerance,
    n_missing: int = 0,
) -> MetricComparison:
    ref = ref.astype(float)
    new = new.astype(float)
    both_nan = np.isnan(ref) & np.isnan(new)
    close = np.isclose(new, ref, rtol=tol.rtol, atol=tol.atol) | both_nan
    diff = np.abs(new - ref)
    diff[both_nan] = 0.0
    diff = np.where(np.isnan(diff), np.inf, diff)
    n = int(ref.size) + n_missing
    n_agree = int(close.sum())
    ok = n == 0 or n_agree >= tol.min_fraction * n - 1e-9
    max_diff = float(diff.max()) if diff.size else 0.0
    detail = ""
    if diff.size and not close.all():
        i = int(np.argmax(np.where(close, -1.0, diff)))
        detail = f"worst {where[i]}: reference {ref[i]:.6g}, now {new[i]:.6g}"
    if n_missing:
        detail = (detail + "; " if detail else "") + f"{n_missing} unmatched"
    return MetricComparison(metric, n, n_agree, max_diff, None, tol, bool(ok), detail)


def _cell_pairs(current: RunTables, reference: RunTables, images: Sequence[str]) -> pd.DataFrame:
    """(image, ref_id, new_id) of cells of both runs: by label overlap, else by cell_id."""
    rows = []
    for name in images:  # one IoU table per image
        rl = _get_labels(reference.labels, name)
        nl = _get_labels(current.labels, name)
        if rl is not None and nl is not None and rl.shape == nl.shape:
            m = match_labels(rl, nl, 0.5)
            rows.append(pd.DataFrame({"image": name, "ref_id": m.truth_ids, "new_id": m.pred_ids}))
        else:
            ref_ids = reference.cells.loc[reference.cells["image"] == name, "cell_id"]
            new_ids = set(current.cells.loc[current.cells["image"] == name, "cell_id"])
            ids = ref_ids[ref_ids.isin(new_ids)].to_numpy()
            rows.append(pd.DataFrame({"image": name, "ref_id": ids, "new_id": ids}))
    if not rows:
        return pd.DataFrame({"image": [], "ref_id": [], "new_id": []})
    return pd.concat(rows, ignore_index=True)


def compare_results(
    current: RunTables,
    reference: RunTables,
    tolerances: Mapping[str, Any] | None = None,
) -> list[MetricComparison]:
    """Compare a run with reference results metric by metric.

    Parameters
    ----------
    current, reference : RunTables
        The re-run and the reference (e.g. :func:`read_results` of each folder).
    tolerances : mapping metric or glob -> {rtol, atol, min_fraction, min}, optional
        Default :data:`DEFAULT_TOLERANCES`.

    Returns
    -------
    list of MetricComparison
        ``images.*`` for every numeric column of the reference ``images.csv`` (an image or a
        column missing from the re-run is a disagreement), ``cells.*`` for every numeric column
        of ``cells.csv`` over matched cells (reference cells without a match count as
        disagreeing values), ``spots.f1`` when both have puncta tables, ``segmentation.ap50``
        when both have label images.
    """
    tolerances = DEFAULT_TOLERANCES if tolerances is None else tolerances
    out: list[MetricComparison] = []
    ref_img = reference.images.assign(image=reference.images["image"].astype(str))
    new_img = current.images.assign(image=current.images["image"].astype(str))
    images = list(ref_img["image"])
    missing_images = sorted(set(images) - set(new_img["image"]))
    if missing_images:
        out.append(
            MetricComparison(
                "images.image",
                len(images),
                len(images) - len(missing_images),
                float("nan"),
                None,
                Tolerance(),
                False,
                f"missing from the re-run: {', '.join(missing_images[:5])}",
            )
        )
    merged = ref_img.merge(new_img, on="image", how="inner", suffixes=("_ref", "_new"))
    for col in [c for c in ref_img.columns if c not in _SKIP_COLUMNS]:
        if not (
            pd.api.types.is_numeric_dtype(ref_img[col]) or pd.api.types.is_bool_dtype(ref_img[col])
        ):
            continue
        metric = f"images.{col}"
        tol = resolve_tolerance(metric, tolerances)
        if col not in new_img.columns:
            out.append(
                MetricComparison(
                    metric,
                    len(images),
                    0,
                    float("nan"),
                    None,
                    tol,
                    False,
                    "column missing from the re-run",
                )
            )
            continue
        out.append(
            _compare_values(
                metric,
                merged[f"{col}_ref"].to_numpy(),
                merged[f"{col}_new"].to_numpy(),
                [f"image {n}" for n in merged["image"]],
                tol,
                n_missing=len(missing_images),
            )
        )

    # -- per cell ----------------------------------------------------------------------------
    rc = reference.cells.assign(image=reference.cells["image"].astype(str))
    nc = current.cells.assign(image=current.cells["image"].astype(str))
    present = [n for n in images if n not in missing_images]
    cur = RunTables(nc, new_img, current.spots, current.labels)
    ref = RunTables(rc, ref_img, reference.spots, reference.labels)
    pairs = _cell_pairs(cur, ref, present)
    cm = pairs.merge(rc, left_on=["image", "ref_id"], right_on=["image", "cell_id"]).merge(
        nc, left_on=["image", "new_id"], right_on=["image", "cell_id"], suffixes=("_ref", "_new")
    )
    n_ref_cells = int(len(rc))
    unmatched = n_ref_cells - len(cm)
    where = [f"image {i} cell {c}" for i, c in zip(cm["image"], cm["ref_id"], strict=True)]
    for col in _numeric_columns(rc, nc):
        if col in ("centroid_y", "centroid_x", "centroid_z"):
            continue  # checked through the label overlap
        metric = f"cells.{col}"
        tol = resolve_tolerance(metric, tolerances)
        out.append(
            _compare_values(
                metric,
                cm[f"{col}_ref"].to_numpy(),
                cm[f"{col}_new"].to_numpy(),
                where,
                tol,
                n_missing=unmatched,
            )
        )
    missing_cols = [c for c in _numeric_columns(rc, rc) if c not in nc.columns]
    for col in missing_cols:
        metric = f"cells.{col}"
        out.append(
            MetricComparison(
                metric,
                n_ref_cells,
                0,
                float("nan"),
                None,
                resolve_tolerance(metric, tolerances),
                False,
                "column missing from the re-run",
            )
        )

    # -- puncta ------------------------------------------------------------------------------
    if reference.spots is not None and current.spots is not None:
        acc = spot_accuracy(current.spots, reference.spots, max_dist=REFERENCE_SPOT_MATCH_PX)
        pooled = acc.iloc[-1]
        tol = resolve_tolerance("spots.f1", tolerances)
        f1 = float(pooled["f1"])
        per = acc.iloc[:-1]
        worst = per.loc[per["f1"].idxmin()] if len(per) else None
        detail = f"{int(pooled['fp'])} new, {int(pooled['fn'])} lost puncta" + (
            f"; worst image {worst['image']} (F1 {worst['f1']:.3f})"
            if worst is not None and worst["f1"] < 1
            else ""
        )
        out.append(
            MetricComparison(
                "spots.f1",
                1,
                int(f1 >= (tol.min or 1.0)),
                float("nan"),
                f1,
                tol,
                f1 >= (tol.min if tol.min is not None else 1.0),
                detail,
            )
        )

    # -- segmentation ------------------------------------------------------------------------
    if reference.labels is not None and current.labels is not None:
        aps = {}
        for name in present:  # one IoU table per image
            rl, nl = _get_labels(reference.labels, name), _get_labels(current.labels, name)
            if rl is not None and nl is not None and rl.shape == nl.shape:
                aps[name] = match_labels(rl, nl, 0.5).ap
        if aps:
            tol = resolve_tolerance("segmentation.ap50", tolerances)
            score = float(np.mean(list(aps.values())))
            worst_name = min(aps, key=aps.get)
            need = tol.min if tol.min is not None else 1.0
            out.append(
                MetricComparison(
                    "segmentation.ap50",
                    1,
                    int(score >= need),
                    float("nan"),
                    score,
                    tol,
                    score >= need,
                    f"worst image {worst_name} (AP {aps[worst_name]:.3f})",
                )
            )
    return out


def format_comparisons(comparisons: Sequence[MetricComparison]) -> str:
    """A fixed-width table: metric, values agreeing, largest difference, tolerance, verdict."""
    if not comparisons:
        return "no metrics to compare"
    width = max(len(c.metric) for c in comparisons)
    lines = [f"{'metric':<{width}}  {'agree':>11}  {'max |diff|':>10}  {'tolerance':<26} result"]
    for c in comparisons:
        agree = f"{c.score:.4f}" if c.score is not None else f"{c.n_agree}/{c.n}"
        diff = "" if math.isnan(c.max_abs_diff) else f"{c.max_abs_diff:.3g}"
        verdict = "ok" if c.ok else "DISAGREES"
        extra = f"  ({c.detail})" if c.detail and not c.ok else ""
        lines.append(
            f"{c.metric:<{width}}  {agree:>11}  {diff:>10}  "
            f"{c.tolerance.describe():<26} {verdict}{extra}"
        )
    return "\n".join(lines)
