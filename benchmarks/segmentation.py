"""Segmentation engine overhead and GPU throughput.

Usage::

    python benchmarks/segmentation.py [--model demo-nuclei] [--repeats 5] [--json OUT]

CPU section: seconds per image of :func:`napari_exouptake.segmentation.segment` versus a
direct ``cellpose.models.CellposeModel.eval`` call with the same weights, image and
parameters (the engine's overhead; target <= 5 %). Both are warmed up first (model load
excluded) and timed alternately; medians are reported.

CUDA section (only when a GPU is present): images/s and tiles/s of the engine for
``batch_size`` 1..32 on a 2048 x 2048 tiled image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_exouptake import segmentation as S  # noqa: E402
from napari_exouptake.config import AssayConfig  # noqa: E402
from napari_exouptake.io import from_array  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def _image() -> np.ndarray:
    p = DATA / "nuclei_stardist" / "img2d.tif"
    if p.is_file():
        import tifffile

        return np.asarray(tifffile.imread(p), dtype=np.float32)
    rng = np.random.default_rng(0)  # fallback: blobs
    from scipy import ndimage as ndi

    img = np.zeros((512, 512), np.float32)
    img[tuple(rng.integers(0, 512, (2, 300)))] = 1
    return ndi.gaussian_filter(img, 4) * 1000 + rng.normal(0, 0.5, (512, 512))


def _tiles(h: int, w: int, bsize: int = 224, overlap: float = 0.1) -> int:
    def n(length: int) -> int:
        return 1 if length <= bsize else max(2, int(np.ceil((1.0 + 2 * overlap) * length / bsize)))

    return n(h) * n(w)


def _nuclei_cfg(model: str, diameter: float, device: str, **extra) -> AssayConfig:
    """Nuclei-mode config on channel 0 with the given model, diameter and device."""
    seg = {"mode": "nuclei", "model": model, "diameter_px": diameter, "device": device, **extra}
    return AssayConfig.model_validate({"channels": {"nucleus": 0}, "segmentation": seg})


def bench_cpu(model: str, repeats: int, diameter: float) -> dict:
    img = _image()
    rm = S.resolve_model(model)
    cfg = _nuclei_cfg(model, diameter, "cpu")
    im = from_array(img[None], axes="CYX", channel_names=["DNA"])
    cp = S._get_model(rm, "cpu")  # the same loaded network for both paths
    sc = cfg.segmentation
    kw = {**S.eval_kwargs(sc, diameter), "batch_size": sc.batch_size}

    def direct() -> np.ndarray:
        return cp.eval(img, channels=[0, 0], **kw)[0]

    def engine() -> np.ndarray:
        return S.segment(im, cfg).cells

    a, b = direct(), engine()  # warm-up
    same = bool(np.array_equal(a > 0, b > 0))
    td, te = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        direct()
        td.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine()
        te.append(time.perf_counter() - t0)
    d, e = statistics.median(td), statistics.median(te)
    return {
        "image": "stardist img2d 512x512",
        "model": model,
        "repeats": repeats,
        "direct_s": round(d, 3),
        "engine_s": round(e, 3),
        "overhead_ratio": round(e / d - 1.0, 4),
        "same_foreground": same,
        "direct_all_s": [round(x, 3) for x in td],
        "engine_all_s": [round(x, 3) for x in te],
    }


def bench_cuda(model: str, diameter: float) -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    img = np.tile(_image(), (4, 4))  # 2048 x 2048
    im = from_array(img[None], axes="CYX", channel_names=["DNA"])
    n_tiles = _tiles(*img.shape)
    out = {"gpu": torch.cuda.get_device_name(0), "image": "2048x2048", "tiles": n_tiles, "rows": []}
    for bs in (1, 2, 4, 8, 16, 32):
        cfg = _nuclei_cfg(model, diameter, "cuda", batch_size=bs)
        S.segment(im, cfg)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            S.segment(im, cfg)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / reps
        out["rows"].append(
            {
                "batch_size": bs,
                "s_per_image": round(dt, 3),
                "images_per_s": round(1 / dt, 2),
                "tiles_per_s": round(n_tiles / dt, 1),
            }
        )
        print(out["rows"][-1], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="segmentation engine benchmark")
    ap.add_argument("--model", default="demo-nuclei")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--diameter", type=float, default=17.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res = {
        "cellpose_version": S.cellpose_version(),
        "cpu": bench_cpu(a.model, a.repeats, a.diameter),
    }
    print(json.dumps(res["cpu"], indent=1), flush=True)
    res["cuda"] = bench_cuda(a.model, a.diameter)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
