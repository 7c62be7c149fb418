"""``exouptake simulate``: write a synthetic dataset and print a short summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..simulate import write_dataset


def main_simulate(
    out: str | Path,
    n_images: int = 8,
    seed: int = 0,
    difficulty: str | float = "normal",
    size: int = 512,
) -> str:
    """Entry point for ``exouptake simulate``: write a dataset and return a short summary.

    Parameters
    ----------
    out : str or Path
        Output folder.
    n_images : int
        Number of images.
    seed : int
        Dataset seed.
    difficulty : str or float
        ``easy``, ``normal``, ``hard`` or a number in [0, 1].
    size : int
        Image side length in pixels (square images).

    Returns
    -------
    str
        Human-readable summary (images, cells, puncta per condition, output folder).
    """
    size = int(size)
    path = write_dataset(
        out, n_images=n_images, seed=seed, difficulty=difficulty, shape=(size, size)
    )
    cells = pd.read_csv(path / "truth_cells.csv")
    conds = pd.read_csv(path / "conditions.csv")
    per = (
        cells.merge(conds[["image", "condition"]], on="image")
        .groupby("condition", sort=False)["n_spots"]
        .agg(["size", "mean"])
    )
    lines = [
        f"wrote {n_images} simulated images ({size}x{size}, difficulty {difficulty}, "
        f"seed {seed}) to {path}"
    ]
    for cond, row in per.iterrows():
        lines.append(f"  {cond:<10} {int(row['size']):5d} cells  {row['mean']:6.2f} puncta/cell")
    lines.append(f"  config: {path / 'config.yaml'}")
    return "\n".join(lines)
