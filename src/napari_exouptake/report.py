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

import base64
import html
import io as _io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import ConfigError

__all__ = [
    "CONTROL_NAMES",
    "Metric",
    "ReportError",
    "build_report",
    "compare_to_control",
    "condition_order",
    "condition_summary",
    "holm",
    "per_image_metrics",
    "write_report",
]

log = logging.getLogger(__name__)

#: Condition names taken as the control when neither ``--control`` nor the run's
#: ``positivity.control_condition`` names one (case-insensitive).
CONTROL_NAMES = ("control", "ctrl", "untreated", "vehicle", "mock", "pbs", "dye_only")
TEST_NAME = (
    "Welch's t-test (two-sided) on per-image means, Holm-adjusted over the conditions "
    "of each readout"
)
MIN_N_TEST = 2  # images per group below which no test is made
MIN_N_POWER = 3  # images per group below which a result is flagged as low power


class ReportError(ConfigError):
    """A results folder that cannot be reported on, or a control that does not exist."""


@dataclass(frozen=True)
class Metric:
    """One per-image readout of the report.

    Attributes
    ----------
    column : str
        Column of the per-image table.
    label : str
        Human label with unit.
    scale : float
        Factor applied for display (100 for fractions shown as percent).
    axial : bool
        An orientation in degrees, 0-180 (fibre angles): summarised by the axial circular mean
        (``0.5 * atan2(mean sin 2a, mean cos 2a)``), never averaged arithmetically or t-tested.
    """

    column: str
    label: str
    scale: float = 1.0
    axial: bool = False


# -- data --------------------------------------------------------------------------------------


def _load(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    images_path = results_dir / "images.csv"
    if not results_dir.is_dir():
        raise ReportError(f"results folder {str(results_dir)!r} does not exist")
    if not images_path.is_file():
        raise ReportError(
            f"{results_dir} holds no images.csv: is it the --out folder of `exouptake analyze`?"
        )
    images = pd.read_csv(images_path)
    cells = None
    if (results_dir / "cells.parquet").is_file():
        cells = pd.read_parquet(results_dir / "cells.parquet")
    elif (results_dir / "cells.csv").is_file():
        cells = pd.read_csv(results_dir / "cells.csv")
    run: dict = {}
    if (results_dir / "run.json").is_file():
        try:
            run = json.loads((results_dir / "run.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s/run.json is not valid JSON; ignored", results_dir)
    for df in (images, cells):
        if df is not None and "condition" not in df.columns:
            df["condition"] = "all"
        if df is not None:
            df["condition"] = df["condition"].fillna("(none)").astype(str)
    return images, cells, run


def _markers(images: pd.DataFrame) -> list[str]:
    return [
        c[: -len("_positive_fraction")]
        for c in images.columns
        if c.endswith("_positive_fraction") and c != "exo_positive_fraction"
    ]


def per_image_metrics(images: pd.DataFrame) -> list[Metric]:
    """The uptake and marker readouts of ``images`` that the report summarises and tests."""
    cand = [
        Metric("mean_spots_per_cell", "EV puncta per cell"),
        Metric("mean_spot_estimate_per_cell", "Estimated EVs per cell (cluster-aware)"),
        Metric("mean_exo_integrated_intensity", "EV integrated intensity per cell (a.u.)"),
        Metric("exo_positive_fraction", "% EV-positive cells", 100.0),
    ]
    cand += [
        Metric(f"{m}_positive_fraction", f"% {m.upper()}-positive cells", 100.0)
        for m in _markers(images)
    ]
    return [m for m in cand if m.column in images.columns and images[m.column].notna().any()]


def readout_metrics(images: pd.DataFrame) -> list[Metric]:
    """Tube-formation and collagen readouts present in ``images``."""
    length_unit = "um"
    cand = [
        Metric("tube_total_length_um", f"Tube total length ({length_unit})"),
        Metric("tube_junctions", "Tube junctions"),
        Metric("tube_meshes", "Tube meshes"),
        Metric("collagen_area_fraction", "% collagen area", 100.0),
        Metric("collagen_coherency", "Collagen coherency (0-1)"),
        Metric(
            "collagen_mean_angle_deg", "Collagen fibre orientation (deg, axial mean)", axial=True
        ),
    ]
    return [m for m in cand if m.column in images.columns and images[m.column].notna().any()]


def condition_order(images: pd.DataFrame, control: str | None) -> list[str]:
    """Control first, then other control-like names (untreated, vehicle ...), then by dose
    (when the table has a numeric ``dose``), then by name."""
    conds = list(dict.fromkeys(images["condition"]))
    dose: dict = {}
    if "dose" in images.columns:
        num = pd.to_numeric(images["dose"], errors="coerce")
        dose = num.groupby(images["condition"]).mean().dropna().to_dict()
    ctrl_like = {n.lower() for n in CONTROL_NAMES}
    conds.sort(
        key=lambda c: (c != control, str(c).lower() not in ctrl_like, dose.get(c, np.inf), c)
    )
    return conds


def pick_control(conditions: Sequence[str], control: str | None, run: dict) -> str | None:
    """The control condition: ``control``, else the run config's, else a usual name.

    Raises
    ------
    ReportError
        When ``control`` is given but no image has that condition.
    """
    conditions = list(conditions)
    if control is not None:
        if control not in conditions:
            raise ReportError(
                f"control condition {control!r} is not in the results (conditions: "
                f"{', '.join(conditions)})"
            )
        return control
    cfg_control = (run.get("config", {}).get("positivity", {}) or {}).get("control_condition")
    if cfg_control in conditions:
        return cfg_control
    lower = {c.lower(): c for c in conditions}
    for name in CONTROL_NAMES:
        if name in lower:
            return lower[name]
    return None


# -- statistics --------------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries are left out and stay NaN).

    Parameters
    ----------
    pvalues : sequence of float, length m

    Returns
    -------
    (m,) float ndarray
        ``p_(i) * (m - i + 1)``, made monotone, capped at 1, over the m' finite p-values.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def condition_summary(
    images: pd.DataFrame, metrics: Sequence[Metric], order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per condition: images, cells, and mean and SEM of the per-image values of each metric.

    Parameters
    ----------
    images : pandas.DataFrame
        One row per image with ``condition``, ``n_cells`` and the metric columns.
    metrics : sequence of Metric
    order : sequence of str, optional
        Row order (default: first appearance).

    Returns
    -------
    pandas.DataFrame
        Index ``condition``; columns ``n_images``, ``n_cells`` and per metric
        ``<column>_mean``, ``<column>_sem`` (scaled, e.g. percent; SEM NaN with one image).
    """
    g = images.groupby("condition", sort=False)
    table = pd.DataFrame({"n_images": g.size()})
    table["n_cells"] = g["n_cells"].sum().astype(int) if "n_cells" in images else np.nan
    for m in metrics:
        vals = images[m.column].astype(float) * m.scale
        if m.axial:  # orientations: axial circular mean, no SEM
            rad = np.deg2rad(2.0 * vals)
            grp_s = np.sin(rad).groupby(images["condition"], sort=False).mean()
            grp_c = np.cos(rad).groupby(images["condition"], sort=False).mean()
            table[f"{m.column}_mean"] = np.rad2deg(np.arctan2(grp_s, grp_c)) / 2.0 % 180.0
            table[f"{m.column}_sem"] = np.nan
            continue
        grp = vals.groupby(images["condition"], sort=False)
        table[f"{m.column}_mean"] = grp.mean()
        table[f"{m.column}_sem"] = grp.std(ddof=1) / np.sqrt(grp.count())
    if order is not None:
        table = table.reindex([c for c in order if c in table.index])
    table.index.name = "condition"
    return table


def compare_to_control(
    images: pd.DataFrame,
    metrics: Sequence[Metric],
    control: str,
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Each condition against ``control`` on per-image values: Welch's t-test, Holm-adjusted.

    Returns
    -------
    pandas.DataFrame
        One row per (condition, metric): ``n``, ``n_control``, ``mean``, ``mean_control``,
        ``difference``, ``t``, ``p``, ``p_holm`` (Holm-adjusted over the conditions compared
        with the control, separately for each readout) and ``note`` (why no test was made, or
        a low-power warning). Axial metrics (orientations) are not tested.
    """
    from scipy import stats

    conds = [c for c in (order or dict.fromkeys(images["condition"])) if c != control]
    ctrl_rows = images["condition"] == control
    rows = []
    for m in (m for m in metrics if not m.axial):
        ctrl = images.loc[ctrl_rows, m.column].astype(float).dropna().to_numpy() * m.scale
        for c in conds:
            vals = images.loc[images["condition"] == c, m.column].astype(float).dropna()
            vals = vals.to_numpy() * m.scale
            row = {
                "condition": c,
                "metric": m.label,
                "n": vals.size,
                "n_control": ctrl.size,
                "mean": vals.mean() if vals.size else np.nan,
                "mean_control": ctrl.mean() if ctrl.size else np.nan,
                "t": np.nan,
                "p": np.nan,
                "note": "",
            }
            row["difference"] = row["mean"] - row["mean_control"]
            if min(vals.size, ctrl.size) < MIN_N_TEST:
                row["note"] = (
                    f"n too small for a test ({vals.size} vs {ctrl.size} images; "
                    f"needs >= {MIN_N_TEST} per group)"
                )
            elif np.ptp(vals) == 0 and np.ptp(ctrl) == 0:
                row["note"] = "no variation in either group: no test"
            else:
                res = stats.ttest_ind(vals, ctrl, equal_var=False)
                row["t"], row["p"] = float(res.statistic), float(res.pvalue)
                if min(vals.size, ctrl.size) < MIN_N_POWER:
                    row["note"] = (
                        f"low power: {vals.size} vs {ctrl.size} images; treat as descriptive"
                    )
            rows.append(row)
    cols = [
        "condition",
        "metric",
        "n",
        "n_control",
        "mean",
        "mean_control",
        "difference",
        "t",
        "p",
        "p_holm",
        "note",
    ]
    if not rows:
        return pd.DataFrame(columns=cols)
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _, idx in table.groupby("metric", sort=False).groups.items():
        table.loc[idx, "p_holm"] = holm(table.loc[idx, "p"].to_numpy())
    return table[cols]


# -- plots -------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colours(order: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(order)}


def _plot_per_image(
    images: pd.DataFrame, metrics: Sequence[Metric], order: Sequence[str], control: str | None
) -> str:
    import matplotlib.pyplot as plt

    n = len(metrics)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    colours = _colours(order)
    x = np.arange(len(order))
    rng = np.random.default_rng(0)  # fixed jitter: the report is reproducible
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        vals = [
            images.loc[images["condition"] == c, m.column].astype(float).dropna().to_numpy()
            * m.scale
            for c in order
        ]
        means = np.array([v.mean() if v.size else np.nan for v in vals])
        sems = np.array([v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0 for v in vals])
        ax.bar(
            x,
            means,
            yerr=sems,
            color=[colours[c] for c in order],
            alpha=0.35,
            capsize=4,
            edgecolor="black",
            linewidth=0.6,
        )
        for i, v in enumerate(vals):
            ax.scatter(
                i + rng.uniform(-0.15, 0.15, v.size),
                v,
                s=14,
                color=colours[order[i]],
                edgecolor="black",
                linewidth=0.4,
                zorder=3,
            )
        ax.set_xticks(x, [f"{c}*" if c == control else c for c in order], rotation=30, ha="right")
        ax.set_title(m.label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Per-image means (dots), condition mean +/- SEM (bars); * = control", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _plot_cells(cells: pd.DataFrame, order: Sequence[str], markers: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    panels = [("exo_spot_count", "EV puncta per cell", False)]
    if "exo_integrated_intensity" in cells:
        panels.append(("exo_integrated_intensity", "EV integrated intensity per cell (a.u.)", True))
    panels += [
        (f"{m}_mean_intensity", f"{m.upper()} mean intensity per cell (a.u.)", False)
        for m in markers
        if f"{m}_mean_intensity" in cells
    ]
    panels = [p for p in panels if p[0] in cells]
    ncol = min(len(panels), 2)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 3.4 * nrow), squeeze=False)
    colours = _colours(order)
    for ax, (col, label, logy) in zip(axes.ravel(), panels, strict=False):
        data = [
            cells.loc[cells["condition"] == c, col].astype(float).dropna().to_numpy() for c in order
        ]
        if logy:
            data = [np.log10(np.clip(d, 1.0, None)) for d in data]
            label = label + " (log10, floor 1)"
        keep = [i for i, d in enumerate(data) if d.size]
        if keep:
            parts = ax.violinplot(
                [data[i] for i in keep], positions=keep, showmedians=True, widths=0.8
            )
            for body, i in zip(parts["bodies"], keep, strict=True):
                body.set_facecolor(colours[order[i]])
                body.set_alpha(0.5)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Per-cell distributions (all cells of each condition; line = median)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _plot_dose(images: pd.DataFrame, metrics: Sequence[Metric], order: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    n = len(metrics)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    colours = _colours(order)
    dose = images["dose"].astype(float)
    positive = dose[dose > 0]
    linthresh = float(positive.min()) if len(positive) else 1.0
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        vals = images[m.column].astype(float) * m.scale
        for c in order:
            sel = images["condition"] == c
            ax.scatter(
                dose[sel],
                vals[sel],
                s=16,
                color=colours[c],
                edgecolor="black",
                linewidth=0.4,
                label=c,
                zorder=3,
            )
        g = vals.groupby(dose)
        mean, sem = g.mean(), g.std(ddof=1) / np.sqrt(g.count())
        ax.errorbar(
            mean.index,
            mean.to_numpy(),
            yerr=sem.fillna(0).to_numpy(),
            color="black",
            capsize=3,
            linewidth=1,
        )
        if dose.min() >= 0 and dose.max() / linthresh > 20:
            ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlabel(
            "dose"
            + (
                f" ({images['dose_unit'].dropna().iloc[0]})"
                if "dose_unit" in images and images["dose_unit"].notna().any()
                else ""
            )
        )
        ax.set_title(m.label, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, frameon=False)
    fig.suptitle("Dose-response: per-image values, mean +/- SEM per dose", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _thumbnails(
    qc_dir: Path, images: pd.DataFrame, order: Sequence[str], per_condition: int, size: int = 360
) -> list[tuple[str, str, str, Path]]:
    """(image, condition, base64 PNG, full-size path) of up to ``per_condition`` overlays per
    condition."""
    from PIL import Image

    if not qc_dir.is_dir():
        return []
    out = []
    for c in order:
        names = sorted(images.loc[images["condition"] == c, "image"].astype(str))
        for name in names[:per_condition]:
            # the cell overlay, else (tube- or collagen-only assays) the readout's picture
            candidates = [
                qc_dir / f"{name}_{kind}.png" for kind in ("overlay", "tubes", "collagen")
            ]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                continue
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size))
                buf = _io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
            out.append((name, c, base64.b64encode(buf.getvalue()).decode("ascii"), path))
    return out


# -- HTML --------------------------------------------------------------------------------------

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
    from .io import atomic_write

    out = Path(out) if out is not None else Path(results_dir) / "report.html"
    text = build_report(results_dir, control, link_base=out.parent)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    log.debug("wrote %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
