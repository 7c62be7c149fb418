"""Cellpose 4 (CP-SAM) path of the engine; runs only where cellpose 4 is installed.

Run with ``.ci/cellpose4.sh`` (builds its own venv with cellpose 4). No weights are
downloaded: a randomly initialised CP-SAM network is saved and loaded by path.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_exouptake import segmentation as S
from napari_exouptake.config import AssayConfig
from napari_exouptake.io import from_array

pytestmark = pytest.mark.skipif(
    S.cellpose_major_version() != 4, reason="needs cellpose 4 (see .ci/cellpose4.sh)"
)


@pytest.fixture(scope="module")
def random_cpsam(tmp_path_factory):
    import torch
    from cellpose.vit import CPSAM

    torch.manual_seed(0)
    net = CPSAM(dtype=torch.float32)
    path = tmp_path_factory.mktemp("cp4") / "random_cpsam.pth"
    torch.save(net.state_dict(), path)
    return path


def test_random_cpsam_through_engine_channel_order(random_cpsam):
    import torch

    rng = np.random.default_rng(0)
    cell = rng.random((256, 256)).astype(np.float32)
    cell[:128] += 5.0  # distinct channel patterns so the order can be checked
    nuc = rng.random((256, 256)).astype(np.float32)
    nuc[:, :128] += 5.0
    img = from_array(np.stack([nuc, cell]), axes="CYX", channel_names=["DAPI", "CellMask"])
    cfg = AssayConfig.model_validate(
        {
            "channels": {"nucleus": "DAPI", "cell": "CellMask"},
            "segmentation": {
                "mode": "cells",
                "model": str(random_cpsam),
                "nuclei_model": str(random_cpsam),
                "device": "cpu",
                "diameter_px": 30,
            },
        }
    )
    seen = []
    orig_get = S.engine._get_model

    def hooked(rm, device):
        model = orig_get(rm, device)
        if not getattr(model, "_exo_hooked", False):

            def pre_hook(mod, args):
                seen.append(args[0].detach().float().cpu().numpy())

            model.net.register_forward_pre_hook(pre_hook)
            model._exo_hooked = True
        return model

    S.engine._get_model = hooked
    try:
        t0 = time.perf_counter()
        seg = S.segment(img, cfg)
        elapsed = time.perf_counter() - t0
    finally:
        S.engine._get_model = orig_get
    assert seen, "the network was never called"
    x = seen[0]  # (B, 3, bsize, bsize) network input of the cells pass
    assert x.ndim == 4 and x.shape[1] == 3
    # channel 0 = cell (bright top half), 1 = nucleus (bright left half), 2 = zeros
    tile = x[0]
    assert np.abs(tile[2]).max() == 0.0
    top, bottom = tile[0][: tile.shape[1] // 4].mean(), tile[0][-tile.shape[1] // 4 :].mean()
    left, right = tile[1][:, : tile.shape[2] // 4].mean(), tile[1][:, -tile.shape[2] // 4 :].mean()
    assert top > bottom + 0.3
    assert left > right + 0.3
    assert seg.cells.shape == (256, 256) and seg.cells.dtype.kind in "iu"
    assert seg.nuclei is not None and seg.nuclei.shape == (256, 256)
    assert seg.cellpose_version.startswith("4.")
    assert seg.device == "cpu" and len(seg.model_sha256) == 64
    model = S._MODEL_CACHE[next(iter(S._MODEL_CACHE))]
    assert next(model.net.parameters()).dtype == torch.float32  # fp32 on CPU
    print(f"random CP-SAM 256x256 cells + nuclei on CPU: {elapsed:.1f} s")


def test_cpsam_missing_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(S.ModelNotAvailableError) as ei:
        S.resolve_model("cpsam")
    assert time.perf_counter() - t0 < 2.0
    msg = str(ei.value)
    assert "cpsam" in msg and str(tmp_path) in msg and "huggingface.co" in msg
    img = from_array(np.ones((1, 32, 32), np.float32), axes="CYX")
    cfg = AssayConfig.model_validate(
        {"channels": {"nucleus": 0}, "segmentation": {"mode": "nuclei", "model": "cpsam"}}
    )
    t0 = time.perf_counter()
    with pytest.raises(S.ModelNotAvailableError):
        S.segment(img, cfg)
    assert time.perf_counter() - t0 < 2.0


def test_demo_models_refused_under_cellpose4():
    if not (S._MODELS_DIR / S.DEMO_MODELS["demo-nuclei"]).is_file():
        pytest.skip("bundled weights absent")
    with pytest.raises(S.ModelNotAvailableError, match="Cellpose 3"):
        S.resolve_model("demo-nuclei")
