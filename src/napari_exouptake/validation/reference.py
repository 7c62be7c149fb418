"""Agreement of a run with reference results, metric by metric within tolerances."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .metrics import LabelSource, _get_labels, match_labels, spot_accuracy

log = logging.getLogger(__name__)

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
    ref_img = reference.images.assign(image=reference.images["image"].astype(str))
    new_img = current.images.assign(image=current.images["image"].astype(str))
    images = list(ref_img["image"])
    missing_images = sorted(set(images) - set(new_img["image"]))
    present = [n for n in images if n not in missing_images]
    out = _compare_images(ref_img, new_img, missing_images, tolerances)
    nc = current.cells.assign(image=current.cells["image"].astype(str))
    rc = reference.cells.assign(image=reference.cells["image"].astype(str))
    cur = RunTables(nc, new_img, current.spots, current.labels)
    ref = RunTables(rc, ref_img, reference.spots, reference.labels)
    out += _compare_cells(cur, ref, present, tolerances)
    if reference.spots is not None and current.spots is not None:
        out.append(_compare_spots(current.spots, reference.spots, tolerances))
    if reference.labels is not None and current.labels is not None:
        out += _compare_segmentation(current.labels, reference.labels, present, tolerances)
    return out


def _missing(metric: str, n: int, tol: Tolerance, detail: str) -> MetricComparison:
    """A metric the re-run cannot be compared on (an image or a column it lacks)."""
    return MetricComparison(metric, n, 0, float("nan"), None, tol, False, detail)


def _compare_images(
    ref_img: pd.DataFrame, new_img: pd.DataFrame, missing: list[str], tolerances: Mapping
) -> list[MetricComparison]:
    """``images.*``: every numeric column of the reference's images table, image by image."""
    images = list(ref_img["image"])
    out = []
    if missing:
        out.append(
            MetricComparison(
                "images.image",
                len(images),
                len(images) - len(missing),
                float("nan"),
                None,
                Tolerance(),
                False,
                f"missing from the re-run: {', '.join(missing[:5])}",
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
            out.append(_missing(metric, len(images), tol, "column missing from the re-run"))
            continue
        out.append(
            _compare_values(
                metric,
                merged[f"{col}_ref"].to_numpy(),
                merged[f"{col}_new"].to_numpy(),
                [f"image {n}" for n in merged["image"]],
                tol,
                n_missing=len(missing),
            )
        )
    return out


def _compare_cells(
    cur: RunTables, ref: RunTables, present: list[str], tolerances: Mapping
) -> list[MetricComparison]:
    """``cells.*``: every numeric column over cells matched by label overlap (or ``cell_id``);
    reference cells without a match count as disagreeing values."""
    rc, nc = ref.cells, cur.cells
    pairs = _cell_pairs(cur, ref, present)
    cm = pairs.merge(rc, left_on=["image", "ref_id"], right_on=["image", "cell_id"]).merge(
        nc, left_on=["image", "new_id"], right_on=["image", "cell_id"], suffixes=("_ref", "_new")
    )
    n_ref_cells = int(len(rc))
    unmatched = n_ref_cells - len(cm)
    where = [f"image {i} cell {c}" for i, c in zip(cm["image"], cm["ref_id"], strict=True)]
    out = []
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
    for col in [c for c in _numeric_columns(rc, rc) if c not in nc.columns]:
        metric = f"cells.{col}"
        tol = resolve_tolerance(metric, tolerances)
        out.append(_missing(metric, n_ref_cells, tol, "column missing from the re-run"))
    return out


def _compare_spots(
    current: pd.DataFrame, reference: pd.DataFrame, tolerances: Mapping
) -> MetricComparison:
    """``spots.f1``: puncta of the two runs matched within ``REFERENCE_SPOT_MATCH_PX``."""
    acc = spot_accuracy(current, reference, max_dist=REFERENCE_SPOT_MATCH_PX)
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
    ok = f1 >= (tol.min if tol.min is not None else 1.0)
    return MetricComparison(
        "spots.f1", 1, int(f1 >= (tol.min or 1.0)), float("nan"), f1, tol, ok, detail
    )


def _compare_segmentation(
    current: LabelSource, reference: LabelSource, present: list[str], tolerances: Mapping
) -> list[MetricComparison]:
    """``segmentation.ap50``: mean AP at IoU 0.5 of the two runs' cell labels."""
    aps = {}
    for name in present:  # one IoU table per image
        rl, nl = _get_labels(reference, name), _get_labels(current, name)
        if rl is not None and nl is not None and rl.shape == nl.shape:
            aps[name] = match_labels(rl, nl, 0.5).ap
    if not aps:
        return []
    tol = resolve_tolerance("segmentation.ap50", tolerances)
    score = float(np.mean(list(aps.values())))
    worst_name = min(aps, key=aps.get)
    need = tol.min if tol.min is not None else 1.0
    return [
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
    ]


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
