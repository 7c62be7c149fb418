"""Regenerate the bundled sample dataset in src/napari_exouptake/sample_data/.

Usage (from the repository root)::

    python scripts/make_sample_data.py

Writes 8 simulated 384x384 images (2 per condition: untreated, dye_only, ev_low, ev_high),
normal difficulty, seed 2024, in the ``exouptake simulate`` layout (images/, labels/,
truth_spots.csv, truth_cells.csv, conditions.csv, config.yaml). Deterministic: rerunning gives
the same pixels.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_exouptake.simulate import write_dataset  # noqa: E402

SEED = 2024
N_IMAGES = 8
SHAPE = (384, 384)
OUT = REPO / "src" / "napari_exouptake" / "sample_data"


def main() -> None:
    """Write the sample dataset, replacing any previous one, and print its size."""
    if OUT.exists():
        shutil.rmtree(OUT)
    write_dataset(OUT, n_images=N_IMAGES, seed=SEED, difficulty="normal", shape=SHAPE)
    (OUT / "README.md").write_text(
        "Simulated exosome-uptake assay (napari-exouptake simulator, exact ground truth).\n"
        f"Regenerate with `python scripts/make_sample_data.py` (seed {SEED}, {N_IMAGES} images, "
        f"{SHAPE[0]}x{SHAPE[1]} px, difficulty normal).\n"
        "Channels: DAPI, CellMask, PKH26 (exosomes), CD31, COL1; 0.325 um/px.\n"
    )
    size = 0
    for p in OUT.rglob("*"):
        if p.is_file():
            p.chmod(0o644)  # atomic writes create 0600 files; package data must be readable
            size += p.stat().st_size
    print(f"wrote {OUT} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
