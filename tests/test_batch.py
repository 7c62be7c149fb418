"""Batch runs: inputs, naming, sample sheets, resume, failures, stacks, executors, kill-resume.

Every test uses the simulator's label images (``labels=``), so no Cellpose model runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_exouptake import batch
from napari_exouptake.batch import (
    BatchUsageError,
    analysis_hash,
    analyze_batch,
    collect_inputs,
    load_sample_sheet,
)
from napari_exouptake.batch import executors as batch_executors
from napari_exouptake.commands.analyze import run_analyze
from napari_exouptake.config import load_config, save_config

TABLES = ("cells.csv", "spots.csv", "images.csv")


@pytest.fixture(scope="session")
def sim(tmp_path_factory) -> Path:
    """Six small simulated images (two per condition of three) with labels and a config."""
    from napari_exouptake.simulate import write_dataset

    root = tmp_path_factory.mktemp("sim")
    write_dataset(
        root, n_images=6, seed=3, shape=(160, 160), conditions=("untreated", "dye_only", "ev_high")
    )
    cfg = load_config(root / "config.yaml").to_dict()
    cfg.pop("collagen", None)  # keeps the tests fast; collagen has its own tests
    save_config(load_config(cfg), root / "config.yaml")
    return root


@pytest.fixture(scope="session")
def reference(sim, tmp_path_factory) -> Path:
    """An uninterrupted serial run over ``sim``."""
    out = tmp_path_factory.mktemp("ref")
    res = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels")
    assert res.exit_code == 0 and len(res.done) == 6
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "cells.parquet"), pd.read_parquet(b / "cells.parquet")
    )
    la = sorted(p.name for p in (a / "labels").iterdir())
    assert la == sorted(p.name for p in (b / "labels").iterdir())
    for name in la:
        assert (a / "labels" / name).read_bytes() == (b / "labels" / name).read_bytes()


# -- inputs ------------------------------------------------------------------------------------


def test_collect_inputs_files_folders_globs(tmp_path):
    for sub in ("plate1", "plate2"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "A01.ome.tif", np.zeros((4, 4), np.uint16))
    tifffile.imwrite(tmp_path / "plate1" / "B02.tif", np.zeros((4, 4), np.uint16))
    (tmp_path / "plate1" / "notes.txt").write_text("not an image")
    files = collect_inputs([tmp_path])
    assert [f.name for f in files] == ["B02", "plate1_A01", "plate2_A01"]
    # a glob, a file and a folder naming the same files give each file once
    files = collect_inputs([str(tmp_path / "plate*" / "*.tif"), tmp_path / "plate1"])
    assert len(files) == 3
    assert [f.name for f in collect_inputs([tmp_path / "plate1" / "A01.ome.tif"])] == ["A01"]
    # the output folder is never an input
    assert [f.name for f in collect_inputs([tmp_path], exclude=[tmp_path / "plate2"])] == [
        "A01",
        "B02",
    ]
    with pytest.raises(FileNotFoundError, match="matches no image"):
        collect_inputs([str(tmp_path / "*.png")])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        collect_inputs([tmp_path / "missing.tif"])


def test_sample_sheet_errors(tmp_path):
    with pytest.raises(BatchUsageError, match="does not exist"):
        load_sample_sheet(tmp_path / "none.csv")
    (tmp_path / "a.csv").write_text("name,condition\nx,ctrl\n")
    with pytest.raises(BatchUsageError, match="needs a column naming the images"):
        load_sample_sheet(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("pattern,condition,dose\nx*,ctrl,high\n")
    with pytest.raises(BatchUsageError, match="dose 'high' is not a number"):
        load_sample_sheet(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("image,condition,dose\nx,ctrl,1.5\n")
    sheet = load_sample_sheet(tmp_path / "c.csv")
    assert list(sheet.columns) == ["pattern", "condition", "dose"]
    assert sheet["dose"].tolist() == [1.5]


def test_sample_sheet_assigns_conditions(sim, tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "pattern,condition,dose,replicate,well\n"
        "ev_high_*,EV 50,50,1,A01\n"
        "dye_only_001,dye,0,1,B01\n"
    )
    out = tmp_path / "out"
    res = analyze_batch(
        sim / "images",
        sim / "config.yaml",
        out,
        labels=sim / "labels",
        sample_sheet=sheet,
    )
    assert res.exit_code == 0
    images = pd.read_csv(out / "images.csv").set_index("image")
    assert images.loc["ev_high_002", "condition"] == "EV 50"
    assert images.loc["ev_high_005", "dose"] == 50.0
    assert images.loc["ev_high_005", "well"] == "A01"
    assert images.loc["dye_only_001", "condition"] == "dye"
    # no sheet row: the config's file-name patterns decide, sheet columns stay empty
    assert images.loc["dye_only_004", "condition"] == "dye_only"
    assert np.isnan(images.loc["untreated_000", "dose"])
    cells = pd.read_csv(out / "cells.csv")
    assert list(cells.columns[:6]) == ["image", "condition", "dose", "replicate", "well", "cell_id"]
    assert set(cells.loc[cells["image"] == "ev_high_002", "condition"]) == {"EV 50"}


# -- resume, config changes, failures ----------------------------------------------------------


def test_rerun_skips_and_config_change_redoes(sim, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    res = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels")
    assert res.done == [] and len(res.skipped) == 6
    assert_same_tables(reference, out)
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6 and {m["image"] for m in manifest} == set(res.skipped)

    # a positivity change is applied when merging: nothing is re-analysed
    cfg = load_config(sim / "config.yaml")
    stricter = cfg.with_updates(
        positivity={"exosome": {"method": "fixed", "value": 5, "metric": "exo_spot_count"}}
    )
    assert analysis_hash(stricter) == analysis_hash(cfg)
    res = analyze_batch(sim / "images", stricter, out, labels=sim / "labels")
    assert res.done == []
    cells = pd.read_csv(out / "cells.csv")
    assert (cells["exo_positive"] == (cells["exo_spot_count"] >= 5)).all()

    # a detection change redoes every image (a threshold no punctum reaches: no puncta at all)
    changed = cfg.with_updates(spots={"threshold": 1e9})
    res = analyze_batch(sim / "images", changed, out, labels=sim / "labels")
    assert len(res.done) == 6 and res.skipped == []
    assert len(pd.read_csv(out / "spots.csv")) == 0
    assert (pd.read_csv(out / "cells.csv")["exo_spot_count"] == 0).all()

    # a touched input file is redone, the others are reused
    img = sim / "images" / "ev_high_002.ome.tif"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 1_000_000_000))
    res = analyze_batch(sim / "images", changed, out, labels=sim / "labels")
    assert res.done == ["ev_high_002"] and len(res.skipped) == 5

    # an edit that keeps the size and the modification time is found by the content hash
    images = tmp_path / "images"
    shutil.copytree(sim / "images", images)
    res = analyze_batch(images, changed, out, labels=sim / "labels")
    img = images / "dye_only_001.ome.tif"
    st = img.stat()
    data = bytearray(img.read_bytes())
    data[-1] ^= 0xFF  # last byte of the file (pixel data or IFD), same size
    img.write_bytes(bytes(data))
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert img.stat().st_mtime_ns == st.st_mtime_ns and img.stat().st_size == st.st_size
    res = analyze_batch(images, changed, out, labels=sim / "labels")
    assert "dye_only_001" in res.done + list(res.failed) and len(res.skipped) == 5


def test_corrupt_files_are_listed_and_the_rest_finishes(sim, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sim / "images", images)
    good = (images / "ev_high_002.ome.tif").read_bytes()
    (images / "broken_007.ome.tif").write_bytes(good[: len(good) // 2])
    (images / "garbage_008.tif").write_bytes(b"this is not a TIFF file at all" * 10)
    out = tmp_path / "out"
    code = run_analyze([images], sim / "config.yaml", out, labels=sim / "labels")
    assert code == 1
    failures = pd.read_csv(out / "failures.csv")
    assert failures["image"].tolist() == ["broken_007", "garbage_008"]
    assert failures["path"].str.endswith(".tif").all()
    assert failures["error"].str.contains("ImageReadError").all()
    assert set(pd.read_csv(out / "images.csv")["image"]) == {
        f.name.removesuffix(".ome.tif") for f in (sim / "images").iterdir()
    }
    assert "broken_007: failed" in (out / "exouptake.log").read_text()

    # the broken files removed: the rerun redoes nothing and failures.csv goes away
    (images / "broken_007.ome.tif").unlink()
    (images / "garbage_008.tif").unlink()
    res = analyze_batch([images], sim / "config.yaml", out, labels=sim / "labels")
    assert res.exit_code == 0 and res.done == [] and not (out / "failures.csv").exists()


def test_bool_image_fails_with_a_clear_message(sim, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    mask = np.zeros((3, 64, 64), bool)
    mask[:, 10:30, 10:30] = True
    tifffile.imwrite(images / "mask.tif", mask)
    res = analyze_batch(images, sim / "config.yaml", tmp_path / "out", labels=sim / "labels")
    assert "a true/false (binary mask) image, not an intensity image" in res.failed["mask"]


def test_missing_labels_fail_that_image(sim, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(sim / "labels", labels)
    (labels / "untreated_000_cells.tif").unlink()
    res = analyze_batch(sim / "images", sim / "config.yaml", tmp_path / "out", labels=labels)
    assert list(res.failed) == ["untreated_000"]
    assert res.failed["untreated_000"].endswith(
        f"no label image for 'untreated_000' in {labels} (looked for untreated_000_cells.tif/.zarr)"
    )


def test_cli_usage_errors_exit_2(sim, tmp_path, capsys):
    from napari_exouptake.cli import main

    code = main(
        [
            "analyze",
            str(tmp_path / "nothing_*.tif"),
            "--config",
            str(sim / "config.yaml"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "matches no image file" in capsys.readouterr().err
    with pytest.raises(BatchUsageError, match="workers must be"):
        analyze_batch(sim / "images", sim / "config.yaml", tmp_path / "o", workers=0)


# -- stacks ------------------------------------------------------------------------------------


def _stack(sim: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A (T=2, C, Z=3, Y, X) OME-TIFF built from one simulated image, and its 2-D labels."""
    from napari_exouptake.io import read_image

    img = read_image(sim / "images" / "ev_high_002.ome.tif")
    plane = img.data[:, 0].astype(np.float64)  # (C, Y, X)
    rng = np.random.default_rng(0)
    data = np.stack(
        [np.stack([plane * (1.0 + 0.2 * z + 0.1 * t) for z in range(3)], axis=1) for t in range(2)]
    )
    data = np.clip(data + rng.normal(0, 3, data.shape), 0, 65535).astype(np.uint16)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    tifffile.imwrite(
        folder / "images" / "tz.ome.tif",
        data,
        ome=True,
        metadata={
            "axes": "TCZYX",
            "Channel": {"Name": list(img.channel_names)},
            "PhysicalSizeX": 0.325,
            "PhysicalSizeY": 0.325,
        },
    )
    labels = tifffile.imread(sim / "labels" / "ev_high_002_cells.tif")
    return data, labels


def test_t_and_z_stack_per_plane(sim, tmp_path):
    data, labels = _stack(sim, tmp_path)
    tifffile.imwrite(tmp_path / "labels" / "tz_cells.tif", labels)  # 2-D: used on every plane
    out = tmp_path / "out"
    res = analyze_batch(tmp_path / "images", sim / "config.yaml", out, labels=tmp_path / "labels")
    assert res.exit_code == 0
    images = pd.read_csv(out / "images.csv")
    assert images["image"].tolist() == [f"tz_t{t:03d}_z{z:03d}" for t in range(2) for z in range(3)]
    assert images["t"].tolist() == [0, 0, 0, 1, 1, 1]
    assert images["z"].tolist() == [0, 1, 2, 0, 1, 2]
    assert (images["source_image"] == "tz").all()
    n_cells = len(np.unique(labels)) - 1
    assert (images["n_cells"] == n_cells).all()
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 6 * n_cells
    assert cells.groupby(["t", "z"]).size().tolist() == [n_cells] * 6
    # brighter planes give brighter cells: each plane was measured on its own pixels
    mean = cells.groupby(["t", "z"])["exo_mean_intensity"].mean()
    assert mean[(0, 2)] > mean[(0, 1)] > mean[(0, 0)]
    assert mean[(1, 0)] > mean[(0, 0)]
    spots = pd.read_csv(out / "spots.csv")
    assert set(spots["z"]) <= {0, 1, 2} and set(spots["t"]) == {0, 1}
    assert (out / "labels" / "tz_t001_z002_cells.tif").is_file()


def test_t_and_z_stack_as_volumes(sim, tmp_path):
    data, labels = _stack(sim, tmp_path)
    tifffile.imwrite(tmp_path / "labels" / "tz_cells.tif", np.stack([labels] * 3))  # (Z, Y, X)
    out = tmp_path / "out"
    res = analyze_batch(tmp_path / "images", sim / "config.yaml", out, labels=tmp_path / "labels")
    assert res.exit_code == 0
    images = pd.read_csv(out / "images.csv")
    assert images["image"].tolist() == ["tz_t000", "tz_t001"]
    assert images["t"].tolist() == [0, 1] and "z" not in images.columns
    assert (images["n_cells"] == len(np.unique(labels)) - 1).all()
    lab = tifffile.imread(out / "labels" / "tz_t001_cells.tif")
    assert lab.shape == (3, *labels.shape)


def test_multi_series_ome(sim, tmp_path):
    from napari_exouptake.io import read_image

    img = read_image(sim / "images" / "ev_high_002.ome.tif")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with tifffile.TiffWriter(tmp_path / "images" / "plate.ome.tif", ome=True) as tw:
        for k in range(2):  # the second series is 2x brighter
            tw.write(
                (img.data[:, 0] * (k + 1)).astype(np.uint16),
                metadata={
                    "axes": "CYX",
                    "Channel": {"Name": list(img.channel_names)},
                    "PhysicalSizeX": 0.325,
                    "PhysicalSizeY": 0.325,
                },
            )
    shutil.copy(sim / "labels" / "ev_high_002_cells.tif", tmp_path / "labels" / "plate_cells.tif")
    out = tmp_path / "out"
    res = analyze_batch(tmp_path / "images", sim / "config.yaml", out, labels=tmp_path / "labels")
    assert res.exit_code == 0
    images = pd.read_csv(out / "images.csv")
    assert images["image"].tolist() == ["plate_s00", "plate_s01"]
    assert images["series"].tolist() == [0, 1]
    cells = pd.read_csv(out / "cells.csv")
    m = cells.groupby("series")["exo_mean_intensity"].mean()
    assert m[1] == pytest.approx(2 * m[0], rel=1e-3)


# -- executors and a real kill -----------------------------------------------------------------


@pytest.mark.slow
def test_executors_give_identical_tables(sim, reference, tmp_path):
    out = tmp_path / "proc"
    res = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels", workers=2)
    assert res.exit_code == 0 and len(res.done) == 6
    assert_same_tables(reference, out)
    pytest.importorskip("dask.distributed")
    out = tmp_path / "dask"
    res = analyze_batch(
        sim / "images",
        sim / "config.yaml",
        out,
        labels=sim / "labels",
        workers=2,
        scheduler="local",
    )
    assert res.exit_code == 0 and len(res.done) == 6
    assert_same_tables(reference, out)
    assert "dask:local" in (out / "exouptake.log").read_text()


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(sim, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "napari_exouptake.cli",
        "analyze",
        str(sim / "images"),
        "--config",
        str(sim / "config.yaml"),
        "--out",
        str(out),
        "--labels",
        str(sim / "labels"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(batch.__file__).parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        manifest = out / "manifest.jsonl"
        while not (manifest.is_file() and manifest.read_text().count("\n") >= 1):
            assert proc.poll() is None, "the run ended before its first image was recorded"
            assert time.monotonic() < deadline, "no part written within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    n_parts = len(list((out / "parts").glob("*/part.json")))
    assert 1 <= n_parts < 6, n_parts
    assert not (out / "cells.csv").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    log_text = (out / "exouptake.log").read_text()
    assert f"{n_parts} image(s) already done" in log_text
    assert_same_tables(reference, out)
    assert not list((out / "parts").glob(".*"))  # no temporary folder left behind


def test_segment_batch_writes_labels_and_resumes(sim, tmp_path, monkeypatch):
    """The batch side of `exouptake segment` (Cellpose replaced by the simulator's labels)."""
    from napari_exouptake import segmentation
    from napari_exouptake.batch import segment_batch

    calls = []

    def fake_segment(image, config, **kw):
        calls.append(image.name)
        cells = tifffile.imread(sim / "labels" / f"{image.name}_cells.tif")
        nuclei = tifffile.imread(sim / "labels" / f"{image.name}_nuclei.tif")
        return segmentation.Segmentation(cells=cells, nuclei=nuclei)

    monkeypatch.setattr(segmentation, "segment", fake_segment)
    monkeypatch.setattr(segmentation, "resolve_model", lambda name, major=None: None)
    out = tmp_path / "seg"
    res = segment_batch(sim / "images", sim / "config.yaml", out)
    assert res.exit_code == 0 and len(res.done) == 6 and len(calls) == 6
    for name in res.done:
        for kind in ("cells", "nuclei"):
            np.testing.assert_array_equal(
                tifffile.imread(out / "labels" / f"{name}_{kind}.tif"),
                tifffile.imread(sim / "labels" / f"{name}_{kind}.tif"),
            )
    res = segment_batch(sim / "images", sim / "config.yaml", out)
    assert res.done == [] and len(res.skipped) == 6 and len(calls) == 6
    (out / "labels" / "ev_high_002_cells.tif").unlink()  # lost output is redone
    res = segment_batch(sim / "images", sim / "config.yaml", out)
    assert res.done == ["ev_high_002"]

    # segmentation and analysis results never overwrite each other
    with pytest.raises(BatchUsageError, match="lies in the results of --out"):
        analyze_batch(sim / "images", sim / "config.yaml", out, labels=out / "labels")
    seg_files = sorted(p.name for p in (out / "labels").iterdir())
    res = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels")
    assert res.exit_code == 0 and (out / "labels").is_symlink()
    kept = list(out.glob("labels.old-*"))
    assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == seg_files
    with pytest.raises(BatchUsageError, match="holds results of `exouptake analyze`"):
        segment_batch(sim / "images", sim / "config.yaml", out)


def test_missing_model_is_a_usage_error(sim, tmp_path):
    cfg = load_config(sim / "config.yaml").with_updates(
        segmentation={"model": str(tmp_path / "no_such_model.pth")}
    )
    with pytest.raises(BatchUsageError, match="no_such_model"):
        analyze_batch(sim / "images", cfg, tmp_path / "out")


def test_same_stem_in_one_folder(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.uint16))
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    assert [f.name for f in collect_inputs([tmp_path])] == ["a_png", "a_tif"]


def test_progress_callback_and_cancel_keep_finished_work(sim, reference, tmp_path):
    out = tmp_path / "out"
    seen: list[tuple[float, str]] = []
    res = analyze_batch(
        sim / "images",
        sim / "config.yaml",
        out,
        labels=sim / "labels",
        progress=lambda fraction, message: seen.append((fraction, message)),
        cancel=lambda: sum("done:" in m for _, m in seen) >= 2,
    )
    assert res.cancelled
    # the protocol of napari_exouptake.progress: one monotone fraction of the whole call;
    # the six files share [0, 0.95], the merge takes the rest
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    per_file = [(round(f, 4), m.split(":")[0]) for f, m in seen if "done:" in m]
    assert per_file == [
        (round(0.95 / 6, 4), "image file 1 of 6 done"),
        (round(0.95 * 2 / 6, 4), "image file 2 of 6 done"),
    ]
    assert seen[0] == (0.0, "analyze: 6 image file(s) to do")
    assert seen[-2] == (0.95, "merging the tables")
    assert len(res.done) == 2
    cells = pd.read_csv(out / "cells.csv")
    assert sorted(cells["image"].unique()) == sorted(res.done)
    # a rerun resumes: the two finished images are reused, the tables equal an uninterrupted run
    res2 = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels")
    assert sorted(res2.skipped) == sorted(res.done) and len(res2.done) == 4
    assert_same_tables(reference, out)


# -- results that cannot be mixed or lost (issue 19) --------------------------------------------


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(batch.__file__).parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    }


def _analyze_cmd(sim: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "napari_exouptake.cli",
        "analyze",
        str(images),
        "--config",
        str(sim / "config.yaml"),
        "--out",
        str(out),
        "--labels",
        str(sim / "labels"),
        *extra,
    ]


def test_second_run_on_a_locked_out_gets_one_line_and_exit_2(sim, tmp_path):
    out = tmp_path / "out"
    with batch.run_lock(out, "analyze"):
        # another process: refused before touching anything
        proc = subprocess.run(
            _analyze_cmd(sim, sim / "images", out),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        err = proc.stderr.strip().splitlines()
        assert err[-1].startswith("exouptake analyze: error: --out")
        assert "in use by another run" in err[-1] and f"pid {os.getpid()}" in err[-1]
        assert "Traceback" not in proc.stderr
        assert not (out / "parts").exists() and not (out / "cells.csv").exists()
        rec = json.loads((out / ".exouptake.lock").read_text())
        assert rec["pid"] == os.getpid() and rec["released"] is False
    assert json.loads((out / ".exouptake.lock").read_text())["released"] is True


def test_lock_of_a_killed_run_is_taken_over(sim, tmp_path, caplog):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from napari_exouptake import batch\n"
            f"with batch.run_lock({str(out)!r}, 'analyze'):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(batch.RunLockedError, match=f"pid {holder.pid}"), batch.run_lock(out):
            pass
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.wait(timeout=30)
    assert json.loads((out / ".exouptake.lock").read_text())["released"] is False
    with caplog.at_level("WARNING", logger="napari_exouptake"):
        res = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels")
    assert res.exit_code == 0
    assert "taking over the run lock" in caplog.text and f"pid {holder.pid}" in caplog.text


def test_merge_refuses_parts_of_another_config_or_input(sim, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out, symlinks=True)
    names = sorted(p.name for p in (out / "parts").iterdir())
    before = {n: (out / n).read_bytes() for n in TABLES}
    cfg = load_config(sim / "config.yaml")
    # one part made with another detection setting (as a second run on OUT would leave)
    meta_path = out / "parts" / names[2] / "part.json"
    meta = json.loads(meta_path.read_text())
    other = cfg.with_updates(spots={"radius_px": 2.0})
    meta["key"]["analysis_sha256"] = analysis_hash(other)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(batch.MixedPartsError, match=f"{names[2]}.*another config"):
        batch.merge_parts(out, names, cfg)
    assert {n: (out / n).read_bytes() for n in TABLES} == before  # the old set stays
    # with the run's keys, another version of the input file is refused too
    meta["key"]["analysis_sha256"] = analysis_hash(cfg)
    keys = {n: json.loads((out / "parts" / n / "part.json").read_text())["key"] for n in names}
    keys[names[2]] = {**meta["key"], "input": {**meta["key"]["input"], "size": 1}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(batch.MixedPartsError, match="another version of the input file"):
        batch.merge_parts(out, names, cfg, keys=keys)
    assert batch.merge_parts(out, names, cfg)["cells"] == out / "cells.csv"
    assert_same_tables(reference, out)


def _tables(out: Path) -> tuple[bytes, ...]:
    return tuple((out / n).read_bytes() for n in TABLES)


@pytest.mark.slow
def test_sigkill_during_merge_leaves_the_old_or_the_new_set(sim, reference, tmp_path):
    """Merges alternating two positivity rules, killed at random moments with SIGKILL."""
    out = tmp_path / "out"
    shutil.copytree(reference, out, symlinks=True)
    names = sorted(p.name for p in (out / "parts").iterdir())
    cfg_a = load_config(sim / "config.yaml")
    # every cell EV-positive: differs from cfg_a's calls whatever the detector finds
    cfg_b = cfg_a.with_updates(
        positivity={"exosome": {"method": "fixed", "value": 0, "metric": "exo_spot_count"}}
    )
    set_a = _tables(reference)
    t0 = time.perf_counter()
    batch.merge_parts(out, names, cfg_b)
    t_merge = time.perf_counter() - t0  # kills are timed in merges, whatever the machine's load
    set_b = _tables(out)
    assert set_a != set_b
    rng = np.random.default_rng(7)
    kinds = set()
    wanted = {True, False, ("leftovers", True)}
    # at least 12 kills; more (up to 40) while the kills have not yet hit both tables and a merge
    # in its middle (a loaded machine makes the child's merges slower than the timed one)
    for i in range(40):
        if i >= 12 and wanted <= kinds:
            break
        order = (cfg_a, cfg_b) if i % 2 else (cfg_b, cfg_a)
        pid = os.fork()
        if pid == 0:  # child: merge for ever, alternating the two configs
            try:
                while True:
                    for c in order:
                        batch.merge_parts(out, names, c)
            finally:
                os._exit(0)
        time.sleep(float(rng.uniform(0.1, 2.5)) * t_merge)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        now = _tables(out)
        assert now in (set_a, set_b), "tables of two merges side by side"
        kinds.add(now == set_a)
        run = json.loads((out / "run.json").read_text())
        is_b = run["config"]["positivity"]["exosome"]["value"] == 0
        assert is_b == (now == set_b), "run.json of another merge than the tables"
        leftovers = list((out / ".results").glob(".*")) + list(out.glob(".*.tmp"))
        kinds.add(("leftovers", bool(leftovers)))
    # the kills hit both tables and the middle of a merge (temporary generations left)
    assert wanted <= kinds, kinds
    # the next merge (or run) removes what killed merges left
    batch.merge_parts(out, names, cfg_a)
    assert _tables(out) == set_a
    assert [p.name for p in (out / ".results").iterdir() if p.name != "current"] == [
        os.readlink(out / ".results" / "current")
    ]
    assert not list(out.glob(".*.tmp"))
    for name in ("cells.csv", "labels", "run.json"):
        assert (out / name).is_symlink() and (out / name).exists()


def _fork_pool(monkeypatch):
    import multiprocessing as mp

    monkeypatch.setattr(batch_executors, "_mp_context", lambda: mp.get_context("fork"))


def test_dead_worker_fails_only_its_image_after_one_retry(sim, tmp_path, monkeypatch):
    """A worker killed by SIGKILL (the OOM killer's signal) while it holds one image."""
    _fork_pool(monkeypatch)
    real = batch_executors._run_task
    tries = tmp_path / "tries"
    tries.mkdir()

    def run_task(task):
        mark = tries / task.name
        n = len(mark.read_text()) if mark.exists() else 0
        mark.write_text("x" * (n + 1))
        if task.name == "ev_high_002" or (task.name == "dye_only_001" and n == 0):
            os.kill(os.getpid(), signal.SIGKILL)  # always / only on the first try
        return real(task)

    monkeypatch.setattr(batch_executors, "_run_task", run_task)
    out = tmp_path / "out"
    res = analyze_batch(sim / "images", sim / "config.yaml", out, labels=sim / "labels", workers=2)
    assert list(res.failed) == ["ev_high_002"]
    assert "died twice while analysing" in res.failed["ev_high_002"]
    assert "ev_high_002.ome.tif" in res.failed["ev_high_002"]
    assert "SIGKILL" in res.failed["ev_high_002"]
    assert len(res.done) == 5 and "dye_only_001" in res.done
    assert (tries / "ev_high_002").read_text() == "xx"  # first try and the one retry
    assert (tries / "dye_only_001").read_text() == "xx"
    assert pd.read_csv(out / "failures.csv")["image"].tolist() == ["ev_high_002"]
    assert len(pd.read_csv(out / "images.csv")) == 5
    assert res.exit_code == 1


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_main_process(sim, tmp_path, sig):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(5):  # 30 images: the run is still going when it is killed
        for f in (sim / "images").iterdir():
            os.link(f, images / f"r{k}_{f.name}")
    labels = tmp_path / "labels"
    labels.mkdir()
    for k in range(5):
        for f in (sim / "labels").iterdir():
            os.link(f, labels / f"r{k}_{f.name}")
    out = tmp_path / "out"
    cmd = _analyze_cmd(sim, images, out, "--workers", "2")
    cmd[cmd.index("--labels") + 1] = str(labels)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.jsonl").is_file():
            assert proc.poll() is None, "the run ended before its first image was recorded"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        family = _descendants(proc.pid)
        assert len(family) >= 2, family  # fork server and workers
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in family if _alive(p)], "worker processes outlived the main process"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert json.loads((out / ".exouptake.lock").read_text())["released"] is True
    n_done = (out / "manifest.jsonl").read_text().count("\n")
    time.sleep(1.0)  # nothing writes parts any more
    assert (out / "manifest.jsonl").read_text().count("\n") == n_done
    n_parts = len(list((out / "parts").glob("*/part.json")))
    time.sleep(0.5)
    assert len(list((out / "parts").glob("*/part.json"))) == n_parts < 30


def _huge_tiff(path: Path) -> None:
    """A 0.5 MB tiled TIFF whose header declares 100,000 x 100,000 pixels."""
    tifffile.imwrite(path, np.zeros((512, 512), np.uint16), tile=(256, 256))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for tag in ("ImageWidth", "ImageLength"):
            tif.pages[0].tags[tag].overwrite(100_000)


def test_pixel_limit_lets_a_plane_analysed_tile_by_tile_through(sim, tmp_path):
    """An image over the pixel limit is refused when it would be analysed whole, and analysed
    when it is a single plane above big_image_px (the tiled path needs far less memory)."""
    img = sim / "images" / "ev_high_005.ome.tif"  # 5 channels x 160 x 160 = 128,000 pixels
    whole = analyze_batch(img, sim / "config.yaml", tmp_path / "a", labels=sim / "labels",
                          max_pixels=100_000)  # fmt: skip
    assert list(whole.failed) == ["ev_high_005"]
    assert (
        "128,000 pixels, more than the limit of 100,000 for an image analysed whole"
        in (whole.failed["ev_high_005"])
    )
    cfg = save_config(
        load_config(sim / "config.yaml").with_updates(big_image_px=20_000), tmp_path / "c.yaml"
    )
    tiled = analyze_batch(img, cfg or tmp_path / "c.yaml", tmp_path / "b", labels=sim / "labels",
                          max_pixels=100_000)  # fmt: skip
    assert tiled.exit_code == 0 and not tiled.failed


def test_pixel_limit_refuses_before_decoding(sim, tmp_path):
    import resource

    from napari_exouptake.io import ImageTooLargeError, check_pixel_count

    images = tmp_path / "images"
    shutil.copytree(sim / "images", images)
    _huge_tiff(images / "huge.tif")
    assert (images / "huge.tif").stat().st_size < 1_000_000
    with pytest.raises(ImageTooLargeError, match=r"declares 10,000,000,000 pixels"):
        check_pixel_count(images / "huge.tif", 10**9)
    assert check_pixel_count(images / "ev_high_002.ome.tif", 10**9) == 5 * 160 * 160
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = analyze_batch(
        images,
        sim / "config.yaml",
        tmp_path / "out",
        labels=sim / "labels",
        max_pixels=10**8,
    )
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert list(res.failed) == ["huge"] and len(res.done) == 6
    msg = res.failed["huge"]  # the header is checked against the tiled path's budget too
    assert "more than the limit of 1,250,000,000" in msg and "100,000,000 pixels" in msg
    assert grown_mb < 200, grown_mb  # nothing like the 20 GB the header asks for
    # the default comes from the available memory
    assert batch.default_max_pixels(1) > batch.default_max_pixels(4) >= 1 << 20
    with pytest.raises(BatchUsageError, match="max_pixels"):
        analyze_batch(images, sim / "config.yaml", tmp_path / "o2", max_pixels=0)


@pytest.mark.parametrize("case", ["under_a_file", "name_too_long", "lock_is_a_folder", "read_only"])
def test_output_file_system_errors_are_one_line_exit_2(sim, tmp_path, capsys, monkeypatch, case):
    import errno

    from napari_exouptake.cli import main

    if case == "read_only":  # tests run as root, where chmod cannot make a folder read-only
        out = tmp_path / "out"
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
    elif case == "under_a_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    elif case == "name_too_long":
        out = tmp_path / ("r" * 300)
    else:
        out = tmp_path / "out"
        (out / ".exouptake.lock").mkdir(parents=True)
    code = main(
        [
            "analyze",
            str(sim / "images"),
            "--config",
            str(sim / "config.yaml"),
            "--out",
            str(out),
            "--labels",
            str(sim / "labels"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("exouptake analyze: error: ")
    assert str(tmp_path) in err[-1]
    assert not any("Traceback" in line for line in err)
    if case == "read_only":
        assert err[-1].endswith("read-only file system")


def test_output_folders_are_never_inputs_and_removed_inputs_leave_no_files(sim, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sim / "images", images)
    out = images / "results"  # inside the input folder, as users do
    res = analyze_batch(images, sim / "config.yaml", out, labels=sim / "labels")
    assert res.exit_code == 0 and len(res.inputs) == 6
    # a second run elsewhere on the same folder does not read the first one's outputs
    res = analyze_batch(images, sim / "config.yaml", images / "results2", labels=sim / "labels")
    assert len(res.inputs) == 6
    assert len(collect_inputs([images])) == 6
    # editing a published label image in place never changes the part it came from
    published = out / "labels" / "untreated_000_cells.tif"
    part_file = out / "parts" / "untreated_000" / "labels" / "untreated_000_cells.tif"
    before = part_file.read_bytes()
    with published.open("r+b") as fh:
        fh.seek(len(before) - 1)
        fh.write(bytes([before[-1] ^ 0xFF]))
    assert part_file.read_bytes() == before and published.read_bytes() != before
    assert collect_inputs([str(images / "**" / "*.tif")])[0].path.parent == images
    # an input removed: its labels and overlays leave the published results too
    (images / "ev_high_002.ome.tif").unlink()
    res = analyze_batch(images, sim / "config.yaml", out, labels=sim / "labels")
    assert len(res.inputs) == 5
    assert not list((out / "labels").glob("ev_high_002*"))
    assert not list((out / "qc").glob("ev_high_002*"))
    assert len(list((out / "labels").glob("*_cells.tif"))) == 5


@pytest.mark.slow
def test_two_concurrent_runs_with_different_configs_never_mix(sim, tmp_path):
    """The issue's reproduction: a second run with another radius_px on the same --out."""
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in range(10):  # 60 images: run A is still going when run B starts
        for f in (sim / "images").iterdir():
            os.link(f, images / f"r{k}_{f.name}")
        for f in (sim / "labels").iterdir():
            os.link(f, labels / f"r{k}_{f.name}")
    cfg_b = tmp_path / "b.yaml"
    save_config(load_config(sim / "config.yaml").with_updates(spots={"radius_px": 2.0}), cfg_b)
    out = tmp_path / "out"
    cmd_a = _analyze_cmd(sim, images, out)
    cmd_a[cmd_a.index("--labels") + 1] = str(labels)
    cmd_b = list(cmd_a)
    cmd_b[cmd_b.index("--config") + 1] = str(cfg_b)
    run_a = subprocess.Popen(cmd_a, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.jsonl").is_file():
            assert run_a.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        run_b = subprocess.run(cmd_b, env=_env(), capture_output=True, text=True, timeout=120)
        assert run_a.poll() is None, "run A ended before run B tried: the test proves nothing"
        assert run_b.returncode == 2
        assert "in use by another run" in run_b.stderr.strip().splitlines()[-1]
        assert run_a.wait(timeout=300) == 0
    finally:
        if run_a.poll() is None:
            run_a.kill()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["spots"]["radius_px"] == load_config(sim / "config.yaml").spots.radius_px
    want = analysis_hash(load_config(sim / "config.yaml"))
    keys = [json.loads(p.read_text())["key"] for p in (out / "parts").glob("*/part.json")]
    assert len(keys) == 60 and {k["analysis_sha256"] for k in keys} == {want}
    assert len(pd.read_csv(out / "images.csv")) == 60
