"""Loaders for the real annotated puncta sets kept beside the repository (``../shared/data``),
for evaluation scripts, benchmarks and tests. Nothing here is needed to analyse images.

Each set comes with the punctum radius its PROVENANCE gives (``sqrt(2)`` x the median Gaussian
sigma fitted at the annotated points) and the caveats of its truth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SPOT_SETS", "SpotSet", "data_dir", "load_spot_set", "load_spotiflow"]

#: name -> (punctum radius px from PROVENANCE, PSF sigma px fitted at the annotations)
SPOT_SETS: dict[str, tuple[float, float]] = {
    "beads": (1.4, 0.97),
    "piscis": (1.2, 0.86),
    "rca": (1.65, 1.17),
}


@dataclass(frozen=True)
class SpotSet:
    """A real image with annotated puncta."""

    name: str
    image: np.ndarray  #: (Y, X)
    truth: np.ndarray  #: (N, 2) y, x, 0-based pixel centres
    radius_px: float  #: from the set's PROVENANCE
    psf_sigma_px: float  #: median fitted PSF sigma at the annotated points


def data_dir() -> Path:
    """``$EXOUPTAKE_SHARED_DATA`` or ``<repository>/../shared/data`` (may not exist)."""
    env = os.environ.get("EXOUPTAKE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def load_spot_set(name: str) -> SpotSet | None:
    """One of :data:`SPOT_SETS`, or None when the data folder is absent.

    ``beads``: 118 fitted bead positions (documented -2 px offset applied). ``piscis``: 799
    manual points on autofluorescent tissue. ``rca``: 99 crowd-consensus spots (>= 5 of 20
    workers; incomplete: precision is under-estimated for any sensitive detector).
    """
    import tifffile

    root = data_dir()
    radius, psf = SPOT_SETS[name]
    if name == "beads":
        folder = root / "spots_beads"
        if not (folder / "beads_300pxroi.png").exists():
            return None
        import imageio.v3 as iio

        img = iio.imread(folder / "beads_300pxroi.png")
        ann = pd.read_csv(folder / "bead_annotations_20180517.csv")
        truth = np.c_[ann["row"] - 2, ann["col"] - 2].astype(float)
    else:
        folder, stem = {
            "piscis": ("spots_piscis", "piscis_af_cy3"),
            "rca": ("spots_rca", "rca_cy5_300"),
        }[name]
        f = root / folder / "images" / f"{stem}.tif"
        if not f.exists():
            return None
        img = tifffile.imread(f)
        truth = pd.read_csv(root / folder / "truth" / f"{stem}.csv")[["y", "x"]].to_numpy(float)
    return SpotSet(name, np.asarray(img), truth, radius, psf)


def load_spotiflow() -> dict[str, np.ndarray]:
    """The two unlabelled spotiflow sample images (HybISS, TERRA); empty when absent."""
    import tifffile

    out = {}
    for stem in ("img_hybiss_2d", "img_terra_2d"):
        f = data_dir() / "spots_spotiflow" / f"{stem}.tif"
        if f.exists():
            out[stem] = tifffile.imread(f)
    return out
