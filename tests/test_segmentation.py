"""Tests of the Cellpose segmentation engine (napari_exouptake.segmentation)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from napari_exouptake import segmentation as S
from napari_exouptake.commands.train import _parse_channels, main_train
from napari_exouptake.config import AssayConfig
from napari_exouptake.io import from_array

DATA = Path(__file__).parents[2] / "shared" / "data"
DSB = DATA / "nuclei_dsb2018"
STARDIST = DATA / "nuclei_stardist"

needs_cp3 = pytest.mark.skipif(
    S.cellpose_major_version() != 3, reason="bundled demo models are Cellpose 3 networks"
)


def _has_demo(name: str) -> bool:
    return (S._MODELS_DIR / S.DEMO_MODELS[name]).is_file()


needs_demo_nuclei = pytest.mark.skipif(
    not _has_demo("demo-nuclei"), reason="bundled demo-nuclei weights absent"
)
needs_demo_cells = pytest.mark.skipif(
    not _has_demo("demo-cells"), reason="bundled demo-cells weights absent"
)


def _cfg(**seg) -> AssayConfig:
    channels = seg.pop("channels", {"nucleus": 0})
    px = seg.pop("pixel_size_um", None)
    seg.setdefault("device", "cpu")
    return AssayConfig.model_validate(
        {"channels": channels, "pixel_size_um": px, "segmentation": seg}
    )


def _ap50(gt: np.ndarray, pred: np.ndarray) -> float:
    from cellpose.metrics import average_precision
    from skimage.segmentation import relabel_sequential

    gt = relabel_sequential(gt.astype(np.int32))[0]
    pred = relabel_sequential(pred.astype(np.int32))[0]
    return float(average_precision([gt], [pred], threshold=[0.5])[0][0, 0])


# ----------------------------------------------------------------------------- pure numpy


def test_holdout_split_is_deterministic_and_sized():
    names = [f"img{i:04d}" for i in range(2000)]
    held = [n for n in names if S.holdout_split(n, 0.2)]
    assert held == [n for n in names if S.holdout_split(n, 0.2)]
    assert 0.17 < len(held) / len(names) < 0.23
    assert not any(S.holdout_split(n, 0.0) for n in names)
    with pytest.raises(ValueError, match="holdout"):
        S.holdout_split("x", 1.5)


def test_map_nuclei_to_cells_majority_overlap():
    cells = np.zeros((10, 20), np.int32)
    cells[:, :10] = 1
    cells[:, 10:] = 2
    nuclei = np.zeros_like(cells)
    nuclei[2:5, 7:12] = 3  # 3 px columns in cell 1 (7,8,9), 2 in cell 2 -> cell 1
    nuclei[6:8, 12:15] = 1  # cell 2
    nuclei[0, 0] = 5  # single pixel in cell 1
    m = S.map_nuclei_to_cells(nuclei, cells)
    assert m.shape == (6,)
    assert m.tolist() == [0, 2, 0, 1, 0, 1]
    cells[:] = 0
    assert S.map_nuclei_to_cells(nuclei, cells).tolist() == [0] * 6
    with pytest.raises(ValueError, match="shape"):
        S.map_nuclei_to_cells(nuclei, cells[:5])


def test_expand_distance_and_watershed():
    nuclei = np.zeros((64, 64), np.int32)
    nuclei[20:24, 20:24] = 1
    nuclei[40:44, 40:44] = 2
    grown = S._expand(nuclei, 5.0, "distance", None)
    assert set(np.unique(grown)) == {0, 1, 2}
    assert (grown == 1).sum() > (nuclei == 1).sum() * 3
    assert (grown[nuclei > 0] == nuclei[nuclei > 0]).all()
    # no pixel farther than 5 px from its nucleus
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(nuclei != 1)
    assert d[grown == 1].max() <= 5.0
    # watershed: bright signal only around nucleus 1 -> nucleus 2 stays small
    signal = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    signal[(yy - 22) ** 2 + (xx - 22) ** 2 < 36] = 10.0
    ws = S._expand(nuclei, 8.0, "watershed", signal)
    assert (ws == 1).sum() > (nuclei == 1).sum()
    assert (ws == 2).sum() == (nuclei == 2).sum()
    assert (ws == 1).sum() <= np.count_nonzero(signal) + 16


# ----------------------------------------------------------------------------- resolution


def test_resolve_model_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    major = S.cellpose_major_version() or 3
    name = "cpsam" if major >= 4 else "cyto3"
    t0 = time.perf_counter()
    with pytest.raises(S.ModelNotAvailableError) as ei:
        S.resolve_model(name)
    assert time.perf_counter() - t0 < 2.0
    msg = str(ei.value)
    assert name in msg and str(tmp_path) in msg and "https://" in msg
    if major == 3:
        with pytest.raises(S.ModelNotAvailableError, match="nucleitorch_0"):
            S.resolve_model("nuclei")
    with pytest.raises(S.ModelNotAvailableError, match="does not exist"):
        S.resolve_model(str(tmp_path / "missing.pth"))
    with pytest.raises(S.ModelNotAvailableError, match="unknown model"):
        S.resolve_model("no-such-model")
    assert issubclass(S.ModelNotAvailableError, ValueError)


def test_resolve_model_file_and_model_dir(tmp_path, monkeypatch):
    f = tmp_path / "my_model"
    f.write_bytes(b"weights")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    rm = S.resolve_model(str(f))
    assert rm.kind == "file" and rm.path == f.resolve()
    assert rm.sha256 == hashlib.sha256(b"weights").hexdigest()
    by_name = S.resolve_model("my_model")  # a file in Cellpose's model folder
    assert by_name.path == f


def test_segment_fails_fast_when_builtin_model_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    name = "cpsam" if S.cellpose_major_version() >= 4 else "cyto3"
    img = from_array(
        np.random.default_rng(0).random((2, 64, 64)), axes="CYX", channel_names=["DAPI", "CellMask"]
    )
    cfg = _cfg(channels={"nucleus": 0, "cell": 1}, mode="cells", model=name, nuclei_model=name)
    t0 = time.perf_counter()
    with pytest.raises(S.ModelNotAvailableError, match=name):
        S.segment(img, cfg)
    assert time.perf_counter() - t0 < 2.0


def test_resolve_device(monkeypatch):
    import torch

    assert S.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        S.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert S.resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        S.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="MPS"):
        S.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert S.resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert S.resolve_device("auto") == "cuda:0"
    assert S.resolve_device("cuda") == "cuda:0"
    assert S.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="only 2 CUDA"):
        S.resolve_device("cuda:2")


# ----------------------------------------------------------------------------- OOM fallback


class _FakeModel:
    def __init__(self, device):
        self.device = device
        self.diam_mean = 17.0


def test_cuda_oom_halves_batch_then_falls_back_to_cpu(monkeypatch, tmp_path):
    f = tmp_path / "fake.pth"
    f.write_bytes(b"x")
    calls = []

    def fake_get_model(rm, device):
        return _FakeModel(device)

    def fake_eval(model, x, major, **kw):
        calls.append((model.device, kw["batch_size"]))
        if model.device != "cpu":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        lab = np.zeros(x.shape[:-1], np.int32)
        lab[4:10, 4:10] = 1
        return lab

    monkeypatch.setattr(S.engine, "_get_model", fake_get_model)
    monkeypatch.setattr(S.engine, "_eval_model", fake_eval)
    monkeypatch.setattr(S.engine, "resolve_device", lambda spec="auto": "cuda:0")
    img = from_array(np.random.default_rng(1).random((1, 32, 32)), axes="CYX")
    cfg = _cfg(mode="nuclei", model=str(f), batch_size=8, device="auto")
    seg = S.segment(img, cfg)
    assert calls == [("cuda:0", 8), ("cuda:0", 4), ("cuda:0", 2), ("cuda:0", 1), ("cpu", 8)]
    assert seg.device == "cpu"
    assert seg.cells.shape == (32, 32) and seg.cells.max() == 1
    assert any("out of memory" in w for w in seg.warnings)


def test_cuda_oom_recovers_with_smaller_batch(monkeypatch, tmp_path):
    f = tmp_path / "fake.pth"
    f.write_bytes(b"x")
    calls = []

    def fake_eval(model, x, major, **kw):
        calls.append(kw["batch_size"])
        if kw["batch_size"] > 2:
            raise RuntimeError("CUDA out of memory")
        return np.zeros(x.shape[:-1], np.int32)

    monkeypatch.setattr(S.engine, "_get_model", lambda rm, device: _FakeModel(device))
    monkeypatch.setattr(S.engine, "_eval_model", fake_eval)
    monkeypatch.setattr(S.engine, "resolve_device", lambda spec="auto": "cuda:0")
    img = from_array(np.random.default_rng(1).random((1, 32, 32)), axes="CYX")
    seg = S.segment(img, _cfg(mode="nuclei", model=str(f), batch_size=8))
    assert calls == [8, 4, 2]
    assert seg.device == "cuda:0"


def test_non_oom_errors_are_not_swallowed(monkeypatch, tmp_path):
    f = tmp_path / "fake.pth"
    f.write_bytes(b"x")

    def boom(model, x, major, **kw):
        raise RuntimeError("something else")

    monkeypatch.setattr(S.engine, "_get_model", lambda rm, device: _FakeModel(device))
    monkeypatch.setattr(S.engine, "_eval_model", boom)
    img = from_array(np.random.default_rng(1).random((1, 32, 32)), axes="CYX")
    with pytest.raises(RuntimeError, match="something else"):
        S.segment(img, _cfg(mode="nuclei", model=str(f)))


# ----------------------------------------------------------------------------- bad inputs


def test_missing_channel_role_names_channel_and_lists_channels():
    img = from_array(np.zeros((2, 32, 32)), axes="CYX", channel_names=["DAPI", "CellMask"])
    with pytest.raises(ValueError) as ei:
        S.segment(img, _cfg(channels={"nucleus": 0, "cell": 3}, mode="cells"))
    msg = str(ei.value)
    assert "3" in msg and "DAPI" in msg and "CellMask" in msg
    with pytest.raises(ValueError, match="PKH26"):
        S.segment(img, _cfg(channels={"nucleus": "PKH26"}, mode="nuclei"))
    with pytest.raises(ValueError, match="channels.cell"):
        S.segment(img, _cfg(channels={"nucleus": 0}, mode="cells"))


@needs_cp3
@needs_demo_nuclei
@pytest.mark.parametrize("shape", [(64, 64), (1, 1)])
def test_all_zero_and_tiny_images_give_empty_labels(shape):
    img = from_array(np.zeros((1, *shape), np.uint16), axes="CYX")
    seg = S.segment(img, _cfg(mode="nuclei", model="demo-nuclei"))
    assert seg.cells.shape == shape
    assert seg.cells.max() == 0 and seg.n_cells == 0
    assert seg.warnings


@needs_cp3
@needs_demo_nuclei
def test_nan_image_raises_clear_error():
    a = np.ones((1, 32, 32), np.float32)
    a[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        S.segment(
            from_array(a, axes="CYX", channel_names=["DAPI"]),
            _cfg(mode="nuclei", model="demo-nuclei"),
        )


# ----------------------------------------------------------------------------- real network


def _stardist():
    import tifffile

    if not STARDIST.is_dir():
        pytest.skip("shared data absent")
    return (tifffile.imread(STARDIST / "img2d.tif"), tifffile.imread(STARDIST / "mask2d.tif"))


@needs_cp3
@needs_demo_nuclei
def test_bundled_weights_are_fp16_and_load_safely():
    import torch

    p = S.resolve_model("demo-nuclei").path
    assert p.stat().st_size < 30 * 2**20
    sd = torch.load(p, map_location="cpu", weights_only=True)
    floats = [v for v in sd.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)


@pytest.mark.slow
@needs_cp3
@needs_demo_nuclei
def test_demo_nuclei_on_real_nuclei_image():
    img, gt = _stardist()
    # a 256x256 crop keeps the test short; ~35 nuclei, median diameter 23.6 px
    img, gt = img[:256, :256], gt[:256, :256]
    seg = S.segment(
        from_array(img[None], axes="CYX", channel_names=["DAPI"]),
        _cfg(mode="nuclei", model="demo-nuclei", diameter_px=24),
    )
    n_gt = len(np.unique(gt)) - 1
    assert seg.cells.shape == img.shape and seg.cells.dtype.kind in "iu"
    assert 0.8 * n_gt <= seg.n_cells <= 1.2 * n_gt
    assert _ap50(gt, seg.cells) >= 0.75
    assert seg.device == "cpu" and len(seg.model_sha256) == 64
    assert seg.cellpose_version.startswith("3.")
    # the network is cached: a second call does not load it again
    n_cached = len(S._MODEL_CACHE)
    S.segment(
        from_array(img[None, :64, :64], axes="CYX"),
        _cfg(mode="nuclei", model="demo-nuclei", diameter_px=17),
    )
    assert len(S._MODEL_CACHE) == n_cached


@pytest.mark.slow
@needs_cp3
@needs_demo_nuclei
def test_expand_mode_grows_cells_from_nuclei():
    img, _ = _stardist()
    img = img[:192, :192]
    a = from_array(img[None], axes="CYX", channel_names=["DAPI"], pixel_size_um=0.5)
    seg = S.segment(a, _cfg(mode="expand", model="demo-nuclei", diameter_px=24, expand_um=2.0))
    assert seg.nuclei is not None and seg.nuclei.max() > 10
    assert (seg.cells > 0).sum() > 1.2 * (seg.nuclei > 0).sum()
    # every nucleus maps to the cell with its own id (expansion keeps ids)
    ids = np.unique(seg.nuclei[seg.nuclei > 0])
    assert (seg.nucleus_to_cell[ids] == ids).all()
    assert seg.timings["expand"] > 0


@pytest.mark.slow
@needs_cp3
@needs_demo_nuclei
def test_time_series_and_z_stack_shapes():
    img, _ = _stardist()
    crop = img[:96, :96]
    t_img = from_array(np.stack([crop, crop[::-1]])[:, None], axes="TCYX", channel_names=["DAPI"])
    seg = S.segment(t_img, _cfg(mode="nuclei", model="demo-nuclei", diameter_px=24))
    assert seg.cells.shape == (2, 96, 96)
    assert seg.cells[0].max() > 3 and seg.cells[1].max() > 3
    z_img = from_array(np.stack([crop, crop])[None], axes="CZYX", channel_names=["DAPI"])
    seg = S.segment(
        z_img, _cfg(mode="nuclei", model="demo-nuclei", diameter_px=24, stitch_threshold=0.3)
    )
    assert seg.cells.shape == (2, 96, 96)
    # identical planes stitched: same object ids in both planes
    both = (seg.cells[0] > 0) & (seg.cells[1] > 0)
    assert (seg.cells[0][both] == seg.cells[1][both]).mean() > 0.95


@pytest.mark.slow
@needs_cp3
@needs_demo_cells
@needs_demo_nuclei
def test_demo_cells_on_simulated_image(tmp_path):
    sim = pytest.importorskip("napari_exouptake.simulate")
    from napari_exouptake.io import read_image, read_labels

    out = sim.write_dataset(tmp_path / "sim", n_images=1, seed=777, shape=(256, 256))
    imgf = sorted((Path(out) / "images").glob("*.ome.tif"))[0]
    name = imgf.name[: -len(".ome.tif")]
    image = read_image(imgf)
    truth = read_labels(Path(out) / "labels" / f"{name}_cells.tif")
    names = [n.lower() for n in image.channel_names]
    cfg = _cfg(
        channels={"nucleus": names.index("dapi"), "cell": names.index("cellmask")},
        mode="cells",
        model="demo-cells",
        diameter_px=36,
    )
    seg = S.segment(image, cfg)
    assert seg.nuclei is not None and seg.nucleus_to_cell is not None
    assert seg.nuclei_model_id == "demo-nuclei"
    assert _ap50(truth, seg.cells) >= 0.7
    table = seg.nucleus_table()
    assert list(table.columns) == ["nucleus_id", "cell_id"] and (table.cell_id > 0).mean() > 0.8


@pytest.mark.slow
@needs_cp3
def test_train_model_tiny_run_writes_fp16_and_resumes(tmp_path):
    import torch

    if not DSB.is_dir():
        pytest.skip("shared data absent")
    import shutil

    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    stems = [
        "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
        "077f026f4ab0f0bcc0856644d99cbf639e443ec4f067d7b708bc6cecac609424",
    ]
    for s in stems:
        shutil.copy(DSB / "images" / f"{s}.png", imgs)
        shutil.copy(DSB / "labels" / f"{s}.tif", labs)
    out = tmp_path / "m.pth"
    from napari_exouptake.progress import Cancelled

    seen = []
    with pytest.raises(Cancelled, match="step 1/2"):  # one progress protocol: stops after step 1
        S.train_model(
            imgs, labs, out, n_steps=2, batch_size=2, bsize=64, seed=3, device="cpu",
            progress=lambda f, m: seen.append((f, m)), cancel=lambda: bool(seen),
        )  # fmt: skip
    assert len(seen) == 1 and seen[0][0] == 0.5 and seen[0][1].startswith("step 1/2, loss ")
    assert torch.load(out.with_name("m.pth.ckpt"), weights_only=True)["step"] == 1
    S.train_model(imgs, labs, out, n_steps=2, batch_size=2, bsize=64, seed=3, device="cpu")
    sd = torch.load(out, weights_only=True)
    assert sd["diam_mean"].dtype == torch.float16 and float(sd["diam_mean"]) == 17.0
    ck = torch.load(out.with_name("m.pth.ckpt"), weights_only=True)
    assert ck["step"] == 2
    S.train_model(imgs, labs, out, n_steps=3, batch_size=2, bsize=64, seed=3, device="cpu")
    assert torch.load(out.with_name("m.pth.ckpt"), weights_only=True)["step"] == 3
    # the trained file runs through the engine by path
    a = from_array(np.random.default_rng(0).random((1, 64, 64)), axes="CYX")
    seg = S.segment(a, _cfg(mode="nuclei", model=str(out), diameter_px=17))
    assert seg.cells.shape == (64, 64)


@pytest.mark.slow
@needs_cp3
@needs_demo_nuclei
def test_estimate_diameter_close_to_truth():
    img, gt = _stardist()
    img, gt = img[:256, :256], gt[:256, :256]
    d_true = S._median_diameter(gt)  # 23.6 px
    d = S.estimate_diameter(
        from_array(img[None], axes="CYX", channel_names=["DAPI"]),
        _cfg(mode="nuclei", model="demo-nuclei", diameter_px=None),
    )
    assert 0.75 * d_true <= d <= 1.3 * d_true


def test_training_channel_spec_parsing():
    names = ["DAPI", "CellMask", "PKH26"]
    assert _parse_channels("cell,nucleus", names) == (1, 0)
    assert _parse_channels("1,0", names) == (1, 0)
    assert _parse_channels("pkh26,none", names) == (2, None)
    assert _parse_channels((0, None), names) == (0, None)
    assert _parse_channels("cell,nucleus", ["C0"]) == (0, None)
    with pytest.raises(ValueError, match="does not exist"):
        _parse_channels("5,0", names)
    with pytest.raises(ValueError, match="no channel named"):
        _parse_channels("GFP", names)
    with pytest.raises(ValueError, match="cannot tell"):
        _parse_channels("cell", ["a", "b"])


def test_main_train_refuses_sgd_learning_rate(tmp_path):
    with pytest.raises(ValueError, match="AdamW"):
        main_train(tmp_path, tmp_path, tmp_path / "m.pth", learning_rate=0.1)
