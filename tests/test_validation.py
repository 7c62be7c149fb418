"""Accuracy metrics (IoU matching, AP, punctum F1, count correlation) and reference comparison."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from napari_exouptake import validation as V
from napari_exouptake.commands.validate import main_validate


# -- segmentation -----------------------------------------------------------------------------
def _squares() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((40, 40), np.uint16)
    truth[0:10, 0:10] = 1  # pred 5 shifted by 2 columns: IoU 80/120
    truth[20:30, 0:10] = 2  # pred 6 shifted by 5 columns: IoU 50/150 (no match)
    truth[20:30, 20:30] = 3  # missed entirely
    pred = np.zeros_like(truth)
    pred[0:10, 2:12] = 5
    pred[20:30, 5:15] = 6
    pred[0:5, 30:35] = 7  # false positive
    return truth, pred


def test_match_labels_known_ious():
    truth, pred = _squares()
    m = V.match_labels(truth, pred, 0.5)
    assert m.truth_ids.tolist() == [1] and m.pred_ids.tolist() == [5]
    assert m.iou[0] == pytest.approx(80 / 120)
    assert (m.tp, m.fp, m.fn) == (1, 2, 2)
    assert m.ap == pytest.approx(1 / 5)
    low = V.match_labels(truth, pred, 0.3)
    pairs = sorted(zip(low.truth_ids.tolist(), low.pred_ids.tolist(), strict=True))
    assert pairs == [(1, 5), (2, 6)]
    assert V.average_precision(truth, truth, (0.5, 0.9)).tolist() == [1.0, 1.0]
    empty = np.zeros_like(truth)
    assert V.match_labels(empty, empty).ap == 1.0
    assert V.match_labels(truth, empty).ap == 0.0


def test_match_labels_contested_at_low_threshold():
    truth = np.zeros((10, 20), np.int32)
    truth[:, 0:10] = 1
    truth[:, 10:20] = 2
    pred = np.zeros_like(truth)
    pred[:, 2:17] = 9  # overlaps 1 (IoU 8/17) and 2 (IoU 7/18): one-to-one picks the larger
    m = V.match_labels(truth, pred, 0.3)
    assert m.truth_ids.tolist() == [1] and m.pred_ids.tolist() == [9]


def test_match_labels_input_checks():
    with pytest.raises(ValueError, match="shape"):
        V.match_labels(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer"):
        V.match_labels(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="threshold"):
        V.match_labels(np.zeros((3, 3), int), np.zeros((3, 3), int), 0.0)


@pytest.mark.slow  # importing cellpose (torch) takes ~10 s
def test_average_precision_agrees_with_cellpose(tmp_path):
    metrics = pytest.importorskip("cellpose.metrics")
    from skimage.segmentation import relabel_sequential

    from napari_exouptake.io import read_labels
    from napari_exouptake.simulate import write_dataset

    d = write_dataset(tmp_path / "s", n_images=2, seed=5, shape=(128, 128))
    rng = np.random.default_rng(0)
    for name in ("untreated_000", "dye_only_001"):
        truth = read_labels(d / "labels" / f"{name}_cells.tif").astype(np.int32)
        # a degraded prediction: shifted, one object dropped, one merged into a neighbour
        pred = np.roll(truth, (2, 3), axis=(0, 1))
        ids = np.unique(pred[pred > 0])
        pred[pred == ids[0]] = 0
        pred[pred == ids[1]] = ids[2]
        pred[rng.random(pred.shape) < 0.01] = 0
        # cellpose counts objects as the largest label: give it consecutive labels
        pred = relabel_sequential(pred)[0]
        truth = relabel_sequential(truth)[0]
        ours = V.average_precision(truth, pred, (0.5, 0.75, 0.9))
        ap, _, _, _ = metrics.average_precision([truth], [pred], threshold=[0.5, 0.75, 0.9])
        np.testing.assert_allclose(ours, ap[0], atol=1e-9)
        assert 0.3 < ours[0] < 1.0


# -- puncta and counts ------------------------------------------------------------------------
def test_spot_accuracy_within_2px():
    truth = pd.DataFrame({"image": ["a"] * 3 + ["b"], "y": [10, 20, 30, 5], "x": [10, 20, 30, 5]})
    pred = pd.DataFrame({"image": ["a"] * 4, "y": [11.5, 20, 33, 50], "x": [10, 21.9, 30, 50]})
    t = V.spot_accuracy(pred, truth, max_dist=2.0)
    a = t.set_index("image")
    assert a.loc["a", ["tp", "fp", "fn"]].tolist() == [2, 2, 1]  # 3 px and 50 px: no match
    assert a.loc["b", ["tp", "fp", "fn"]].tolist() == [0, 0, 1]
    assert a.loc["ALL", "f1"] == pytest.approx(2 * 2 / (4 + 4))
    assert a.loc["ALL", "precision"] == pytest.approx(0.5)
    assert a.loc["ALL", "recall"] == pytest.approx(0.5)
    assert a.loc["ALL", "mean_distance_px"] == pytest.approx((1.5 + 1.9) / 2)
    with pytest.raises(ValueError, match="lacks column"):
        V.spot_accuracy(pred.drop(columns="x"), truth)


def test_count_correlation():
    c = V.count_correlation([0, 1, 2, 3], [0, 1, 2, 5])
    assert c["pearson_r"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [0, 1, 2, 5])[0, 1])
    assert c["mean_abs_error"] == pytest.approx(0.5) and c["bias"] == pytest.approx(-0.5)
    assert c["exact_fraction"] == pytest.approx(0.75)
    assert np.isnan(V.count_correlation([1, 1], [1, 2])["pearson_r"])  # constant side
    with pytest.raises(ValueError, match="values"):
        V.count_correlation([1, 2], [1])


def test_accuracy_against_truth_matches_cells_by_overlap():
    truth, _ = _squares()
    pred = np.zeros_like(truth)
    pred[0:10, 1:11] = 7  # truth 1 (IoU 90/110)
    pred[20:30, 20:30] = 4  # truth 3 exactly
    cells = pd.DataFrame({"image": "a", "cell_id": [4, 7], "exo_spot_count": [5, 2]})
    truth_cells = pd.DataFrame({"image": "a", "cell_id": [1, 2, 3], "n_spots": [2, 9, 4]})
    acc = V.accuracy_against_truth(
        cells, None, truth_cells=truth_cells, pred_labels={"a": pred}, truth_labels={"a": truth}
    )
    assert acc["count"]["n_cells"] == 2 and acc["count"]["n_truth_cells"] == 3
    assert acc["count"]["mean_abs_error"] == pytest.approx(0.5)  # (|2-2| + |5-4|) / 2
    assert acc["segmentation_ap50"] == pytest.approx(2 / 3)
    assert "segmentation AP@0.5: 0.667" in V.format_accuracy(acc)


# -- tolerances and reference comparison ------------------------------------------------------
def test_resolve_tolerance_most_specific_wins():
    tol = {"cells.*": {"rtol": 0.1}, "cells.*_positive": {"atol": 0}, "cells.area_px": {"atol": 2}}
    assert V.resolve_tolerance("cells.area_px", tol).atol == 2
    assert V.resolve_tolerance("cells.cd31_positive", tol) == V.Tolerance(atol=0)
    assert V.resolve_tolerance("cells.exo_mean_intensity", tol).rtol == 0.1
    assert V.resolve_tolerance("images.n_cells", tol) == V.Tolerance()  # exact by default
    with pytest.raises(ValueError, match="unknown key"):
        V.resolve_tolerance("x", {"x": {"rtl": 1}})
    with pytest.raises(ValueError, match=">= 0"):
        V.resolve_tolerance("x", {"x": {"atol": -1}})


def _tables() -> V.RunTables:
    cells = pd.DataFrame(
        {
            "image": ["a", "a", "b"],
            "cell_id": [1, 2, 1],
            "area_px": [100, 120, 90],
            "exo_spot_count": [3, 0, 1],
            "exo_mean_intensity": [10.0, 12.5, 9.0],
            "exo_positive": [True, False, True],
            "condition": ["x", "x", "y"],
        }
    )
    images = pd.DataFrame(
        {
            "image": ["a", "b"],
            "n_cells": [2, 1],
            "n_spots": [3, 1],
            "exo_positive_fraction": [0.5, 1.0],
        }
    )
    spots = pd.DataFrame({"image": ["a", "a", "a", "b"], "y": [1.0, 5, 9, 3], "x": [1.0, 5, 9, 3]})
    return V.RunTables(cells, images, spots)


def test_compare_identical_and_perturbed():
    ref = _tables()
    ok = V.compare_results(_tables(), ref, V.DEFAULT_TOLERANCES)
    assert ok and all(c.ok for c in ok)
    names = {c.metric for c in ok}
    assert {
        "images.n_cells",
        "images.n_spots",
        "cells.area_px",
        "cells.exo_spot_count",
        "cells.exo_positive",
        "spots.f1",
    } <= names
    assert "cells.condition" not in names and "cells.cell_id" not in names
    new = _tables()
    new.cells.loc[1, "exo_mean_intensity"] = 12.6  # 0.8 % > rtol 1e-3
    new.images.loc[0, "n_spots"] = 4
    new.spots.loc[0, "x"] = 1.8  # moved 0.8 px > 0.5 px
    res = {c.metric: c for c in V.compare_results(new, ref, V.DEFAULT_TOLERANCES)}
    bad = sorted(m for m, c in res.items() if not c.ok)
    assert bad == ["cells.exo_mean_intensity", "images.n_spots", "spots.f1"]
    assert "image a cell 2" in res["cells.exo_mean_intensity"].detail
    assert res["spots.f1"].score == pytest.approx(2 * 3 / 8)
    table = V.format_comparisons(list(res.values()))
    assert "DISAGREES" in table and "images.n_spots" in table


def test_compare_missing_image_and_column():
    ref = _tables()
    new = _tables()
    new.images = new.images[new.images["image"] == "a"].drop(columns="exo_positive_fraction")
    new.cells = new.cells[new.cells["image"] == "a"]
    res = {c.metric: c for c in V.compare_results(new, ref)}
    assert not res["images.image"].ok and "b" in res["images.image"].detail
    assert not res["images.exo_positive_fraction"].ok
    assert not res["cells.area_px"].ok and "1 unmatched" in res["cells.area_px"].detail


# -- exouptake validate RESULTS --truth DIR ----------------------------------------------------
@pytest.fixture(scope="module")
def run_and_truth(tmp_path_factory):
    """A results folder from the real pipeline (true labels given) and the simulator's truth."""
    from napari_exouptake.config import load_config
    from napari_exouptake.pipeline import analyze_image, finalize, write_outputs
    from napari_exouptake.simulate import write_dataset

    base = tmp_path_factory.mktemp("val")
    truth = write_dataset(base / "truth", n_images=2, seed=21, shape=(128, 128))
    cfg = load_config(truth / "config.yaml")
    results = [
        analyze_image(p, cfg, labels=truth / "labels" / f"{p.name[:-8]}_cells.tif")
        for p in sorted((truth / "images").glob("*.ome.tif"))
    ]
    write_outputs(finalize(results, cfg), base / "run", cfg, overlays=False)
    return base / "run", truth


def test_main_validate_against_truth(run_and_truth, capsys):
    run, truth = run_and_truth
    assert main_validate(run, truth) == 0
    out = capsys.readouterr().out
    assert "puncta (match <= 2 px): F1" in out and "per-cell puncta count: Pearson r" in out
    assert "segmentation AP@0.5: 1.000 (ground-truth labels were given" in out


def test_main_validate_against_reference_folder(run_and_truth, tmp_path, capsys):
    run, _ = run_and_truth
    assert main_validate(run, run) == 0  # a run agrees with itself
    assert "metrics agree" in capsys.readouterr().out
    ref = tmp_path / "ref"
    shutil.copytree(run, ref)
    cells = pd.read_csv(ref / "cells.csv")
    cells.loc[0, "area_px"] += 3
    cells.to_csv(ref / "cells.csv", index=False)
    assert main_validate(run, ref) == 1
    assert "cells.area_px" in capsys.readouterr().err
    assert main_validate(tmp_path / "nope", ref) == 2


def test_validate_cli_entry(run_and_truth):
    from napari_exouptake.cli import main

    run, truth = run_and_truth
    assert main(["validate", str(run), "--truth", str(truth)]) == 0
