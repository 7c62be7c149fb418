"""Positivity rules (``fixed``, ``auto``, ``control``): calls per cell and a record of each rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .thresholds import MIN_AUTO_CELLS, control_threshold, mixture_threshold


def _rule_attr(rule: Any, key: str, default: Any = None) -> Any:
    if rule is None:
        return default
    if isinstance(rule, Mapping):
        return rule.get(key, default)
    return getattr(rule, key, default)


def _metric_column(df: pd.DataFrame, prefix: str, metric: str) -> str:
    for cand in (metric, f"{prefix}_{metric}"):
        if cand in df.columns:
            return cand
    raise ValueError(
        f"positivity metric {metric!r} for {prefix!r}: neither {metric!r} nor "
        f"{prefix + '_' + metric!r} is a column of the cells table"
    )


def _threshold_for(
    rule: Any, values: np.ndarray, control_values: np.ndarray | None, what: str
) -> tuple[float, bool, dict[str, Any]]:
    """Threshold, whether the comparison is strict (``>``) or not (``>=``), and its record."""
    method = _rule_attr(rule, "method", "auto")
    if method == "fixed":
        value = _rule_attr(rule, "value")
        if value is None:
            raise ValueError(f"positivity for {what}: method 'fixed' needs a value")
        return float(value), False, {"fitted_on": "fixed value", "warnings": []}
    if method == "auto":
        thr, info = mixture_threshold(values)
        info["fitted_on"] = f"all {info['n_cells']} cells of the run"
        return thr, False, info
    if method == "control":
        if control_values is None:
            raise ValueError(
                f"positivity for {what}: method 'control' needs control cells "
                "(set positivity.control_condition and pass control_cells)"
            )
        cv = control_values[np.isfinite(control_values)]
        if cv.size == 0:
            raise ValueError(f"positivity for {what}: the control cells have no finite values")
        pct = float(_rule_attr(rule, "percentile", 95.0))
        info = {"fitted_on": f"{cv.size} control cells", "n_cells": int(cv.size), "warnings": []}
        if cv.size < MIN_AUTO_CELLS:
            info["warnings"].append(
                f"the control has {cv.size} cells (fewer than {MIN_AUTO_CELLS}): its "
                f"{pct:g}th percentile is uncertain"
            )
        return control_threshold(cv, pct), True, info
    raise ValueError(f"positivity for {what}: unknown method {method!r} (fixed, auto, control)")


def positivity_calls(
    cells_df: pd.DataFrame,
    positivity_cfg: Any = None,
    marker_names: Sequence[str] | None = None,
    control_cells: pd.DataFrame | None = None,
    *,
    marker_rules: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, dict[str, Any]]]:
    """:func:`apply_positivity` plus a record of each rule.

    Returns
    -------
    (pandas.DataFrame, dict of str to float, dict of str to dict)
        As :func:`apply_positivity`, and per readout (``"exo"``, marker names): ``method``,
        ``metric`` (the column), ``percentile`` (control rules), ``threshold``,
        ``comparison`` (``">="`` or ``">"``), ``fitted_on`` (which cells), ``rule``
        (``auto``: ``mixture`` or ``single_population``), ``n_positive``, ``n_cells`` and
        ``warnings`` (sentences, empty when all is well).
    """
    if not isinstance(cells_df, pd.DataFrame):
        raise ValueError(f"cells_df must be a pandas DataFrame, got {type(cells_df).__name__}")
    exo_rule = _rule_attr(positivity_cfg, "exosome") or {
        "method": "fixed",
        "value": 1,
        "metric": "exo_spot_count",
    }
    default_marker_rule = _rule_attr(positivity_cfg, "markers") or {
        "method": "auto",
        "metric": "mean_intensity",
    }
    if marker_names is None:
        marker_names = [
            c[: -len("_mean_intensity")]
            for c in cells_df.columns
            if c.endswith("_mean_intensity") and not c.startswith("exo_")
        ]
    out = cells_df.copy()
    thresholds: dict[str, float] = {}
    records: dict[str, dict[str, Any]] = {}
    jobs = [("exo", exo_rule)] + [
        (m, (marker_rules or {}).get(m) or default_marker_rule) for m in marker_names
    ]
    for prefix, rule in jobs:
        metric = _rule_attr(rule, "metric", "mean_intensity")
        col = _metric_column(out, prefix, metric)
        vals = out[col].to_numpy(dtype=float)
        cvals = None
        if control_cells is not None:
            if col not in control_cells.columns:
                raise ValueError(f"control cells lack column {col!r}")
            cvals = control_cells[col].to_numpy(dtype=float)
        thr, strict, info = _threshold_for(rule, vals, cvals, prefix)
        with np.errstate(invalid="ignore"):
            pos = (vals > thr if strict else vals >= thr) & np.isfinite(vals)
        out[f"{prefix}_positive"] = pos
        thresholds[prefix] = thr
        method = _rule_attr(rule, "method", "auto")
        rec: dict[str, Any] = {"method": method, "metric": col}
        if method == "control":
            rec["percentile"] = float(_rule_attr(rule, "percentile", 95.0))
        rec.update(
            threshold=thr if np.isfinite(thr) else None,
            comparison=">" if strict else ">=",
            n_positive=int(pos.sum()),
            n_cells=int(len(vals)),
        )
        rec.update({k: v for k, v in info.items() if k != "n_cells"})
        if "n_cells" in info:
            rec["n_cells_fitted"] = info["n_cells"]
        records[prefix] = rec
    return out, thresholds, records


def apply_positivity(
    cells_df: pd.DataFrame,
    positivity_cfg: Any = None,
    marker_names: Sequence[str] | None = None,
    control_cells: pd.DataFrame | None = None,
    *,
    marker_rules: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Call every cell positive or negative for uptake and for each marker.

    Parameters
    ----------
    cells_df : pandas.DataFrame
        Output of :func:`measure_cells`.
    positivity_cfg : PositivityConfig, optional
        ``.exosome`` and ``.markers`` rules (``PositivityRule``: ``method``, ``value``,
        ``metric``, ``percentile``). None: uptake = at least one punctum, markers = auto.
    marker_names : sequence of str, optional
        Default: every ``<name>`` with a ``<name>_mean_intensity`` column (exosome excluded).
    control_cells : pandas.DataFrame, optional
        Cells of the control condition (e.g. dye-only) for ``control`` rules.
    marker_rules : dict of str to PositivityRule, optional
        Per-marker rules overriding ``positivity_cfg.markers`` (``MarkerConfig.positivity``).

    Returns
    -------
    (pandas.DataFrame, dict of str to float)
        A copy with bool ``exo_positive`` and ``<name>_positive`` columns, and the threshold
        used for each (keys ``"exo"`` and the marker names). ``fixed``: ``metric >= value``;
        ``auto`` (:func:`mixture_threshold`): ``metric >= threshold``; ``control``
        (:func:`control_threshold`): ``metric >`` the percentile of the control cells.
    """
    out, thresholds, _ = positivity_calls(
        cells_df, positivity_cfg, marker_names, control_cells, marker_rules=marker_rules
    )
    return out, thresholds
