"""pipeline.analyze_image / finalize / write_outputs with labels given (no network)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_exouptake import pipeline
from napari_exouptake.config import AssayConfig, ConfigError, load_config
from napari_exouptake.io import from_array, read_image

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
    assert det["whitened"] is bool(attrs["whitened"])
    assert det["residual_pass"] is bool(attrs["residual_pass"])
    assert set(det) >= {"noise_sigma", "reference_intensity", "model_halo", "whiten_gain"}


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
    with pytest.raises(InterruptedError):
        pipeline.analyze_image(path, cfg, labels=cells, cancel=lambda: True)


def test_readout_channel_error_names_its_key():
    cfg = _cfg3().with_updates(collagen={"channel": "COL1"})
    img = from_array(np.zeros((3, 40, 50), np.uint16), "CYX", ["DAPI", "PKH", "CD31"])
    lab = np.zeros((40, 50), np.int32)
    lab[5:20, 5:20] = 1
    with pytest.raises(ConfigError, match=r"^collagen.channel: no channel named 'COL1'"):
        pipeline.analyze_image(img, cfg, labels=lab)
