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


# -- lazy reading and big label images ----------------------------------------------------------


def test_lazy_tiff_reads_only_what_is_taken(tmp_path, czyx, monkeypatch):
    pytest.importorskip("zarr", reason="lazy reading needs zarr (the formats extra)")
    import napari_exouptake.io as io

    path = tmp_path / "big.ome.tif"
    tifffile.imwrite(path, czyx, ome=True, tile=(16, 16), metadata={"axes": "CZYX"})
    eager = read_image(path, lazy=False)
    lazy = read_image(path, lazy=True)
    assert not io.is_lazy(eager.data) and io.is_lazy(lazy.data)
    assert lazy.data.shape == eager.data.shape == czyx.shape
    assert np.array_equal(np.asarray(lazy.channel(2)), czyx[2])
    # the size rule: above LAZY_ABOVE_BYTES the default read is lazy
    monkeypatch.setattr(io.lazy, "LAZY_ABOVE_BYTES", czyx.nbytes - 1)
    assert io.is_lazy(read_image(path).data)
    monkeypatch.setattr(io.lazy, "LAZY_ABOVE_BYTES", czyx.nbytes)
    assert not io.is_lazy(read_image(path).data)


@pytest.mark.parametrize("lazy_input", [False, True])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_big_labels_tiled_tiff_and_ome_zarr(tmp_path, monkeypatch, lazy_input, suffix):
    pytest.importorskip("zarr", reason="lazy reading needs zarr (the formats extra)")
    import dask.array as da

    import napari_exouptake.io as io

    monkeypatch.setattr(io.labels, "TILED_LABELS_ABOVE_PX", 100 * 100)  # "big" = over 100 x 100
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 70_000, size=(300, 517)).astype(np.uint32)  # edge tiles partial
    arr = da.from_array(labels, chunks=(128, 100)) if lazy_input else labels
    path = tmp_path / f"big_cells{suffix}"
    write_labels(path, arr)
    write_labels(path, arr)  # overwriting an existing store/file works
    if suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256
    else:
        attrs = __import__("json").loads((path / ".zattrs").read_text())
        assert attrs["multiscales"][0]["datasets"][0]["path"] == "0"
    back = read_labels(path)
    assert back.dtype == np.uint32 and np.array_equal(back, labels)
    lazy_back = read_labels(path, lazy=True)
    assert io.is_lazy(lazy_back)
    assert np.array_equal(np.asarray(lazy_back[250:300, 500:517]), labels[250:, 500:])
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_small_labels_stay_plain_tiff(tmp_path):
    path = write_labels(tmp_path / "s.tif", np.arange(12, dtype=np.int32).reshape(3, 4))
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages[0].is_tiled


# -- microscope formats (bioio, the ``formats`` extra) ------------------------------------------


def test_formats_without_the_extra_name_the_extra(tmp_path, monkeypatch):
    import sys

    for suffix, module in ((".czi", "bioio_czi"), (".nd2", "bioio_nd2"), (".lif", "bioio_lif")):
        path = tmp_path / f"x{suffix}"
        path.write_bytes(b"not really")
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        msg = str(err.value)
        assert str(path) in msg and 'pip install "napari-exouptake[formats]"' in msg
        assert module.replace("_", "-") in msg and "\n" not in msg


def test_unsupported_suffix_lists_the_formats(tmp_path):
    path = tmp_path / "x.xyz"
    path.write_bytes(b"1")
    with pytest.raises(ImageReadError, match=r"\.czi, \.nd2, \.lif, \.zarr.*formats"):
        read_image(path)


def test_scene_of_a_tiff_is_refused(tmp_path, czyx):
    from napari_exouptake.io import scene_names

    path = tmp_path / "a.tif"
    write_ome_tiff(path, czyx, ["a", "b", "c"])
    assert scene_names(path) is None
    assert read_image(path, scene=0).data.shape == czyx.shape
    with pytest.raises(ImageReadError, match="scene 2 does not exist"):
        read_image(path, scene=2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (0, None), (0.0, None), (-6.23, None), (float("nan"), None), (None, None)],
)
def test_pixel_size_nonsense_is_unknown(value, expected, caplog, tmp_path):
    from napari_exouptake.io.formats import _valid_size

    with caplog.at_level("WARNING", logger="napari_exouptake.io"):
        assert _valid_size(value, "X", tmp_path / "f.czi") == expected
    warned = any("not a size" in r.getMessage() for r in caplog.records)
    assert warned == (value is not None and expected is None)


FORMATS = "formats"
# file -> (scene labels, TCZYX shape of each scene, channel names, (Z, X) um) from PROVENANCE.md
FORMAT_CASES = {
    "czi/CellDivision_T3_Z5_CH2_X240_Y170.czi": (
        ["Image_0"],
        [(3, 2, 5, 170, 240)],
        ("LED555", "LED470"),
        (0.32, 0.0906),
    ),
    "czi/S3_1Pos_2Mosaic_T2Z3_CH2_sm.czi": (
        ["TR1", "P1", "TR2"],
        [(2, 2, 3, 122, 295), (2, 2, 3, 64, 64), (2, 2, 3, 237, 352)],
        ("DAPI", "EGFP"),
        (1.0, 1.6),
    ),
    "czi/LLS7_small.czi": (
        ["Image_0"],
        [(2, 2, 3, 64, 64)],
        ("LatticeLightsheet 1-T1", "LatticeLightsheet 2-T2"),
        (0.145, 0.145),
    ),
    "nd2/cluster.nd2": (
        ["XYPos_0"],
        [(3, 2, 10, 31, 38)],
        ("5-FAM/pH 9.0", "FM 4-64/2% CHAPS"),
        (0.5, 0.168),
    ),
    "lif/PR2729_frameOrderCombinedScanTypes.lif": (
        ["TileScan_001"],
        [(2, 2, 3, 127, 127)],
        ("Green", "Red"),
        (None, 3.968),  # Z is -6.23 in the file: unknown
    ),
    "ome-zarr/xyz_8bit__mitotic_plate_calibrated.ome.zarr": (
        ["0"],
        [(1, 1, 6, 263, 263)],
        ("Channel 0",),
        (3.0, 0.0852),
    ),
}


@pytest.fixture(scope="module")
def formats_dir(shared_data):
    pytest.importorskip("bioio", reason="the formats extra is not installed")
    folder = shared_data / FORMATS
    if not folder.is_dir():
        pytest.skip("../shared/data/formats is not present")
    return folder


def _bioio_truth(path, scene):
    """What bioio itself reports for one scene (TCZYX array, names, sizes)."""
    from bioio import BioImage

    kwargs = {}
    if path.name.endswith(".ome.zarr"):
        import bioio_ome_zarr

        path = path / "0"  # bioformats2raw: the image is the group 0
        kwargs["reader"] = bioio_ome_zarr.Reader  # not found by suffix without .zarr
    bio = BioImage(path, **kwargs)
    bio.set_scene(scene)
    return bio.get_image_data("TCZYX"), list(bio.channel_names), bio.physical_pixel_sizes


@pytest.mark.parametrize("rel", list(FORMAT_CASES))
def test_reads_microscope_formats(formats_dir, rel, caplog):
    from napari_exouptake.io import scene_names

    path = formats_dir / rel
    scenes, shapes, names, (z_um, x_um) = FORMAT_CASES[rel]
    assert scene_names(path) == scenes
    for s, shape in enumerate(shapes):
        with caplog.at_level("WARNING", logger="napari_exouptake.io"):
            img = read_image(path, scene=s)
        assert img.source == path and img.metadata["scenes"] == scenes
        assert img.channel_names == names
        data, bio_names, sizes = _bioio_truth(path, s)
        assert data.shape == shape
        # same pixels as bioio, normalised like every other image (T dropped when 1)
        expected = data[0] if shape[0] == 1 else data
        assert np.array_equal(np.asarray(img.data), expected)
        assert list(img.channel_names) == [str(n) for n in bio_names]
        assert img.pixel_size_um == pytest.approx(sizes.X) == pytest.approx(x_um, rel=2e-3)
        if z_um is None:
            assert sizes.Z < 0 and img.z_step_um is None
            assert any("Z = -6.2" in r.getMessage() for r in caplog.records)
        else:
            assert img.z_step_um == pytest.approx(sizes.Z) == pytest.approx(z_um, rel=2e-3)
    # scenes by name, and a missing one
    assert read_image(path, scene=scenes[-1]).data.shape[-2:] == shapes[-1][-2:]
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(path, scene=len(scenes))


def test_lazy_microscope_format_reads_one_channel(formats_dir):
    from napari_exouptake.io import is_lazy

    path = formats_dir / "czi/S3_1Pos_2Mosaic_T2Z3_CH2_sm.czi"
    lazy = read_image(path, scene="TR2", lazy=True)
    eager = read_image(path, scene="TR2", lazy=False)
    assert is_lazy(lazy.data) and not is_lazy(eager.data)
    assert np.array_equal(np.asarray(lazy.frame(1).channel(1)), eager.frame(1).channel(1))


def test_failing_lif_names_the_file_and_the_complaint(formats_dir):
    path = formats_dir / "lif/LeicaLASX_wavelength-sweep_example.lif"
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "bioio-lif" in msg and "\n" not in msg
    assert "axes don't match array" in msg and "x_y_lambdaEmi" in msg


def _block_labels(shape_zyx):
    """Four rectangular cells covering the image's quadrants (Z, Y, X)."""
    z, y, x = shape_zyx
    lab = np.zeros((z, y, x), np.uint16)
    lab[:, : y // 2 - 1, : x // 2 - 1] = 1
    lab[:, : y // 2 - 1, x // 2 + 1 :] = 2
    lab[:, y // 2 + 1 :, : x // 2 - 1] = 3
    lab[:, y // 2 + 1 :, x // 2 + 1 :] = 4
    return lab


@pytest.mark.slow
def test_formats_analyse_end_to_end_and_resume(formats_dir, tmp_path):
    """`exouptake analyze` on the formats folder: every scene x time point is one image named
    file[scene]_tNNN, metadata reach run.json, the failing LIF is one clear failure, and a
    rerun reuses every finished file."""
    import json

    from napari_exouptake.cli import main

    labels = tmp_path / "labels"
    expected: dict[str, tuple] = {}  # image name -> (channel names, pixel size, z step)
    for rel, (scenes, shapes, names, _) in FORMAT_CASES.items():
        path = formats_dir / rel
        stem = path.name.split(".")[0]
        for s, shape in enumerate(shapes):
            img = read_image(path, scene=s)
            for t in range(shape[0]):
                name = stem + (f"[{scenes[s]}]" if len(scenes) > 1 else "")
                name += f"_t{t:03d}" if shape[0] > 1 else ""
                write_labels(labels / f"{name}_cells.tif", _block_labels(shape[2:]))
                expected[name] = (list(names), img.pixel_size_um, img.z_step_um)
    assert sum("S3_1Pos" in n for n in expected) == 3 * 2  # 3 scenes x 2 time points
    config = tmp_path / "config.yaml"
    config.write_text("channels:\n  exosome: 0\n")
    out = tmp_path / "out"
    args = ["analyze", str(formats_dir), "--config", str(config), "--out", str(out)]
    args += ["--labels", str(labels)]
    sheet = tmp_path / "sheet.csv"  # scenes in a sample sheet: `[[]` is a literal `[`
    sheet.write_text("pattern,condition\nS3_1Pos_2Mosaic_T2Z3_CH2_sm[[]TR1]*,tr1\ncluster,nd2\n")
    assert main([*args, "--sample-sheet", str(sheet)]) == 1  # failed: the wavelength-sweep LIF
    failures = pd.read_csv(out / "failures.csv")
    assert failures["image"].tolist() == ["LeicaLASX_wavelength-sweep_example"]
    assert "bioio-lif" in failures["error"][0] and "axes don't match array" in failures["error"][0]

    images = pd.read_csv(out / "images.csv")
    assert sorted(images["image"]) == sorted(expected)
    s3 = images[images["source_image"] == "S3_1Pos_2Mosaic_T2Z3_CH2_sm"].sort_values("image")
    assert s3["series"].tolist() == [1, 1, 0, 0, 2, 2]  # P1, TR1, TR2 (name order)
    assert (images["n_cells"] == 4).all()
    conditions = dict(zip(images["image"], images["condition"].fillna(""), strict=True))
    assert [n for n, c in conditions.items() if c == "tr1"] == [
        "S3_1Pos_2Mosaic_T2Z3_CH2_sm[TR1]_t000",
        "S3_1Pos_2Mosaic_T2Z3_CH2_sm[TR1]_t001",
    ]
    assert sorted(n for n, c in conditions.items() if c == "nd2") == [
        f"cluster_t00{t}" for t in range(3)
    ]
    run = json.loads((out / "run.json").read_text())
    for name, (names, px, z) in expected.items():
        meta = run["images"][name]["image_metadata"]
        assert meta["channel_names"] == names
        assert meta["pixel_size_um"] == px and run["images"][name]["pixel_size_um"] == px
        assert meta["z_step_um"] == z
    assert run["images"]["S3_1Pos_2Mosaic_T2Z3_CH2_sm[TR2]_t001"]["image_metadata"]["scene"] == (
        "TR2"
    )
    for name in expected:
        assert (out / "labels" / f"{name}_cells.tif").is_file()

    # a rerun (glob input this time) finds the same files and redoes none of them
    log_before = (out / "exouptake.log").read_text()
    glob_args = [str(formats_dir / "*" / "*.c*"), str(formats_dir / "*" / "*.[nlz]*")]
    args = ["analyze", *glob_args, "--config", str(config), "--out", str(out)]
    assert main([*args, "--labels", str(labels), "--sample-sheet", str(sheet)]) == 1
    new_log = (out / "exouptake.log").read_text()[len(log_before) :]
    assert "analyzed 0, reused 6, failed 1" in new_log


def test_batch_finds_microscope_files_and_zarr_stores(tmp_path):
    """Folders and globs yield .czi/.nd2/.lif files and .zarr stores (one input each, never
    the chunk files inside a store)."""
    from napari_exouptake.batch import collect_inputs

    for name in ("a.czi", "sub/b.ND2", "d.lif", "e.tif", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    store = tmp_path / "sub" / "c.ome.zarr"
    (store / "0" / "0").mkdir(parents=True)
    (store / ".zattrs").write_text("{}")
    (store / "0" / ".zattrs").write_text("{}")
    (store / "0" / "0" / "0.tif").write_bytes(b"x")  # a chunk that merely ends in .tif
    found = collect_inputs(tmp_path)
    assert [(f.name, f.path.relative_to(tmp_path).as_posix()) for f in found] == [
        ("a", "a.czi"),
        ("b", "sub/b.ND2"),
        ("c", "sub/c.ome.zarr"),
        ("d", "d.lif"),
        ("e", "e.tif"),
    ]
    assert [f.name for f in collect_inputs(str(tmp_path / "*" / "*.zarr"))] == ["c"]
    assert [f.path for f in collect_inputs(store)] == [store]  # the store itself as input
    assert [f.path for f in collect_inputs(store / "0")] == [store / "0"]  # an image group


def _write_ome_zarr(path, data, scale, unit, names):
    """A minimal OME-Zarr 0.4 image (c, z, y, x) written with zarr itself."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": unit} for a in "zyx"
    ]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            ],
        }
    ]
    root.attrs["omero"] = {"channels": [{"label": n} for n in names]}


def test_ome_zarr_units_and_nonsense_sizes(tmp_path, caplog):
    pytest.importorskip("bioio_ome_zarr", reason="the formats extra is not installed")
    data = np.arange(2 * 3 * 20 * 24, dtype=np.uint16).reshape(2, 3, 20, 24)
    nm = tmp_path / "nm.ome.zarr"
    _write_ome_zarr(nm, data, [1.0, 500.0, 85.0, 85.0], "nanometer", ["DAPI", "PKH26"])
    img = read_image(nm)
    assert img.channel_names == ("DAPI", "PKH26") and np.array_equal(img.data, data)
    assert img.pixel_size_um == pytest.approx(0.085) and img.z_step_um == pytest.approx(0.5)
    assert img.name == "nm"

    zero = tmp_path / "zero.ome.zarr"
    _write_ome_zarr(zero, data, [1.0, 2.0, 0.0, 0.0], "micrometer", ["a", "b"])
    with caplog.at_level("WARNING", logger="napari_exouptake.io"):
        img = read_image(zero)
    assert img.pixel_size_um is None and img.z_step_um == pytest.approx(2.0)
    assert any(
        "X = 0.0" in r.getMessage() and "zero.ome.zarr" in r.getMessage() for r in caplog.records
    )


def test_lazy_image_gives_the_same_analysis(tmp_path):
    """The pipeline takes what it needs channel by channel: a lazily read image (dask) gives
    exactly the tables of the same image read into memory."""
    pytest.importorskip("zarr", reason="lazy reading needs zarr (the formats extra)")
    from napari_exouptake._sample_data import SAMPLE_DIR
    from napari_exouptake.config import load_config
    from napari_exouptake.io import is_lazy
    from napari_exouptake.pipeline import analyze_image

    path = SAMPLE_DIR / "images" / "ev_high_003.ome.tif"
    labels = read_labels(SAMPLE_DIR / "labels" / "ev_high_003_cells.tif")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("channels:\n  exosome: PKH26\n  markers:\n    cd31: {channel: CD31}\n")
    config = load_config(cfg)
    lazy = read_image(path, lazy=True)
    assert is_lazy(lazy.data)
    a = analyze_image(lazy, config, labels=labels)
    b = analyze_image(read_image(path, lazy=False), config, labels=labels)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    pd.testing.assert_frame_equal(a.spots, b.spots)
    assert len(a.spots) > 100 and "cd31_mean_intensity" in a.cells


class _FakeBioImage:
    """Just enough of bioio.BioImage for _read_bioio: one RGB scene, X size NaN."""

    scenes = ("Scene #1",)

    def __init__(self, data):
        self._data = data  # (T, C, Z, Y, X, S)

    def set_scene(self, index):
        assert index == 0

    @property
    def dims(self):
        from types import SimpleNamespace

        return SimpleNamespace(order="TCZYXS", S=self._data.shape[-1])

    def get_image_dask_data(self, order):
        import dask.array as da

        assert order == "TCZYXS"
        return da.from_array(self._data)

    channel_names = ("Bright",)

    @property
    def physical_pixel_sizes(self):
        from types import SimpleNamespace

        return SimpleNamespace(Z=None, Y=0.5, X=float("nan"))


def test_rgb_scene_and_nan_size_through_the_bioio_path(tmp_path, monkeypatch, caplog):
    import napari_exouptake.io as io

    rgb = np.random.default_rng(2).integers(0, 255, (1, 1, 1, 12, 16, 3), dtype=np.uint8)
    monkeypatch.setattr(io.formats, "_open_bioio", lambda path, kind: _FakeBioImage(rgb))
    path = tmp_path / "slide.czi"
    path.write_bytes(b"x")
    with caplog.at_level("WARNING", logger="napari_exouptake.io"):
        img = read_image(path)
    assert img.axes == "CZYX" and img.data.shape == (3, 1, 12, 16)
    assert np.array_equal(img.data[:, 0], np.moveaxis(rgb[0, 0, 0], -1, 0))
    assert img.channel_names == ("C0", "C1", "C2")  # one name for three samples: not used
    assert img.pixel_size_um is None  # X is NaN: unknown, although Y says 0.5
    assert any("X = nan" in r.getMessage() for r in caplog.records)
    assert img.metadata["scene"] == "Scene #1" and img.metadata["scenes"] == ["Scene_1"]


def test_scene_labels_are_safe_and_unique():
    from napari_exouptake.io.formats import _scene_labels

    assert _scene_labels(["TR1", "Pos 1/A", "Pos 1:A", "", "Image:0", "x.y+z-1"]) == [
        "TR1",
        "Pos_1_A",
        "Pos_1_A_2",
        "scene3",
        "Image_0",
        "x.y+z-1",
    ]


def test_lazy_labels_without_dask_are_read_whole(tmp_path, monkeypatch):
    """The core install has no dask/zarr: lazy label reading falls back to a numpy array (a
    .zarr label image then names the extra to install)."""
    import napari_exouptake.io.labels as io_labels

    lab = np.arange(64, dtype=np.int32).reshape(8, 8)
    write_labels(tmp_path / "l.tif", lab)
    monkeypatch.setattr(io_labels, "_can_read_lazily", lambda: False)
    got = read_labels(tmp_path / "l.tif", lazy=True)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, lab)
    (tmp_path / "l.zarr").mkdir()
    with pytest.raises(ImageReadError, match=r"formats extra"):
        read_labels(tmp_path / "l.zarr", lazy=True)


def test_zarr_labels_read_eagerly_unless_asked(tmp_path):
    pytest.importorskip("zarr", reason="OME-Zarr needs zarr (the formats extra)")
    lab = np.arange(64, dtype=np.int32).reshape(8, 8)
    write_labels(tmp_path / "l.zarr", lab)
    eager = read_labels(tmp_path / "l.zarr")
    assert isinstance(eager, np.ndarray)
    np.testing.assert_array_equal(eager, lab)
    assert hasattr(read_labels(tmp_path / "l.zarr", lazy=True), "compute")
