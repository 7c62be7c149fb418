"""Per-condition statistics of per-image readouts: order, control, Welch tests, Holm."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError

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
