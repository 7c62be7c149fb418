"""The run-level step: positivity thresholds over all images of a run, and per-image summaries.

``auto`` and ``control`` thresholds depend on every cell of a run (for example the dye-only
control's cells), so they are set once per run, after every image was measured
(:func:`napari_exouptake.pipeline.measure_image`), by :func:`finalize`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import pandas as pd

from .config import CONTROL_EXO_RULE, AssayConfig, ConfigError, PositivityConfig, PositivityRule
from .results import AnalysisResult

__all__ = ["MIN_AUTO_IMAGES", "finalize"]

log = logging.getLogger(__name__)

#: an ``auto`` threshold fitted on fewer images than this is reported with a warning
MIN_AUTO_IMAGES = 3


def finalize(
    results: Sequence[AnalysisResult],
    config: AssayConfig,
    control_cells: pd.DataFrame | None = None,
    *,
    pending_control_ok: bool = False,
) -> list[AnalysisResult]:
    """Apply positivity thresholds over a whole run and fill each image's summary.

    ``auto`` thresholds are computed from all cells of the run pooled; ``control`` thresholds
    from the cells of ``config.positivity.control_condition`` (or ``control_cells`` when given,
    e.g. from a separate control plate). The result is independent of the order of images.

    Parameters
    ----------
    results : sequence of AnalysisResult
    config : AssayConfig
    control_cells : pandas.DataFrame, optional
    pending_control_ok : bool
        One image of a run analysed alone: a ``control`` rule without control cells uses a
        provisional rule (recorded as ``positivity_pending``) instead of raising.

    Returns
    -------
    list of AnalysisResult
        New results with ``*_positive`` columns, ``thresholds`` and ``summary`` set.
    """
    from . import measure

    if not results:
        return []
    markers = list(config.channels.markers)
    frames = [r.cells for r in results]
    all_cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    control = config.positivity.control_condition
    if control_cells is None and control is not None and "condition" in all_cells.columns:
        sel = all_cells["condition"] == control
        control_cells = all_cells[sel] if sel.any() else None
    no_control = control_cells is None or len(control_cells) == 0
    positivity, marker_rules, pending, run_warnings = _rules_for_the_run(
        config, results, no_control, pending_control_ok
    )
    if config.image_level_only():  # no cells: nothing to call positive
        classified, thresholds, records = all_cells, {}, {}
    else:
        classified, thresholds, records = measure.positivity_calls(
            all_cells,
            positivity,
            markers,
            control_cells=control_cells,
            marker_rules=marker_rules,
        )
        _annotate_records(records, results, control, run_warnings, pending_control_ok)
    return _with_calls(results, config, markers, classified, thresholds, records, pending)


def _rules_for_the_run(
    config: AssayConfig,
    results: Sequence[AnalysisResult],
    no_control: bool,
    pending_control_ok: bool,
) -> tuple[PositivityConfig, dict, bool, list[str]]:
    """The positivity rules this run can apply: the config's, or, without control cells,
    the fallbacks (with a warning, or pending when one image is analysed alone).

    Returns the rules, the per-marker rules, whether positivity is pending the control and the
    run's warnings.
    """
    control = config.positivity.control_condition
    marker_rules = {
        k: m.positivity for k, m in config.channels.markers.items() if m.positivity is not None
    }
    positivity = config.positivity
    pending = False
    implied_only = positivity.exosome == PositivityRule(**CONTROL_EXO_RULE) and not any(
        r.method == "control" for r in [positivity.markers, *marker_rules.values()]
    )
    run_warnings: list[str] = []
    if no_control and implied_only and not pending_control_ok:
        # the cut-off implied by control_condition, and no control image in this run: the
        # run still gets its tables, with the rule used and a warning on record
        found = sorted({str(r.condition) for r in results})
        run_warnings.append(
            f"no {control!r} (control_condition) cells in this run (conditions: "
            f"{', '.join(found)}): EV-positive = at least 1 punctum instead of the control's "
            "95th percentile; include the control's images to use it"
        )
        positivity = positivity.model_copy(
            update={"exosome": PositivityRule(method="fixed", value=1, metric="exo_spot_count")}
        )
    uses_control = positivity.exosome.method == "control" or any(
        r.method == "control" for r in [positivity.markers, *marker_rules.values()]
    )
    if uses_control and no_control:
        if not pending_control_ok:
            found = sorted({str(r.condition) for r in results})
            raise ConfigError(
                "positivity method 'control' needs cells of the control condition "
                f"{control!r} (positivity.control_condition); the images' conditions are "
                f"{', '.join(found)}. Add the control's images to the run, or remove "
                "control_condition, or give positivity.exosome a fixed rule"
            )
        pending = True
        log.info(
            "no %r control cells among these images: until the run-level thresholds are "
            "applied, 'control' uptake uses >= 1 punctum and 'control' markers use 'auto'",
            control,
        )

        def _auto(rule):
            return rule.model_copy(update={"method": "auto"}) if rule.method == "control" else rule

        exo_rule = positivity.exosome
        if exo_rule.method == "control":  # until the control is in: at least one punctum
            exo_rule = exo_rule.model_copy(
                update={"method": "fixed", "value": 1.0, "metric": "exo_spot_count"}
            )
        positivity = positivity.model_copy(
            update={"exosome": exo_rule, "markers": _auto(positivity.markers)}
        )
        marker_rules = {k: _auto(v) for k, v in marker_rules.items()}
    return positivity, marker_rules, pending, run_warnings


def _annotate_records(
    records: dict,
    results: Sequence[AnalysisResult],
    control: str | None,
    run_warnings: list[str],
    pending_control_ok: bool,
) -> None:
    """Say in each threshold's record what it was fitted on, with its warnings (logged)."""
    conds = sorted({str(r.condition) for r in results if r.condition is not None})
    if run_warnings:
        records["exo"]["warnings"] = [*run_warnings, *records["exo"].get("warnings", [])]
        records["exo"]["fitted_on"] = f"fixed value (no {control!r} cells in the run)"
    for key, rec in records.items():
        if rec.get("method") == "auto":
            rec["fitted_on"] = f"{rec['fitted_on']} ({len(results)} image(s)" + (
                f"; conditions {', '.join(conds)})" if conds else ")"
            )
            if len(results) < MIN_AUTO_IMAGES:
                rec["warnings"].append(
                    f"fitted on {len(results)} image(s) only: 'auto' thresholds depend on "
                    "which images are in the run; compare runs with fixed or control "
                    "thresholds"
                )
        if rec.get("method") == "control" and control is not None:
            rec["fitted_on"] = f"{rec['fitted_on']} of condition {control!r}"
            rec["control_condition"] = control
        for w in rec.get("warnings", []):  # one image of a run (pending_control_ok): quiet
            log.log(
                logging.DEBUG if pending_control_ok else logging.WARNING,
                "positivity %s (%s): %s",
                key,
                rec["metric"],
                w,
            )


def _with_calls(
    results: Sequence[AnalysisResult],
    config: AssayConfig,
    markers: list[str],
    classified: pd.DataFrame,
    thresholds: dict,
    records: dict,
    pending: bool,
) -> list[AnalysisResult]:
    """Each image's result with its classified cells, the thresholds and its summary."""
    from . import measure

    out = []
    start = 0
    for r in results:
        n = len(r.cells)
        cells = classified.iloc[start : start + n].reset_index(drop=True)
        start += n
        summary = (
            {} if config.image_level_only() else measure.summarize_image(cells, r.spots, markers)
        )
        summary = {"image": r.image, **summary}
        if r.condition is not None:
            summary["condition"] = r.condition
        summary.update(r.extras.get("readouts", {}))
        prov = {**r.provenance, "positivity_pending": pending}
        extras = {**r.extras, "positivity": records}
        out.append(
            replace(
                r,
                cells=cells,
                thresholds=dict(thresholds),
                summary=summary,
                provenance=prov,
                extras=extras,
            )
        )
    return out
