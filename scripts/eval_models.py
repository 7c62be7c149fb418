"""Measure AP@0.5 of the bundled demo models against ground truth.

Usage::

    python scripts/eval_models.py [--nuclei MODEL] [--cells MODEL] [--data ../shared/data]
                                  [--sim-n 6] [--sim-seed 2000] [--skip-auto] [--json OUT]

* demo-nuclei on the DSB2018 validation images (``holdout_split(image_id, 0.2)``, never
  trained on) and on the stardist image (not in the DSB subset). Diameter: each image's
  ground-truth median equivalent diameter ("oracle", as in the Cellpose papers) and, unless
  ``--skip-auto``, the engine's automatic :func:`estimate_diameter`.
* demo-cells on fresh simulator images (dataset seed ``--sim-seed``, never used in training:
  training used seeds 1000/1001), cell diameter from the truth labels.

Ground-truth labels are renumbered (``relabel_sequential``) before scoring, because
``cellpose.metrics.average_precision`` sizes its arrays by the largest label.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_exouptake import segmentation as S  # noqa: E402
from napari_exouptake.config import AssayConfig  # noqa: E402
from napari_exouptake.io import from_array, read_image, read_labels  # noqa: E402


def ap50(gt: np.ndarray, pred: np.ndarray) -> tuple[float, int, int, int]:
    """AP@0.5 = TP / (TP + FP + FN) with TP/FP/FN counts."""
    from cellpose.metrics import average_precision
    from skimage.segmentation import relabel_sequential

    gt = relabel_sequential(np.asarray(gt, np.int32))[0]
    pred = relabel_sequential(np.asarray(pred, np.int32))[0]
    ap, tp, fp, fn = average_precision([gt], [pred], threshold=[0.5])
    return float(ap[0, 0]), int(tp[0, 0]), int(fp[0, 0]), int(fn[0, 0])


def pooled(rows: list[dict], key: str) -> float:
    tp = sum(r[f"{key}_tp"] for r in rows)
    fp = sum(r[f"{key}_fp"] for r in rows)
    fn = sum(r[f"{key}_fn"] for r in rows)
    return tp / max(tp + fp + fn, 1)


def nuclei_cfg(model: str, diameter: float | None) -> AssayConfig:
    return AssayConfig.model_validate(
        {
            "channels": {"nucleus": 0},
            "segmentation": {
                "mode": "nuclei",
                "model": model,
                "diameter_px": diameter,
                "device": "cpu",
            },
        }
    )


def eval_nuclei(model: str, data: Path, auto: bool) -> dict:
    import imageio.v3 as iio
    import tifffile

    dsb = data / "nuclei_dsb2018"
    with open(dsb / "index.csv", newline="") as fh:
        ids = [r["image_id"] for r in csv.DictReader(fh)]
    val = [i for i in ids if S.holdout_split(i, 0.2)]
    rows = []
    for i in val:
        img = np.asarray(iio.imread(dsb / "images" / f"{i}.png"))[..., 0]
        gt = tifffile.imread(dsb / "labels" / f"{i}.tif")
        d = S._median_diameter(gt)
        im = from_array(img[None], axes="CYX", channel_names=["DNA"])
        t0 = time.perf_counter()
        seg = S.segment(im, nuclei_cfg(model, d))
        row = {
            "image": i[:12],
            "shape": "x".join(map(str, img.shape)),
            "gt_diam": round(d, 1),
            "n_gt": int(len(np.unique(gt)) - 1),
            "n_pred": seg.n_cells,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        row["ap50"], row["oracle_tp"], row["oracle_fp"], row["oracle_fn"] = ap50(gt, seg.cells)
        if auto:
            de = S.estimate_diameter(im, nuclei_cfg(model, None))
            seg = S.segment(im, nuclei_cfg(model, de if np.isfinite(de) else None))
            row["auto_diam"] = round(float(de), 1)
            row["ap50_auto"], row["auto_tp"], row["auto_fp"], row["auto_fn"] = ap50(gt, seg.cells)
        rows.append(row)
        print(row, flush=True)
    out = {
        "dsb_val_images": len(val),
        "dsb_val_nuclei": sum(r["n_gt"] for r in rows),
        "dsb_ap50_mean_oracle": float(np.mean([r["ap50"] for r in rows])),
        "dsb_ap50_pooled_oracle": pooled(rows, "oracle"),
        "dsb_rows": rows,
    }
    if auto:
        out["dsb_ap50_mean_auto"] = float(np.mean([r["ap50_auto"] for r in rows]))
        out["dsb_ap50_pooled_auto"] = pooled(rows, "auto")

    sd = data / "nuclei_stardist"
    img = tifffile.imread(sd / "img2d.tif")
    gt = tifffile.imread(sd / "mask2d.tif")
    d = S._median_diameter(gt)
    im = from_array(img[None], axes="CYX", channel_names=["DNA"])
    t0 = time.perf_counter()
    seg = S.segment(im, nuclei_cfg(model, d))
    out["stardist_gt_diam"] = round(d, 1)
    out["stardist_seconds"] = round(time.perf_counter() - t0, 2)
    out["stardist_ap50_oracle"] = ap50(gt, seg.cells)[0]
    out["stardist_ap50_d17"] = ap50(gt, S.segment(im, nuclei_cfg(model, 17.0)).cells)[0]
    if auto:
        de = S.estimate_diameter(im, nuclei_cfg(model, None))
        out["stardist_auto_diam"] = round(float(de), 1)
        out["stardist_ap50_auto"] = ap50(gt, S.segment(im, nuclei_cfg(model, de)).cells)[0]
    return out


def eval_cells(model: str, n: int, seed: int, workdir: Path) -> dict:
    from napari_exouptake.simulate import write_dataset

    rows = []
    for diff in ("normal", "hard"):
        sim = workdir / f"sim_eval_{diff}_{seed}"
        if not (sim / "truth_cells.csv").is_file():
            write_dataset(sim, n_images=n, seed=seed, difficulty=diff)
        for f in sorted((sim / "images").glob("*.ome.tif")):
            name = f.name[: -len(".ome.tif")]
            image = read_image(f)
            truth = read_labels(sim / "labels" / f"{name}_cells.tif")
            ntruth = read_labels(sim / "labels" / f"{name}_nuclei.tif")
            names = [c.lower() for c in image.channel_names]
            d = S._median_diameter(truth)
            cfg = AssayConfig.model_validate(
                {
                    "channels": {"nucleus": names.index("dapi"), "cell": names.index("cellmask")},
                    "segmentation": {
                        "mode": "cells",
                        "model": model,
                        "diameter_px": d,
                        "device": "cpu",
                    },
                }
            )
            t0 = time.perf_counter()
            seg = S.segment(image, cfg)
            row = {
                "image": f"{diff}/{name}",
                "gt_diam": round(d, 1),
                "n_gt": int(len(np.unique(truth)) - 1),
                "n_pred": seg.n_cells,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            row["ap50"], row["cells_tp"], row["cells_fp"], row["cells_fn"] = ap50(truth, seg.cells)
            if seg.nuclei is not None:
                row["nuclei_ap50"] = ap50(ntruth, seg.nuclei)[0]
            rows.append(row)
            print(row, flush=True)
    return {
        "sim_seed": seed,
        "sim_images": len(rows),
        "sim_ap50_mean": float(np.mean([r["ap50"] for r in rows])),
        "sim_ap50_pooled": pooled(rows, "cells"),
        "sim_ap50_mean_normal": float(
            np.mean([r["ap50"] for r in rows if r["image"].startswith("normal")])
        ),
        "sim_ap50_mean_hard": float(
            np.mean([r["ap50"] for r in rows if r["image"].startswith("hard")])
        ),
        "sim_nuclei_ap50_mean": float(np.mean([r.get("nuclei_ap50", np.nan) for r in rows])),
        "sim_rows": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nuclei", default="demo-nuclei", help="nuclei model ('' to skip)")
    ap.add_argument("--cells", default="demo-cells", help="cells model ('' to skip)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sim-n", type=int, default=4, help="images per difficulty")
    ap.add_argument("--sim-seed", type=int, default=2000)
    ap.add_argument("--skip-auto", action="store_true", help="skip automatic diameters")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "exo_eval")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res: dict = {"cellpose_version": S.cellpose_version()}
    if a.nuclei:
        res["nuclei_model"] = a.nuclei
        res["nuclei_sha256"] = S.resolve_model(a.nuclei).sha256
        res.update(eval_nuclei(a.nuclei, a.data, not a.skip_auto))
    if a.cells:
        res["cells_model"] = a.cells
        res["cells_sha256"] = S.resolve_model(a.cells).sha256
        a.workdir.mkdir(parents=True, exist_ok=True)
        res.update(eval_cells(a.cells, a.sim_n, a.sim_seed, a.workdir))
    summary = {k: v for k, v in res.items() if not k.endswith("_rows")}
    print(json.dumps(summary, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
