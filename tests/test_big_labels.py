"""Label images of big images: tiled TIFF written by a run, read back by ``--labels``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_exouptake.batch import analyze_batch
from napari_exouptake.config import load_config, save_config
from napari_exouptake.io import read_labels, write_labels


@pytest.mark.slow
def test_tiled_labels_of_a_run_are_read_back_by_labels_input(tmp_path, monkeypatch):
    """A run writes big label images tiled; giving those labels back with ``--labels`` gives the
    same per-cell table as the original labels."""
    import napari_exouptake.io as io
    from napari_exouptake.simulate import write_dataset

    sim = write_dataset(tmp_path / "sim", n_images=1, seed=5, shape=(160, 160))
    cfg = load_config(sim / "config.yaml").to_dict()
    cfg.pop("collagen", None)  # keeps the test fast; collagen has its own tests
    cfg = save_config(load_config(cfg), tmp_path / "config.yaml") or tmp_path / "config.yaml"
    first = analyze_batch(sim / "images", cfg, tmp_path / "a", labels=sim / "labels")
    assert first.exit_code == 0
    monkeypatch.setattr(io.labels, "TILED_LABELS_ABOVE_PX", 100 * 100)  # 160 x 160 counts as big
    tiled = tmp_path / "tiled"
    tiled.mkdir()
    for f in (sim / "labels").glob("*.tif"):
        write_labels(tiled / f.name, read_labels(f))
        with tifffile.TiffFile(tiled / f.name) as tif:
            assert tif.pages[0].is_tiled
        np.testing.assert_array_equal(read_labels(tiled / f.name), read_labels(f))
    again = analyze_batch(sim / "images", cfg, tmp_path / "b", labels=tiled)
    assert again.exit_code == 0
    a = pd.read_csv(tmp_path / "a" / "cells.csv")
    b = pd.read_csv(tmp_path / "b" / "cells.csv")
    assert len(a) > 5
    pd.testing.assert_frame_equal(a, b)
    # and the run's own label output is tiled now, equal to the input
    out = next((tmp_path / "b" / "labels").glob("*_cells.tif"))
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].is_tiled
    np.testing.assert_array_equal(read_labels(out), read_labels(tiled / out.name))
    # OME-Zarr labels (as other tools write them) in a --labels folder give the same table too
    pytest.importorskip("zarr", reason="OME-Zarr needs zarr (the formats extra)")
    zarr = tmp_path / "zarr"
    zarr.mkdir()
    for f in (sim / "labels").glob("*.tif"):
        write_labels(zarr / f.name.replace(".tif", ".zarr"), read_labels(f))
    assert not list(zarr.glob("*.tif"))
    third = analyze_batch(sim / "images", cfg, tmp_path / "c", labels=zarr)
    assert third.exit_code == 0
    pd.testing.assert_frame_equal(a, pd.read_csv(tmp_path / "c" / "cells.csv"))


def test_labels_must_be_integers(tmp_path):
    with pytest.raises(ValueError, match="integer"):
        write_labels(tmp_path / "x.tif", np.zeros((4, 4), np.float32))
