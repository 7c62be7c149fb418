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

from .metrics import (
    LabelMatch,
    accuracy_against_truth,
    average_precision,
    count_correlation,
    format_accuracy,
    match_labels,
    spot_accuracy,
)
from .reference import (
    DEFAULT_TOLERANCES,
    DEFAULT_TOLERANCES_SEGMENTATION,
    MetricComparison,
    RunTables,
    Tolerance,
    compare_results,
    format_comparisons,
    read_results,
    resolve_tolerance,
)

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
