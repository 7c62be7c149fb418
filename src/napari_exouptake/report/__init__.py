"""Per-condition report of a results folder: summary, statistics, plots, one HTML file.

``exouptake report RESULTS_DIR`` reads ``images.csv`` (one row per image), ``cells.parquet``
or ``cells.csv`` (one row per cell), ``run.json`` and the QC overlays ``qc/*.png`` of an
``exouptake analyze`` run and writes ``RESULTS_DIR/report.html``: a single self-contained file
(plots embedded as base64 PNG) to e-mail or attach to a lab notebook.

Statistics are done on **per-image means** (the image, not the cell, is the experimental unit:
cells of one well are not independent). Each condition is compared with the control condition
by Welch's two-sided t-test (``scipy.stats.ttest_ind(equal_var=False)``), and the p-values of
the conditions compared with the control are adjusted with Holm's step-down method, separately
for each readout. With fewer than
2 images in a group no test is made, and with fewer than 3 the result is flagged as low power.
"""

from __future__ import annotations

from .page import build_report, records_of, write_report
from .stats import (
    CONTROL_NAMES,
    Metric,
    ReportError,
    compare_to_control,
    condition_order,
    condition_summary,
    holm,
    per_image_metrics,
    pick_control,
)

__all__ = [
    "CONTROL_NAMES",
    "Metric",
    "ReportError",
    "build_report",
    "compare_to_control",
    "condition_order",
    "condition_summary",
    "holm",
    "pick_control",
    "records_of",
    "per_image_metrics",
    "write_report",
]
