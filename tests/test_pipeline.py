"""pipeline.analyze_image / finalize / write_outputs with labels given (no network)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_exouptake import pipeline
from napari_exouptake.config import AssayConfig, ConfigError, load_config, save_config
from napari_exouptake.io import from_array, read_image
from napari_exouptake.progress import Cancelled

SAMPLE = pipeline.sample_data_dir()
CELL_COLUMNS = [
    "image",
    "cell_id",
    "area_px",
    "centroid_y",
    "centroid_x",
    "exo_spot_count",
    "exo_spot_estimate",
    "exo_integrated_intensity",
    "exo_mean_intensity",
    "exo_positive",
    "cd31_mean_intensity",
    "cd31_integrated_intensity",
    "cd31_positive",
    "col1_mean_intensity",
    "col1_integrated_intensity",
    "col1_positive",
]
SPOT_COLUMNS = ["image", "spot_id", "y", "x", "intensity", "cell_id"]
IMAGE_COLUMNS = [
    "image",
    "n_cells",
    "n_spots",
    "mean_spots_per_cell",
    "exo_positive_fraction",
    "cd31_positive_fraction",
    "col1_positive_fraction",
    "collagen_area_fraction",
    "collagen_coherency",
    "collagen_mean_angle_deg",
]


@pytest.fixture(scope="module")
def sample():
    cfg = load_config(SAMPLE / "config.yaml")
    path = sorted((SAMPLE / "images").glob("ev_high_*.ome.tif"))[0]
    name = path.name.replace(".ome.tif", "")
    return (
        cfg,
        path,
        SAMPLE / "labels" / f"{name}_cells.tif",
        SAMPLE / "labels" / f"{name}_nuclei.tif",
    )


def test_analyze_with_labels_contract(sample, tmp_path):
    cfg, path, cells, nuclei = sample
    r = pipeline.analyze_image(path, cfg, labels=cells, nuclei=nuclei)
    truth = read_image(path)
    from napari_exouptake.io import read_labels

    lab = read_labels(cells)
    assert r.image == path.name.replace(".ome.tif", "")
    assert r.condition == "ev_high"
    assert set(CELL_COLUMNS) <= set(r.cells.columns)
    assert set(SPOT_COLUMNS) <= set(r.spots.columns)
    # one row per labelled cell, ids equal to the label ids
    assert sorted(r.cells["cell_id"]) == sorted(np.unique(lab[lab > 0]).tolist())
    # spot_count per cell equals the spots table grouped by cell_id
    counts = r.spots[r.spots["cell_id"] > 0].groupby("cell_id").size()
    got = r.cells.set_index("cell_id")["exo_spot_count"]
    assert (got.reindex(counts.index) == counts).all()
    assert got.sum() == counts.sum()
    # area equals pixel count of each label
    area = np.bincount(lab.ravel())
    assert (r.cells["area_px"].to_numpy() == area[r.cells["cell_id"].to_numpy()]).all()
    # spot cell_id is the label under the rounded position
    yy = np.round(r.spots["y"]).astype(int).clip(0, lab.shape[0] - 1)
    xx = np.round(r.spots["x"]).astype(int).clip(0, lab.shape[1] - 1)
    assert (lab[yy, xx] == r.spots["cell_id"].to_numpy()).all()
    assert set(IMAGE_COLUMNS) <= set(r.summary)
    assert r.summary["n_cells"] == len(r.cells)
    assert truth.channel_names[2] == "PKH26"

    paths = pipeline.write_outputs([r], tmp_path, cfg)
    cells_csv = pd.read_csv(paths["cells"])
    assert list(cells_csv.columns) == list(r.cells.columns)
    assert (tmp_path / "cells.parquet").is_file()
    assert set(IMAGE_COLUMNS) <= set(pd.read_csv(tmp_path / "images.csv").columns)
    assert (tmp_path / "labels" / f"{r.image}_cells.tif").is_file()
    assert (tmp_path / "qc" / f"{r.image}_overlay.png").is_file()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"] == cfg.to_dict()
    assert "numpy" in run["versions"]
    assert run["images"][r.image]["timings_s"]["total"] > 0
    # what the punctum detector did on this image, as detect_spots reported it
    det = run["images"][r.image]["spots_detection"]
    attrs = r.spots.attrs
    assert det["threshold"] == pytest.approx(attrs["threshold"])
    assert det["radius_auto"] is bool(attrs["radius_auto"]) is False
    assert det["radius_px"] == pytest.approx(cfg.spots.radius_px)
    assert set(det) >= {"noise_sigma", "reference_intensity", "snr_threshold", "n_spikes"}


def test_finalize_uses_control_condition(sample):
    cfg, path, cells, nuclei = sample
    dye = sorted((SAMPLE / "images").glob("dye_only_*.ome.tif"))[0]
    dye_name = dye.name.replace(".ome.tif", "")
    cfg = cfg.with_updates(
        positivity={
            "exosome": {"method": "control", "metric": "exo_spot_count", "percentile": 99.0},
            "control_condition": "dye_only",
        }
    )
    a = pipeline.analyze_image(path, cfg, labels=cells)
    b = pipeline.analyze_image(dye, cfg, labels=SAMPLE / "labels" / f"{dye_name}_cells.tif")
    out = pipeline.finalize([a, b], cfg)
    thr = out[0].thresholds["exo"]
    expect = np.percentile(b.cells["exo_spot_count"], 99.0, method="higher")
    assert thr == pytest.approx(expect)
    # the same order-independent thresholds whatever the order of images
    rev = pipeline.finalize([b, a], cfg)
    assert rev[1].thresholds == out[0].thresholds
    pd.testing.assert_frame_equal(rev[1].cells, out[0].cells)


def _cfg3():
    return AssayConfig.from_dict(
        {
            "channels": {"nucleus": 0, "exosome": 1, "markers": {"m": {"channel": 2}}},
            "segmentation": {"mode": "nuclei"},
        }
    )


def test_bad_inputs_give_clear_messages():
    cfg = _cfg3()
    img = from_array(np.zeros((3, 40, 50), np.uint16), "CYX", ["DAPI", "PKH", "CD31"])
    lab = np.zeros((40, 50), np.int32)
    lab[5:20, 5:20] = 1
    # labels of another shape
    with pytest.raises(ValueError, match=r"labels have shape \(30, 50\).*\(40, 50\)"):
        pipeline.analyze_image(img, cfg, labels=np.zeros((30, 50), np.int32))
    # exosome channel missing
    bad = cfg.with_updates(channels={"exosome": 7})
    with pytest.raises(ConfigError, match="channel 7 does not exist"):
        pipeline.analyze_image(img, bad, labels=lab)
    no_exo = AssayConfig.from_dict({"channels": {"nucleus": 0}})
    with pytest.raises(ConfigError, match="channels.exosome"):
        pipeline.analyze_image(img, no_exo, labels=lab)
    # NaNs
    nan = from_array(np.full((3, 40, 50), np.nan, np.float32), "CYX", ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        pipeline.analyze_image(nan, cfg, labels=lab)
    # float labels
    with pytest.raises(ValueError, match="integer label image"):
        pipeline.analyze_image(img, cfg, labels=lab.astype(float))


def test_empty_results_not_tracebacks(tmp_path):
    cfg = _cfg3()
    img = from_array(np.zeros((3, 40, 50), np.uint16), "CYX", ["DAPI", "PKH", "CD31"])
    # all-zero image, one cell: no puncta, the cell is still reported
    lab = np.zeros((40, 50), np.int32)
    lab[5:20, 5:20] = 3
    r = pipeline.analyze_image(img, cfg, labels=lab)
    assert len(r.spots) == 0 and len(r.cells) == 1
    assert r.cells["exo_spot_count"].tolist() == [0]
    # labels with no cells: empty tables with the contract columns
    r0 = pipeline.analyze_image(img, cfg, labels=np.zeros((40, 50), np.int32))
    assert len(r0.cells) == 0 and r0.summary["n_cells"] == 0
    assert {"cell_id", "exo_spot_count", "m_mean_intensity"} <= set(r0.cells.columns)
    pipeline.write_outputs([r, r0], tmp_path, cfg)
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 1


def test_time_axis_is_refused_with_advice():
    img = from_array(np.zeros((2, 3, 10, 10), np.uint16), "TCYX", ["a", "b", "c"])
    with pytest.raises(ValueError, match="time axis"):
        pipeline.analyze_image(img, _cfg3(), labels=np.ones((10, 10), np.int32))


def test_cancel_stops_between_stages(sample):
    cfg, path, cells, _ = sample
    with pytest.raises(Cancelled):
        pipeline.analyze_image(path, cfg, labels=cells, cancel=lambda: True)


def test_progress_is_one_monotone_fraction_with_messages(sample):
    cfg, path, cells, _ = sample
    seen = []
    pipeline.analyze_image(path, cfg, labels=cells, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in seen)
    assert [m for _, m in seen][:3] == ["segmentation", "puncta", "measurement"]


def test_positivity_is_applied_once_by_finalize(sample):
    """measure_image leaves positivity to finalize; finalizing measured results gives what
    finalizing already-classified ones (analyze_image per image) gives, and the result is
    frozen."""
    import dataclasses

    cfg, path, cells, nuclei = sample
    dye = sorted((SAMPLE / "images").glob("dye_only_*.ome.tif"))[0]
    dye_cells = SAMPLE / "labels" / f"{dye.name.replace('.ome.tif', '')}_cells.tif"
    m = [
        pipeline.measure_image(path, cfg, labels=cells),
        pipeline.measure_image(dye, cfg, labels=dye_cells),
    ]
    assert m[0].thresholds == {} and m[0].summary == {}
    assert not any(c.endswith("_positive") for c in m[0].cells.columns)
    a = [
        pipeline.analyze_image(path, cfg, labels=cells),
        pipeline.analyze_image(dye, cfg, labels=dye_cells),
    ]
    assert "exo_positive" in a[0].cells.columns and a[0].summary
    once, twice = pipeline.finalize(m, cfg), pipeline.finalize(a, cfg)
    for x, y in zip(once, twice, strict=True):
        pd.testing.assert_frame_equal(x.cells, y.cells)
        assert x.summary == y.summary and x.thresholds == y.thresholds
    with pytest.raises(dataclasses.FrozenInstanceError):
        once[0].cells = once[0].cells.iloc[:0]


def test_readout_channel_error_names_its_key():
    cfg = _cfg3().with_updates(collagen={"channel": "COL1"})
    img = from_array(np.zeros((3, 40, 50), np.uint16), "CYX", ["DAPI", "PKH", "CD31"])
    lab = np.zeros((40, 50), np.int32)
    lab[5:20, 5:20] = 1
    with pytest.raises(ConfigError, match=r"^collagen.channel: no channel named 'COL1'"):
        pipeline.analyze_image(img, cfg, labels=lab)


# -- a small CLI run (labels given, no collagen: fast) and the README's promises --------------

RUN_IMAGES = ("untreated_000", "dye_only_001", "ev_high_003")


def _cli(*argv):
    from napari_exouptake.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``exouptake analyze`` on three sample images with their labels; returns (out, stderr)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("cli")
    cfg = load_config(SAMPLE / "config.yaml").with_updates(collagen=None)
    cfg_path = tmp / "config.yaml"
    save_config(cfg, cfg_path)
    out = tmp / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = _cli(
            "analyze",
            *(SAMPLE / "images" / f"{n}.ome.tif" for n in RUN_IMAGES),
            "--config",
            cfg_path,
            "--out",
            out,
            "--labels",
            SAMPLE / "labels",
        )
    assert rc == 0
    return out, err.getvalue(), cfg_path


def test_every_table_in_csv_and_parquet_with_columns_doc(cli_run):
    out, _, _ = cli_run
    for stem in ("cells", "spots", "images"):
        csv = pd.read_csv(out / f"{stem}.csv")
        pq = pd.read_parquet(out / f"{stem}.parquet")
        assert list(csv.columns) == list(pq.columns) and len(csv) == len(pq)
    doc = (out / "columns.md").read_text()
    assert "undocumented" not in doc
    for stem in ("cells", "spots", "images"):
        for col in pd.read_csv(out / f"{stem}.csv", nrows=0).columns:
            assert f"| `{col}` |" in doc
    assert "| `exo_integrated_intensity` | a.u." in doc
    # no binary-float noise such as 118.30000000000001 in the CSV text
    import re

    text = (out / "cells.csv").read_text()
    assert not re.search(r"\d\.\d*0000000\d", text) and not re.search(r"\d\.\d*9999999\d", text)


def test_run_json_records_positivity_and_control_cutoff(cli_run):
    out, _, _ = cli_run
    run = json.loads((out / "run.json").read_text())
    exo = run["positivity"]["exo"]
    # control_condition: dye_only and no exosome rule -> the control's 95th percentile
    assert exo["method"] == "control" and exo["percentile"] == 95.0
    assert exo["comparison"] == ">" and "dye_only" in exo["fitted_on"]
    cells = pd.read_parquet(out / "cells.parquet")
    dye = cells[cells["condition"] == "dye_only"]
    assert exo["threshold"] == np.percentile(dye["exo_spot_count"], 95, method="higher")
    assert dye["exo_positive"].mean() <= 0.05
    cd31 = run["positivity"]["cd31"]
    assert cd31["method"] == "auto" and "3 image(s)" in cd31["fitted_on"]


def test_console_is_quiet_and_warnings_once(cli_run):
    out, err, _ = cli_run
    assert "INFO" not in err and ">>>>" not in err and "UserWarning" not in err
    import re

    for line in filter(None, (ln.strip() for ln in re.split(r"[\r\n]", err))):
        # the progress bar, warnings, errors and the repeated-warnings summary only
        assert line.startswith(("analyze:", "WARNING", "ERROR", "exouptake:")), line
    warn_lines = [ln for ln in err.splitlines() if ln.startswith("WARNING")]
    assert len(warn_lines) == len(set(warn_lines)) >= 1  # each warning once
    log = (out / "exouptake.log").read_text()
    assert "INFO napari_exouptake" in log


def test_report_written_and_rewritten_after_each_run(cli_run):
    out, _, cfg_path = cli_run
    report = out / "report.html"
    assert "EV uptake report" in report.read_text()
    report.write_text("stale")
    assert (
        _cli(
            "analyze",
            *(SAMPLE / "images" / f"{n}.ome.tif" for n in RUN_IMAGES),
            "--config",
            cfg_path,
            "--out",
            out,
            "--labels",
            SAMPLE / "labels",
        )
        == 0
    )
    text = report.read_text()
    assert text != "stale" and "dye_only (control" in text
    assert "EV-positive if exo_spot_count &gt;" in text  # the control row shows its cut-off
    for n in RUN_IMAGES:
        assert f"href='qc/{n}_overlay.png'" in text  # thumbnails link to the full picture


def test_qc_overlays_have_title_legend_and_positive_cells(cli_run):
    import imageio.v3 as iio

    out, _, _ = cli_run
    img = iio.imread(out / "qc" / "ev_high_003_overlay.png")[..., :3]
    assert img.shape[0] > img.shape[1]  # title above and legend below the square image
    green = np.all(img == (60, 230, 60), axis=-1).sum()
    assert green > 500  # EV-positive cells outlined
    top = img[:20]
    assert (top < 100).any()  # title text drawn on the white band


def test_missing_channel_role_stops_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SAMPLE / "config.yaml").read_text().replace("exosome: PKH26", "exosome: PKH67"))
    rc = _cli("analyze", SAMPLE / "images", "--config", bad, "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("no channel named 'PKH67'") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "parts").exists()


def test_config_check_against_an_image(capsys):
    img = SAMPLE / "images" / "untreated_000.ome.tif"
    assert _cli("config", "--check", SAMPLE / "config.yaml", "--image", img) == 0
    assert "channels.exosome             -> channel 2 (PKH26)" in capsys.readouterr().out


def test_config_check_image_names_the_missing_role(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SAMPLE / "config.yaml").read_text().replace("CD31", "PECAM"))
    img = SAMPLE / "images" / "untreated_000.ome.tif"
    assert _cli("config", "--check", bad, "--image", img) == 2
    err = capsys.readouterr().err
    assert "channels.markers.cd31" in err and "PECAM" in err and "Traceback" not in err
    assert _cli("config", "--image", img) == 2


def test_every_cli_option_has_help_and_shows_its_default():
    import argparse

    from napari_exouptake.cli import _parser

    def parsers(p):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    yield from parsers(sp)

    n = 0
    for p in parsers(_parser()):
        text = " ".join(p.format_help().split())
        for a in p._actions:
            skip = (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)
            if isinstance(a, skip):
                continue
            assert a.help, f"{p.prog}: {a.dest} has no help"
            if a.default not in (None, False) and not a.required:
                assert f"(default: {a.default})" in text, (p.prog, a.dest)
            n += 1
    assert n > 40


def test_auto_marker_threshold_on_two_control_images_warns(sample):
    cfg = sample[0].with_updates(collagen=None)
    res = []
    for n in ("untreated_000", "dye_only_001"):
        res.append(
            pipeline.analyze_image(
                SAMPLE / "images" / f"{n}.ome.tif",
                cfg,
                labels=SAMPLE / "labels" / f"{n}_cells.tif",
            )
        )
    out = pipeline.finalize(res, cfg)
    rec = out[0].extras["positivity"]["cd31"]
    assert rec["rule"] == "mixture" and any("2 image(s) only" in w for w in rec["warnings"])
    truth = pd.read_csv(SAMPLE / "truth_cells.csv")
    for r in out:  # the labels are the truth's: per-image fractions against the truth
        t = truth[truth["image"] == r.image].set_index("cell_id")["cd31_positive"]
        called = r.cells.set_index("cell_id")["cd31_positive"]
        assert abs(called.mean() - t.mean()) < 0.05  # issue 16: Otsu gave 41.7 % / 58.0 %


def test_control_condition_sets_the_uptake_rule_unless_one_is_given():
    implied = AssayConfig.from_dict({"positivity": {"control_condition": "dye_only"}})
    rule = implied.positivity.exosome
    assert (rule.method, rule.metric, rule.percentile) == ("control", "exo_spot_count", 95.0)
    assert AssayConfig.from_dict(implied.to_dict()) == implied  # round-trips as written
    explicit = AssayConfig.from_dict(
        {
            "positivity": {
                "control_condition": "dye_only",
                "exosome": {"method": "fixed", "value": 2, "metric": "exo_spot_count"},
            }
        }
    )
    assert explicit.positivity.exosome.method == "fixed"
    assert AssayConfig().positivity.exosome.method == "fixed"  # no control: >= 1 punctum


def test_missing_control_condition_says_how_to_fix(sample):
    cfg, path, cells, _ = sample
    cfg = cfg.with_updates(collagen=None)
    r = pipeline.analyze_image(path, cfg, labels=cells)
    # one image on its own (napari, a batch worker): >= 1 punctum until the control is in
    assert r.thresholds["exo"] == 1 and r.extras["positivity"]["exo"]["method"] == "fixed"
    # the rule implied by control_condition, no control image in the run: >= 1 punctum, warned
    [out] = pipeline.finalize([r], cfg)
    rec = out.extras["positivity"]["exo"]
    assert rec["method"] == "fixed" and rec["threshold"] == 1
    assert "no 'dye_only' (control_condition) cells in this run" in rec["warnings"][0]
    # a control rule the user wrote: stop and say how to fix it
    explicit = cfg.with_updates(
        positivity={"exosome": {"method": "control", "metric": "exo_spot_count", "percentile": 99}}
    )
    with pytest.raises(ConfigError, match="Add the control's images to the run"):
        pipeline.finalize([r], explicit)


def test_qc_overlay_of_a_whole_well_is_drawn_subsampled(tmp_path, monkeypatch):
    """A plane longer than the QC size (2048 px) is shown every k-th pixel, puncta scaled."""
    import napari_exouptake._qc as qc

    rng = np.random.default_rng(0)
    data = rng.poisson(100, (3, 4300, 40)).astype(np.uint16)
    yy, xx = np.mgrid[0:4300, 0:40]
    for y0 in (1000.0, 3000.0):  # two bright puncta in the EV channel
        data[1] += (2000 * np.exp(-((yy - y0) ** 2 + (xx - 20.0) ** 2) / 2.0)).astype(np.uint16)
    lab = np.zeros((4300, 40), np.int32)
    lab[900:1100, 5:35], lab[2900:3100, 5:35] = 1, 2
    r = pipeline.analyze_image(
        from_array(data, "CYX", ["DAPI", "PKH", "CD31"]), _cfg3(), labels=lab
    )
    assert len(r.spots) == 2
    seen = {}
    draw = qc.draw_overlay

    def spy(exo, cells, nuclei, spots, *args, **kw):
        seen.update(
            shape=exo.shape[-2:], cells=cells.shape[-2:], y=sorted(spots["y"].round().tolist())
        )
        return draw(exo, cells, nuclei, spots, *args, **kw)

    monkeypatch.setattr(qc, "draw_overlay", spy)
    pipeline.write_outputs([r], tmp_path, _cfg3())
    assert (tmp_path / "qc" / f"{r.image}_overlay.png").is_file()
    assert seen["shape"] == seen["cells"] == (1434, 14)  # step 3: ceil(4300 / 2048)
    assert seen["y"] == [333.0, 1000.0]  # the puncta at 1000 and 3000, divided by 3
