"""``exouptake validate RESULTS_DIR --truth DIR``.

Prints accuracy against ground truth and agreement with reference results; the metrics are
those of :mod:`napari_exouptake.validation`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..validation import (
    DEFAULT_TOLERANCES,
    DEFAULT_TOLERANCES_SEGMENTATION,
    RunTables,
    accuracy_against_truth,
    compare_results,
    format_accuracy,
    format_comparisons,
    read_results,
)


def _truth_from_folder(d: Path) -> dict[str, Any]:
    """Ground truth found in a simulator-layout or bundle folder."""
    truth: dict[str, Any] = {}
    if (d / "truth_spots.csv").is_file():
        truth["truth_spots"] = pd.read_csv(d / "truth_spots.csv")
    if (d / "truth_cells.csv").is_file():
        truth["truth_cells"] = pd.read_csv(d / "truth_cells.csv")
    lab_dir = d / "labels"
    if lab_dir.is_dir() and any(lab_dir.glob("*_cells.tif")):

        def labels(name: str, _dir: Path = lab_dir) -> Path | None:
            p = _dir / f"{name}_cells.tif"
            return p if p.is_file() else None

        truth["truth_labels"] = labels
    return truth


def _labels_given(results_dir: Path) -> bool:
    """True when run.json says every image was quantified with given (not segmented) labels."""
    import json

    run = results_dir / "run.json"
    if not run.is_file():
        return False
    try:
        info = json.loads(run.read_text())
        sources = [img.get("segmentation", {}).get("source") for img in info["images"].values()]
    except (ValueError, KeyError, AttributeError, TypeError):
        return False
    return bool(sources) and all(s not in (None, "cellpose") for s in sources)


def main_validate(results_dir: str | Path, truth_dir: str | Path) -> int:
    """``exouptake validate RESULTS_DIR --truth DIR``.

    ``DIR`` may hold ground truth (simulator layout: ``truth_spots.csv``, ``truth_cells.csv``,
    ``labels/<image>_cells.tif``), reference results (``cells.csv``, ``images.csv``, ...), or be
    a dataset bundle (folder or ``.zip``: its ground truth and its ``reference/`` results, with
    the bundle's tolerances). Prints accuracy against ground truth and agreement per metric.

    Returns
    -------
    int
        0 when every reference metric agrees (or there is no reference), 1 when one disagrees
        (named on stderr), 2 when a folder is missing or unusable.
    """
    results_dir = Path(results_dir)
    truth_dir = Path(truth_dir)
    try:
        run = read_results(results_dir)
    except FileNotFoundError as exc:
        print(f"exouptake validate: error: {exc}", file=sys.stderr)
        return 2
    if not truth_dir.exists():
        print(f"exouptake validate: error: {truth_dir} does not exist", file=sys.stderr)
        return 2
    tolerances: Mapping[str, Any] = DEFAULT_TOLERANCES
    reference: RunTables | None = None
    truth: dict[str, Any] = {}
    tmp = None
    try:
        if truth_dir.suffix.lower() == ".zip" or (truth_dir / "dataset.yaml").is_file():
            from ..datasets import DatasetError, open_bundle

            try:
                bundle = open_bundle(truth_dir)
            except DatasetError as exc:
                print(f"exouptake validate: error: {exc}", file=sys.stderr)
                return 2
            tmp = bundle
            root = bundle.root
            truth = _truth_from_folder(root)
            tolerances = bundle.tolerances
            if bundle.reference_dir is not None:
                reference = read_results(bundle.reference_dir)
        else:
            truth = _truth_from_folder(truth_dir)
            if (truth_dir / "cells.csv").is_file() and (truth_dir / "images.csv").is_file():
                reference = read_results(truth_dir)
                if not _labels_given(truth_dir):
                    tolerances = DEFAULT_TOLERANCES_SEGMENTATION
        if not truth and reference is None:
            print(
                f"exouptake validate: error: {truth_dir} holds neither ground truth "
                "(truth_spots.csv, truth_cells.csv, labels/) nor reference results "
                "(cells.csv, images.csv)",
                file=sys.stderr,
            )
            return 2
        given = _labels_given(results_dir)
        if truth:
            acc = accuracy_against_truth(
                run.cells, run.spots, pred_labels=run.labels, labels_given=given, **truth
            )
            print(format_accuracy(acc))
        if reference is None:
            return 0
        comparisons = compare_results(run, reference, tolerances)
        print("agreement with the reference results:")
        print(format_comparisons(comparisons))
        bad = [c.metric for c in comparisons if not c.ok]
        if bad:
            print(
                f"exouptake validate: disagrees with the reference in: {', '.join(bad)}",
                file=sys.stderr,
            )
            return 1
        print(f"all {len(comparisons)} metrics agree with the reference")
        return 0
    finally:
        if tmp is not None:
            tmp.close()
