from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_exouptake.io import (
    ImageReadError,
    from_array,
    read_image,
    read_labels,
    write_labels,
    write_ome_tiff,
    write_table,
)


@pytest.fixture
def czyx():
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(3, 4, 24, 32), dtype=np.uint16)


def test_ome_tiff_round_trip(tmp_path, czyx):
    p = write_ome_tiff(tmp_path / "a.ome.tif", czyx, ["DAPI", "PKH26", "CD31"], 0.325, 1.5)
    im = read_image(p)
    assert im.axes == "CZYX"
    np.testing.assert_array_equal(im.data, czyx)
    assert im.channel_names == ("DAPI", "PKH26", "CD31")
    assert im.pixel_size_um == pytest.approx(0.325)
    assert im.z_step_um == pytest.approx(1.5)
    assert im.name == "a" and im.source == p
    np.testing.assert_array_equal(im.channel(1), czyx[1])


def test_ome_2d(tmp_path, czyx):
    p = write_ome_tiff(tmp_path / "b.ome.tif", czyx[:, 0], ["a", "b", "c"], 0.5)
    im = read_image(p)
    assert im.data.shape == (3, 1, 24, 32) and not im.is_3d


@pytest.mark.parametrize("order", ["ZCYX", "CZYX"])
def test_imagej_hyperstack(tmp_path, czyx, order):
    # ImageJ stores hyperstacks as TZCYX; write Z and C in the file's order, read back normalised
    data = np.transpose(czyx, (1, 0, 2, 3))
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZCYX", "unit": "um", "spacing": 2.0, "Labels": ["n", "e", "m"] * 4},
    )
    im = read_image(tmp_path / "ij.tif")
    np.testing.assert_array_equal(im.data, czyx)
    assert im.pixel_size_um == pytest.approx(0.5)
    assert im.z_step_um == pytest.approx(2.0)
    assert im.channel_names == ("n", "e", "m")
    # an explicit axes string overrides the metadata (here: claim C and Z swapped)
    im2 = read_image(tmp_path / "ij.tif", axes=order)
    expect = czyx if order == "ZCYX" else np.transpose(czyx, (1, 0, 2, 3))
    np.testing.assert_array_equal(im2.data, expect)


def test_imagej_time_axis(tmp_path, czyx):
    t = np.stack([czyx, czyx + 1])
    tifffile.imwrite(
        tmp_path / "t.tif",
        np.transpose(t, (0, 2, 1, 3, 4)),
        imagej=True,
        metadata={"axes": "TZCYX"},
    )
    im = read_image(tmp_path / "t.tif")
    assert im.axes == "TCZYX" and im.n_timepoints == 2
    np.testing.assert_array_equal(im.data, t)
    np.testing.assert_array_equal(im.frame(1).data, czyx + 1)
    with pytest.raises(ValueError, match="time axis"):
        im.channel(0)


def test_plain_multipage_guesses_and_override(tmp_path, czyx, caplog):
    tifffile.imwrite(tmp_path / "c.tif", czyx[:, 0])  # 3 pages -> channels
    im = read_image(tmp_path / "c.tif")
    assert im.data.shape == (3, 1, 24, 32)
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((20, 8, 8), np.uint8))  # 20 pages -> Z
    with caplog.at_level("WARNING"):
        im = read_image(tmp_path / "z.tif")
    assert im.data.shape == (1, 20, 8, 8)
    assert "reading it as Z" in caplog.text
    assert read_image(tmp_path / "z.tif", axes="CYX").data.shape == (20, 1, 8, 8)
    with pytest.raises(ImageReadError, match="axes 'ZCYX' has 4 letters"):
        read_image(tmp_path / "z.tif", axes="ZCYX")


def test_png_gray_rgb(tmp_path):
    import imageio.v3 as iio

    g = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
    iio.imwrite(tmp_path / "g.png", np.stack([g, g, g], -1))
    im = read_image(tmp_path / "g.png")
    assert im.data.shape == (1, 1, 30, 40)
    np.testing.assert_array_equal(im.data[0, 0], g)
    rgb = np.stack([g, 255 - g, g // 2], -1)
    iio.imwrite(tmp_path / "c.png", rgb)
    im = read_image(tmp_path / "c.png")
    assert im.data.shape == (3, 1, 30, 40) and im.channel_names == ("red", "green", "blue")
    np.testing.assert_array_equal(im.data[1, 0], 255 - g)


def test_jpeg(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "x.jpg", np.full((16, 16, 3), 100, np.uint8))
    assert read_image(tmp_path / "x.jpg").data.shape == (1, 1, 16, 16)


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00" + b"garbage" * 20)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "trunc.tif").write_bytes(b"")
    for name, pattern in [
        ("empty.tif", "empty"),
        ("corrupt.tif", "corrupt.tif"),
        ("notes.txt", "unsupported file type '.txt'"),
        ("missing.tif", "no such file"),
    ]:
        with pytest.raises(ImageReadError, match=pattern) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_truncated_tiff(tmp_path, czyx):
    p = write_ome_tiff(tmp_path / "full.ome.tif", czyx, ["a", "b", "c"], compression=None)
    blob = p.read_bytes()
    (tmp_path / "cut.ome.tif").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ImageReadError, match="cut.ome.tif"):
        read_image(tmp_path / "cut.ome.tif")


def test_labels_and_tables(tmp_path):
    lab = np.zeros((10, 12), np.int32)
    lab[2:5, 3:7] = 70000
    write_labels(tmp_path / "l.tif", lab)
    back = read_labels(tmp_path / "l.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)
    with pytest.raises(ValueError, match="integer"):
        write_labels(tmp_path / "f.tif", lab.astype(float))
    df = pd.DataFrame({"image": ["a", "b"], "cell_id": [1, 2], "x": [0.5, 1.25]})
    paths = write_table(df, tmp_path / "cells")
    assert [p.name for p in paths] == ["cells.csv", "cells.parquet"]
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), df)
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), df)
    assert not list(tmp_path.glob(".*.tmp"))


def test_from_array_checks():
    im = from_array(np.zeros((5, 6)), "YX")
    assert im.data.shape == (1, 1, 5, 6) and im.channel_names == ("C0",)
    with pytest.raises(ValueError, match="does not match"):
        from_array(np.zeros((5, 6)), "CYX")
    with pytest.raises(ValueError, match="channel 3 does not exist"):
        from_array(np.zeros((2, 5, 6)), "CYX", ["a", "b"]).channel(3)


# -- every image format in ../shared/data ---------------------------------------------------

SHARED_CASES = [
    ("nuclei_stardist/img2d.tif", (1, 1, 512, 512)),
    ("nuclei3d_cells3d/nuclei.tif", (1, 60, 256, 256)),
    ("multichannel_bbbc022/BBBC022_IXMtest_A02_s9_crop.tif", (3, 1, 395, 695)),
    ("spots_beads/beads_300pxroi.png", (1, 1, 300, 300)),
    ("spots_spotiflow/img_terra_2d.tif", (1, 1, 1024, 1024)),
    ("collagen_curvealign/FiberImage/2B_D9_ROI1.tif", (1, 1, 512, 512)),
    ("collagen_curvealign/CellImage/2B_D9_ROI1.tif", (3, 1, 512, 512)),
    ("collagen_curvealign/other/TACS-3a.jpg", (1, 1, 600, 600)),
]


@pytest.mark.parametrize(("rel", "shape"), SHARED_CASES)
def test_reads_shared_data(shared_data, rel, shape):
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{rel} not present")
    im = read_image(path)
    assert im.data.shape == shape
    assert len(im.channel_names) == shape[0]


def test_reads_dsb_pngs_and_labels(shared_data):
    imgs = sorted((shared_data / "nuclei_dsb2018" / "images").iterdir())[:5]
    labs = sorted((shared_data / "nuclei_dsb2018" / "labels").iterdir())[:5]
    for p in imgs:
        im = read_image(p)
        assert im.data.ndim == 4 and im.data.shape[1] == 1
    for p in labs:
        assert read_labels(p).max() > 0
