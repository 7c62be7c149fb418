"""Per-condition report: statistics on hand-built tables, and the HTML of a real batch run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from napari_exouptake.report import (
    Metric,
    ReportError,
    build_report,
    compare_to_control,
    condition_summary,
    holm,
    pick_control,
    write_report,
)


def test_holm_hand_values():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.2]), [0.5, 0.4])
    out = holm([np.nan, 0.02, 0.9])  # NaN (no test) is not counted in m
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [0.04, 0.9])
    np.testing.assert_allclose(holm([0.6, 0.7, 0.8]), [1.0, 1.0, 1.0])


def _images() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": [f"i{k}" for k in range(8)],
            "condition": ["ctrl"] * 3 + ["ev"] * 3 + ["one"] + ["ctrl2"],
            "n_cells": [10, 20, 30, 10, 10, 10, 5, 7],
            "mean_spots_per_cell": [1.0, 2.0, 3.0, 5.0, 6.0, 10.0, 4.0, 1.0],
            "exo_positive_fraction": [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.4, 0.1],
            "collagen_mean_angle_deg": [170.0, 10.0, 0.0, 80.0, 100.0, 90.0, 45.0, 0.0],
        }
    )


def test_condition_summary_mean_sem_and_axial_mean():
    metrics = [
        Metric("mean_spots_per_cell", "puncta"),
        Metric("exo_positive_fraction", "%", 100),
        Metric("collagen_mean_angle_deg", "angle", axial=True),
    ]
    table = condition_summary(_images(), metrics, order=["ctrl", "ev", "one"])
    assert table.index.tolist() == ["ctrl", "ev", "one"]
    assert table.loc["ctrl", "n_images"] == 3 and table.loc["ctrl", "n_cells"] == 60
    assert table.loc["ev", "mean_spots_per_cell_mean"] == pytest.approx(7.0)
    assert table.loc["ev", "mean_spots_per_cell_sem"] == pytest.approx(
        np.std([5, 6, 10], ddof=1) / np.sqrt(3)
    )
    assert table.loc["ctrl", "exo_positive_fraction_mean"] == pytest.approx(20.0)
    assert np.isnan(table.loc["one", "mean_spots_per_cell_sem"])  # one image: no SEM
    # 170, 10 and 0 degrees are fibres around 0/180: the axial mean is 0, not 60
    assert (
        min(
            table.loc["ctrl", "collagen_mean_angle_deg_mean"] % 180,
            180 - table.loc["ctrl", "collagen_mean_angle_deg_mean"] % 180,
        )
        < 1e-6
    )
    assert table.loc["ev", "collagen_mean_angle_deg_mean"] == pytest.approx(90.0)


def test_compare_to_control_welch_and_small_n():
    images = _images()
    metrics = [
        Metric("mean_spots_per_cell", "puncta"),
        Metric("collagen_mean_angle_deg", "angle", axial=True),
    ]
    st = compare_to_control(images, metrics, "ctrl", order=["ctrl", "ev", "one", "ctrl2"])
    assert st["metric"].tolist() == ["puncta"] * 3  # axial readouts are not tested
    ev = st.set_index("condition").loc["ev"]
    ref = stats.ttest_ind([5.0, 6.0, 10.0], [1.0, 2.0, 3.0], equal_var=False)
    assert ev["t"] == pytest.approx(ref.statistic) and ev["p"] == pytest.approx(ref.pvalue)
    assert ev["difference"] == pytest.approx(5.0)
    assert ev["p_holm"] == pytest.approx(ref.pvalue)  # the only test of the family
    one = st.set_index("condition").loc["one"]
    assert np.isnan(one["p"]) and "n too small" in one["note"] and "1 vs 3" in one["note"]


def test_pick_control():
    assert pick_control(["a", "Untreated"], None, {}) == "Untreated"
    run = {"config": {"positivity": {"control_condition": "a"}}}
    assert pick_control(["a", "untreated"], None, run) == "a"
    assert pick_control(["x", "y"], None, {}) is None
    with pytest.raises(ReportError, match="control condition 'z' is not in the results"):
        pick_control(["x", "y"], "z", {})


def test_report_from_images_table_only(tmp_path):
    _images().drop(columns="collagen_mean_angle_deg").to_csv(tmp_path / "images.csv", index=False)
    text = build_report(tmp_path, control="ctrl")
    assert "Welch" in text and "Holm" in text
    assert "n too small for a test (1 vs 3 images" in text
    assert "Per-cell distributions" not in text  # no cells table
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="holds no images.csv"):
        build_report(tmp_path / "empty")
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "nothing")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A real batch run: 8 simulated images, 4 conditions, doses from conditions.csv."""
    from napari_exouptake.batch import analyze_batch
    from napari_exouptake.simulate import write_dataset

    sim = tmp_path_factory.mktemp("sim")
    write_dataset(sim, n_images=8, seed=5, shape=(160, 160))
    out = tmp_path_factory.mktemp("results")
    res = analyze_batch(
        sim / "images",
        sim / "config.yaml",
        out,
        labels=sim / "labels",
        sample_sheet=sim / "conditions.csv",
    )
    assert res.exit_code == 0
    return out


@pytest.mark.slow  # the fixture's first collagen analysis JIT-compiles skan (~6 s)
def test_report_html_of_a_batch_run(results):
    from napari_exouptake.cli import main

    assert main(["report", str(results)]) == 0
    text = (results / "report.html").read_text()
    run = json.loads((results / "run.json").read_text())
    control = run["config"]["positivity"]["control_condition"]
    for cond in ("untreated", "dye_only", "ev_low", "ev_high"):
        assert f">{cond}<" in text or f">{cond} (control" in text
    assert f"{control} (control" in text
    assert "Welch's t-test" in text and "Holm" in text
    assert "Dose-response" in text and "Per-cell distributions" in text
    assert "QC overlays" in text and text.count("data:image/png;base64,") >= 4 + 8
    assert "% collagen area" in text  # collagen readouts of the simulated config
    assert "src='http" not in text and 'src="http' not in text  # self-contained


@pytest.mark.slow
def test_report_cli_bad_control_exits_2(results, tmp_path, capsys):
    from napari_exouptake.cli import main

    assert main(["report", str(results), "--control", "nope"]) == 2
    assert "control condition 'nope'" in capsys.readouterr().err
    out = write_report(results, out=tmp_path / "r.html", control="untreated")
    assert "untreated (control)" in out.read_text()


def test_report_without_conditions_or_control(tmp_path):
    _images().drop(columns=["condition"]).to_csv(tmp_path / "images.csv", index=False)
    text = build_report(tmp_path)
    assert "No control condition" in text and ">all<" in text


def test_order_control_first_then_control_like_then_by_dose():
    from napari_exouptake.report import condition_order

    images = pd.DataFrame(
        {
            "condition": ["ev_high", "ev_low", "untreated", "dye_only", "ev_mid"],
            "dose": [50.0, 10.0, 0.0, 0.0, 20.0],
        }
    )
    assert condition_order(images, "dye_only") == [
        "dye_only",
        "untreated",
        "ev_low",
        "ev_mid",
        "ev_high",
    ]
    assert condition_order(images.drop(columns="dose"), None)[:2] == ["dye_only", "untreated"]


def _run_with_positivity(tmp_path):
    _images().to_csv(tmp_path / "images.csv", index=False)
    run = {
        "config": {"positivity": {"control_condition": "ctrl"}},
        "thresholds": {"exo": 4.0},
        "positivity": {
            "exo": {
                "method": "control",
                "metric": "exo_spot_count",
                "percentile": 95.0,
                "threshold": 4.0,
                "comparison": ">",
                "n_positive": 30,
                "n_cells": 102,
                "fitted_on": "60 control cells of condition 'ctrl'",
                "control_condition": "ctrl",
                "warnings": [],
            },
            "cd31": {
                "method": "auto",
                "metric": "cd31_mean_intensity",
                "threshold": 180.5,
                "comparison": ">=",
                "rule": "single_population",
                "n_positive": 1,
                "n_cells": 102,
                "fitted_on": "all 102 cells of the run (2 image(s))",
                "warnings": ["no separate positive population (two-population fit: D = 1.10)"],
            },
        },
    }
    (tmp_path / "run.json").write_text(json.dumps(run))


def test_report_control_row_shows_its_cutoff_and_warnings(tmp_path):
    _run_with_positivity(tmp_path)
    text = build_report(tmp_path)
    assert "ctrl (control; sets the EV cut-off, its 95th percentile: EV-positive if " in text
    assert "exo_spot_count &gt; 4)" in text
    assert "class='warn'" in text and "CD31: no separate positive population" in text
    assert "cd31_mean_intensity &gt;= 180" in text and "60 control cells" in text


def test_report_thumbnails_link_to_full_images(tmp_path):
    import imageio.v3 as iio

    _run_with_positivity(tmp_path)
    (tmp_path / "qc").mkdir()
    iio.imwrite(tmp_path / "qc" / "i0_overlay.png", np.zeros((600, 500, 3), np.uint8))
    text = write_report(tmp_path).read_text()
    assert "<a href='qc/i0_overlay.png'" in text
    elsewhere = write_report(tmp_path, out=tmp_path / "sub" / "r.html").read_text()
    assert "<a href='../qc/i0_overlay.png'" in elsewhere
