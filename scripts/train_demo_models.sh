#!/usr/bin/env bash
# Train the bundled demo models (CPU, 2 threads). Reproduces src/napari_exouptake/models/*.pth.
# Usage: scripts/train_demo_models.sh [nuclei|cells|nuclei2|all] [WORKDIR]
# Order for 'all': nuclei (stage 1), simulator data, cells (from stage 1), nuclei2 (stage 2);
# then copy WORK/demo-nuclei-ft.pth -> models/demo-nuclei.pth, WORK/demo-cells.pth -> models/.
# Resumable: rerunning continues from WORKDIR/<model>.pth.ckpt.
set -euo pipefail
WHICH=${1:-all}
WORK=${2:-/tmp/exouptake_train}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${EXOUPTAKE_DATA:-$REPO/../shared/data}
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
export EXOUPTAKE_TORCH_THREADS=${EXOUPTAKE_TORCH_THREADS:-2}
mkdir -p "$WORK"

if [[ $WHICH == nuclei || $WHICH == all ]]; then
  # demo-nuclei: DSB2018 subset, hash split (holdout_split(image_id, 0.2) -> 16 validation
  # images never seen), from scratch, AdamW 0.005, 128 px crops, batch 8, seed 0.
  "${PYTHON:-python}" - "$DATA" "$WORK" <<'PY'
import logging, sys
from pathlib import Path
from napari_exouptake.segmentation import train_model
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
data, work = Path(sys.argv[1]), Path(sys.argv[2])
train_model(data / "nuclei_dsb2018/images", data / "nuclei_dsb2018/labels",
            work / "demo-nuclei.pth", channels=(0, None), diam_mean=17.0,
            n_steps=int(__import__("os").environ.get("NUC_STEPS", 1400)),
            time_budget_s=float(__import__("os").environ.get("NUC_BUDGET_S", 2700)),
            seed=0, learning_rate=0.005, batch_size=8, bsize=128,
            holdout_fraction=0.2, label_suffix=".tif", device="cpu")
PY
fi

if [[ $WHICH == cells || $WHICH == all || $WHICH == simdata ]]; then
  # demo-cells training data: simulator images, dataset seeds 1000 (normal) and 1001 (hard),
  # merged into WORK/sim_train/{images,labels} with n_/h_ prefixes (symlinks).
  "${PYTHON:-python}" - "$WORK" <<'PY'
import os, sys
from pathlib import Path
from napari_exouptake.simulate import write_dataset
work = Path(sys.argv[1])
merged = work / "sim_train"
for sub in ("images", "labels"):
    (merged / sub).mkdir(parents=True, exist_ok=True)
for tag, seed, diff, n in (("n", 1000, "normal", int(os.environ.get("CELLS_N_NORMAL", 16))),
                           ("h", 1001, "hard", int(os.environ.get("CELLS_N_HARD", 8)))):
    src = work / f"sim_{tag}{seed}"
    if not (src / "truth_cells.csv").is_file():
        write_dataset(src, n_images=n, seed=seed, difficulty=diff)
    for sub in ("images", "labels"):
        for f in sorted((src / sub).iterdir()):
            if sub == "labels" and not f.name.endswith("_cells.tif"):
                continue
            link = merged / sub / f"{tag}_{f.name}"
            if not link.exists():
                link.symlink_to(f.resolve())
PY
fi

if [[ $WHICH == cells || $WHICH == all ]]; then
  # demo-cells: channels (CellMask=1 as cell, DAPI=0 as helper), fine-tuned from demo-nuclei
  # (faster than from scratch on 2 CPU cores), AdamW 0.005, 160 px crops, batch 8, seed 0.
  "${PYTHON:-python}" - "$WORK" <<'PY'
import logging, os, sys
from pathlib import Path
from napari_exouptake.segmentation import train_model
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
work = Path(sys.argv[1])
sim = work / "sim_train"
train_model(sim / "images", sim / "labels", work / "demo-cells.pth", channels=(1, 0),
            diam_mean=30.0, n_steps=int(os.environ.get("CELLS_STEPS", 600)),
            time_budget_s=float(os.environ.get("CELLS_BUDGET_S", 1200)),
            from_model=os.environ.get("CELLS_FROM", str(work / "demo-nuclei.pth")),
            seed=0, learning_rate=0.005, batch_size=8, bsize=160,
            label_suffix="_cells.tif", device="cpu")
PY
fi

if [[ $WHICH == nuclei2 || $WHICH == all ]]; then
  # demo-nuclei stage 2 (the bundled demo-nuclei.pth): the stage-1 run above hit its wall-clock
  # budget at 593 steps on a shared CPU (DSB held-out AP@0.5 0.766); this continues from it on
  # the same 73 training images (same hash split) with a lower peak rate, seed 1.
  "${PYTHON:-python}" - "$DATA" "$WORK" <<'PY'
import logging, os, sys
from pathlib import Path
from napari_exouptake.segmentation import train_model
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
data, work = Path(sys.argv[1]), Path(sys.argv[2])
train_model(data / "nuclei_dsb2018/images", data / "nuclei_dsb2018/labels",
            work / "demo-nuclei-ft.pth", channels=(0, None), diam_mean=17.0,
            n_steps=int(os.environ.get("FT_STEPS", 800)),
            time_budget_s=float(os.environ.get("FT_BUDGET_S", 1500)),
            from_model=str(work / "demo-nuclei.pth"),
            seed=1, learning_rate=0.002, batch_size=8, bsize=128,
            holdout_fraction=0.2, label_suffix=".tif", device="cpu")
PY
fi
