"""The report's HTML page: summary, positivity rules, statistics, figures; build and write."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .plots import _plot_cells, _plot_dose, _plot_per_image, _thumbnails
from .stats import (
    MIN_N_POWER,
    TEST_NAME,
    Metric,
    _load,
    _markers,
    compare_to_control,
    condition_order,
    condition_summary,
    per_image_metrics,
    pick_control,
    readout_metrics,
)

log = logging.getLogger(__name__)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px 32px;color:#222;
max-width:1150px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc;
padding-bottom:3px}p.meta{color:#666;font-size:12px;margin-top:0}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ddd;
padding:3px 7px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.ctrl td{background:#fbf7e6}.warn{background:#fff3cd;border:1px solid #e0c36c;padding:4px 12px;
font-size:13px;margin:10px 0}.note{color:#555;font-size:12px}.sig{font-weight:bold}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;width:362px;font-size:11px;
text-align:center}.grid img{width:360px;border:1px solid #ccc}
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:,.{max(digits - 1, 1)}f}"


def _fmt_int(v: Any) -> str:
    return "–" if v is None or not np.isfinite(float(v)) else str(int(v))


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _summary_html(
    table: pd.DataFrame,
    metrics: Sequence[Metric],
    control: str | None,
    control_note: str = "",
) -> str:
    head = "".join(
        f"<th>{html.escape(m.label)}<br><small>{'axial mean' if m.axial else 'mean ± SEM'}"
        "</small></th>"
        for m in metrics
    )
    rows = []
    for cond, r in table.iterrows():  # one row per condition
        cells = "".join(
            f"<td>{_fmt(r[f'{m.column}_mean'])}</td>"
            if m.axial
            else f"<td>{_fmt(r[f'{m.column}_mean'])} ± {_fmt(r[f'{m.column}_sem'])}</td>"
            for m in metrics
        )
        cls = ' class="ctrl"' if cond == control else ""
        label = html.escape(str(cond)) + (
            f" (control{'; ' + html.escape(control_note) if control_note else ''})"
            if cond == control
            else ""
        )
        rows.append(
            f"<tr{cls}><td class='l'>{label}</td><td>{int(r['n_images'])}</td>"
            f"<td>{_fmt_int(r['n_cells'])}</td>{cells}</tr>"
        )
    return (
        f"<table><tr><th class='l'>condition</th><th>images</th><th>cells</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def records_of(run: dict) -> dict[str, dict]:
    """The run's positivity records (``run.json`` ``positivity``; empty for older runs)."""
    rec = run.get("positivity") or {}
    return {k: v for k, v in rec.items() if isinstance(v, dict)}


def _readout_name(key: str) -> str:
    return "EV uptake" if key == "exo" else key.upper()


def _rule_text(rec: dict) -> str:
    """``> 4 exo_spot_count`` or ``>= 180 cd31_mean_intensity``."""
    thr = rec.get("threshold")
    shown = (
        str(int(thr)) if isinstance(thr, (int, float)) and float(thr).is_integer() else _fmt(thr)
    )
    return f"{rec.get('metric', '?')} {rec.get('comparison', '>=')} {shown}"


def _control_note(records: dict, control: str | None) -> str:
    exo = records.get("exo") if isinstance(records, dict) else None
    if not exo or control is None:
        return ""
    if exo.get("method") == "control" and exo.get("control_condition") == control:
        return (
            f"sets the EV cut-off, its {exo.get('percentile', 95):g}th percentile: "
            f"EV-positive if {_rule_text(exo)}"
        )
    return f"EV-positive: {_rule_text(exo)} ({exo.get('method', '')} rule)"


def _positivity_html(records: dict, thresholds: dict) -> str:
    """Table of the run's positivity rules: readout, rule, cut-off, cells fitted on."""
    if not records:
        if not thresholds:
            return ""
        return (
            "<p class='note'>Positivity thresholds of the run: "
            + ", ".join(f"{html.escape(str(k))} = {_fmt(v)}" for k, v in thresholds.items())
            + "</p>"
        )
    rows = []
    for key, rec in records.items():
        if not isinstance(rec, dict):
            continue
        method = rec.get("method", "")
        how = {
            "fixed": "fixed value",
            "control": f"{rec.get('percentile', 95):g}th percentile of the control",
            "auto": "two-population fit"
            if rec.get("rule") == "mixture"
            else "no second population: median + 3 robust SD",
        }.get(method, method)
        n_pos, n = rec.get("n_positive"), rec.get("n_cells")
        pct = f"{100.0 * n_pos / n:.1f} % ({n_pos} of {n})" if n else "–"
        rows.append(
            f"<tr><td class='l'>{html.escape(_readout_name(key))}</td>"
            f"<td class='l'>{html.escape(method)}: {html.escape(how)}</td>"
            f"<td class='l'><code>{html.escape(_rule_text(rec))}</code></td>"
            f"<td class='l'>{html.escape(str(rec.get('fitted_on', '')))}</td>"
            f"<td>{pct}</td></tr>"
        )
    return (
        "<p class='note'>How cells were called positive (details: <code>run.json</code> "
        "<code>positivity</code>; rules: docs/positivity.md):</p>"
        "<table><tr><th class='l'>readout</th><th class='l'>rule</th>"
        "<th class='l'>positive if</th><th class='l'>cut-off fitted on</th>"
        "<th>positive cells (run)</th></tr>" + "".join(rows) + "</table>"
    )


def _stats_html(stats_table: pd.DataFrame) -> str:
    if stats_table.empty:
        return "<p class='note'>No condition to compare with the control.</p>"
    rows = []
    for r in stats_table.itertuples(index=False):  # one row per comparison
        sig = np.isfinite(r.p_holm) and r.p_holm < 0.05
        rows.append(
            f"<tr><td class='l'>{html.escape(r.condition)}</td><td class='l'>"
            f"{html.escape(r.metric)}</td><td>{r.n} vs {r.n_control}</td><td>{_fmt(r.mean)}</td>"
            f"<td>{_fmt(r.mean_control)}</td><td>{_fmt(r.difference)}</td><td>{_fmt(r.t)}</td>"
            f"<td>{_fmt_p(r.p)}</td><td{' class=sig' if sig else ''}>{_fmt_p(r.p_holm)}</td>"
            f"<td class='l note'>{html.escape(r.note)}</td></tr>"
        )
    return (
        "<table><tr><th class='l'>condition</th><th class='l'>readout</th><th>images</th>"
        "<th>mean</th><th>control mean</th><th>difference</th><th>t</th><th>p</th>"
        "<th>p (Holm)</th><th class='l'>note</th></tr>" + "".join(rows) + "</table>"
    )


def build_report(
    results_dir: str | Path,
    control: str | None = None,
    *,
    qc_per_condition: int = 4,
    link_base: str | Path | None = None,
) -> str:
    """The HTML report of a results folder, as one self-contained string.

    Parameters
    ----------
    results_dir : str or Path
        Output folder of ``exouptake analyze`` (``images.csv``, ``cells.parquet``/``.csv``,
        ``run.json``, ``qc/``).
    control : str, optional
        Control condition; default the run config's ``positivity.control_condition``, else
        a condition named like one of :data:`CONTROL_NAMES`.
    qc_per_condition : int
        QC overlays shown per condition.
    link_base : str or Path, optional
        Folder the HTML file will live in, for the links to full-size overlays (default
        ``results_dir``).

    Returns
    -------
    str
        HTML.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    results_dir = Path(results_dir)
    images, cells, run = _load(results_dir)
    conditions = list(dict.fromkeys(images["condition"]))
    control = pick_control(conditions, control, run)
    order = condition_order(images, control)
    metrics = per_image_metrics(images)
    readouts = readout_metrics(images)
    markers = _markers(images)

    parts: list[str] = []
    if "n_cells" in images:
        n_cells = int(images["n_cells"].sum())
    else:
        n_cells = len(cells) if cells is not None else 0
    created = run.get("created", "")
    version = run.get("versions", {}).get("napari-exouptake", "")
    parts.append(
        "<h1>EV uptake report</h1><p class='meta'>"
        f"{html.escape(str(results_dir.resolve()))} · {len(images)} images · {n_cells} cells · "
        f"{len(conditions)} condition(s) · run {html.escape(created)} · napari-exouptake "
        f"{html.escape(version)} · config sha256 {html.escape(run.get('config_sha256', '')[:12])}"
        "</p>"
    )
    warns = [
        f"{_readout_name(k)}: {w}"
        for k, rec in records_of(run).items()
        for w in rec.get("warnings", [])
    ]
    if warns:
        parts.append(
            "<div class='warn'><b>Warnings</b><ul>"
            + "".join(f"<li>{html.escape(w)}</li>" for w in warns)
            + "</ul></div>"
        )
    # summary
    summary = condition_summary(images, metrics, order)
    parts.append("<h2>Per-condition summary</h2>")
    parts.append(
        "<p class='note'>Mean ± SEM over the images of each condition of the per-image values "
        "(each image's mean over its cells, or its fraction of positive cells). SEM needs at "
        "least 2 images.</p>"
    )
    records = records_of(run)
    parts.append(_summary_html(summary, metrics, control, _control_note(records, control)))
    parts.append(_positivity_html(records, run.get("thresholds") or {}))

    # statistics
    parts.append("<h2>Statistics against the control</h2>")
    if control is None:
        parts.append(
            "<p class='note'>No control condition: give one with <code>exouptake report "
            "RESULTS --control NAME</code> or <code>positivity.control_condition</code> in the "
            f"config (conditions: {html.escape(', '.join(conditions))}).</p>"
        )
    else:
        st = compare_to_control(images, metrics, control, order)
        small = (summary["n_images"] < MIN_N_POWER).any()
        parts.append(
            f"<p class='note'>Test: <b>{TEST_NAME}</b> (scipy.stats.ttest_ind, "
            f"equal_var=False), each condition against <b>{html.escape(control)}</b>; the "
            "image is the experimental unit. For each readout the p-values of the conditions "
            "compared with the control are adjusted with Holm's step-down method (family-wise "
            "error 5%); bold: adjusted p &lt; 0.05. Readouts are not adjusted across each "
            "other."
            + (
                " <b>Some conditions have fewer than 3 images: the tests have little power "
                "and p-values are indicative only.</b>"
                if small
                else ""
            )
            + "</p>"
        )
        parts.append(_stats_html(st))

    # plots
    if metrics:
        parts.append("<h2>Per-image readouts by condition</h2>")
        parts.append(
            f"<img class='plot' src='data:image/png;base64,"
            f"{_plot_per_image(images, metrics, order, control)}'>"
        )
    dose_metrics = [
        m
        for m in metrics
        if m.column
        in ("mean_spots_per_cell", "exo_positive_fraction", "mean_exo_integrated_intensity")
    ]
    if (
        "dose" in images.columns
        and dose_metrics
        and pd.to_numeric(images["dose"], errors="coerce").nunique() > 1
    ):
        images = images.assign(dose=pd.to_numeric(images["dose"], errors="coerce"))
        parts.append("<h2>Dose-response</h2>")
        parts.append(
            f"<img class='plot' src='data:image/png;base64,"
            f"{_plot_dose(images, dose_metrics, order)}'>"
        )
    if cells is not None and len(cells) and "exo_spot_count" in cells:
        parts.append("<h2>Per-cell distributions</h2>")
        parts.append(
            f"<img class='plot' src='data:image/png;base64,{_plot_cells(cells, order, markers)}'>"
        )
    if readouts:
        parts.append("<h2>Tube formation and collagen readouts</h2>")
        parts.append(_summary_html(condition_summary(images, readouts, order), readouts, control))
        if control is not None:
            parts.append(_stats_html(compare_to_control(images, readouts, control, order)))
        plotted = [m for m in readouts if not m.axial]
        if plotted:
            parts.append(
                f"<img class='plot' src='data:image/png;base64,"
                f"{_plot_per_image(images, plotted, order, control)}'>"
            )

    thumbs = _thumbnails(results_dir / "qc", images, order, qc_per_condition)
    if thumbs:
        parts.append(
            "<h2>QC overlays</h2><p class='note'>Click a picture for the full-size overlay; "
            "each carries its own legend. "
            f"Up to {qc_per_condition} images per condition, all in "
            "<code>qc/</code>.</p><div class='grid'>"
        )
        base = Path(link_base) if link_base is not None else results_dir
        for name, cond, b64, path in thumbs:
            # absolute, not resolved: qc/ is a link to the current results generation, and a
            # link into one generation would break when the next one is published
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
            href = html.escape(Path(rel).as_posix())
            parts.append(
                f"<figure><a href='{href}' title='full-size overlay'>"
                f"<img src='data:image/png;base64,{b64}'></a><figcaption>"
                f"{html.escape(name)}<br>{html.escape(cond)}</figcaption></figure>"
            )
        parts.append("</div>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>EV uptake report</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>"
    )


def write_report(
    results_dir: str | Path, out: str | Path | None = None, control: str | None = None
) -> Path:
    """Write :func:`build_report` to ``out`` (default ``RESULTS_DIR/report.html``)."""
    from ..io import atomic_write

    out = Path(out) if out is not None else Path(results_dir) / "report.html"
    text = build_report(results_dir, control, link_base=out.parent)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    log.debug("wrote %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
