"""Turn the bundled sample dataset into a dataset bundle with reference results.

Usage (from the repository root, after ``python scripts/make_sample_data.py``, which replaces
the whole folder)::

    python scripts/make_sample_bundle.py [--labels auto|ground_truth|segmentation]

Adds ``dataset.yaml``, ``reference/`` (cells.csv, images.csv, spots.csv, run.json) and
``checksums.sha256`` beside the images in ``src/napari_exouptake/sample_data/``; never rewrites
the images, labels or truth tables. ``--labels auto`` (default) runs the real pipeline with the
bundled demo model when that model is present, and otherwise quantifies with the ground-truth
labels; ``dataset.yaml`` records which (``analysis: {labels: ...}``), and
``exouptake dataset validate`` re-runs the analysis the same way. Rerun this script whenever the
pipeline's numbers change on purpose (and say so in the changelog).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_exouptake import datasets  # noqa: E402
from napari_exouptake.config import load_config  # noqa: E402

SAMPLE = REPO / "src" / "napari_exouptake" / "sample_data"
GENERATED = ("dataset.yaml", "checksums.sha256", "reference")


def _demo_model_available(config) -> bool:
    try:
        from napari_exouptake.segmentation import resolve_model

        resolve_model(config.segmentation.model)
    except Exception as exc:  # model file missing, cellpose absent ...
        print(f"demo model {config.segmentation.model!r} not available: {exc}")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Write the bundle files into the sample dataset folder and verify the result."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", choices=("auto", "ground_truth", "segmentation"), default="auto")
    args = p.parse_args(argv)
    if not (SAMPLE / "images").is_dir():
        print(f"{SAMPLE}/images is missing: run scripts/make_sample_data.py first")
        return 1
    for name in GENERATED:  # only what this script made before
        target = SAMPLE / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    config = load_config(SAMPLE / "config.yaml")
    labels = args.labels
    if labels == "auto":
        labels = "segmentation" if _demo_model_available(config) else "ground_truth"
    print(f"sample bundle: analysis labels = {labels}")
    datasets.write_bundle_metadata(
        SAMPLE,
        config,
        name="exouptake-sample",
        title="napari-exouptake sample dataset (simulated EV-uptake assay)",
        description=(
            "Eight simulated 384x384 five-channel images of an exosome-uptake assay "
            "(DAPI, CellMask, PKH26 exosomes, CD31, Collagen I; 0.325 um/px), two per condition "
            "(untreated, dye_only, ev_low, ev_high), with exact ground truth: cell and nucleus "
            "labels, every punctum position and per-cell counts. Made by "
            "scripts/make_sample_data.py (simulator seed 2024)."
        ),
        licence="BSD-3-Clause",
        authors=["napari-exouptake developers"],
        labels=labels,
        with_results=True,
        extra={
            "source": "napari_exouptake.simulate.write_dataset(seed=2024, n_images=8, "
            "shape=(384, 384), difficulty='normal')"
        },
        progress=lambda s: print("  " + s),
    )
    for path in SAMPLE.rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # package data must be readable by everyone
    problems = datasets.verify_bundle(SAMPLE)
    if problems:
        print("\n".join(problems))
        return 1
    n = len((SAMPLE / "checksums.sha256").read_text().splitlines())
    print(f"wrote {SAMPLE}/dataset.yaml, reference/, checksums.sha256 ({n} files); verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
