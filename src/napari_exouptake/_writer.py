"""npe2 writers: the per-cell / per-punctum tables of layers as CSV.

``File > Save Selected Layers`` with a Labels layer measured by the widget (or reopened from a
results folder) writes its ``features`` (one row per cell, the ``cells.csv`` columns); with a
Points layer, its per-punctum table (``y``, ``x``, ``intensity``, ``cell_id``, ``n_estimate``
...). Several layers go to a folder, one ``<layer name>.csv`` each. No Qt, no napari import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["write_labels_features", "write_points_features", "write_tables"]


def _features(attributes: dict[str, Any], what: str) -> pd.DataFrame:
    feats = attributes.get("features")
    if feats is None or len(getattr(feats, "columns", [])) == 0:
        name = attributes.get("name", "layer")
        raise ValueError(f"{what} layer {name!r} has no table (features) to save")
    return pd.DataFrame(feats).reset_index(drop=True)


def _csv_path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.suffix.lower() == ".csv" else p.with_name(p.name + ".csv")


def write_labels_features(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a Labels layer's per-cell table (``features`` minus napari's ``index``) as CSV."""
    from .io import write_table

    df = _features(attributes, "labels")
    if "index" in df.columns and "cell_id" in df.columns:
        df = df.drop(columns="index")
    # the only copy of the table: every float written so that it reads back exactly
    out = write_table(df, _csv_path(path), formats=("csv",), csv_digits=None)
    return [str(p) for p in out]


def write_points_features(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a Points layer's per-point table as CSV, with the coordinates when missing.

    Parameters
    ----------
    data : (N, 2) or (N, 3) ndarray
        Point coordinates (``y``, ``x`` or ``z``, ``y``, ``x``) in pixels.
    """
    from .io import write_table

    coords = np.asarray(data, dtype=float).reshape(len(data), -1)
    feats = attributes.get("features")
    df = pd.DataFrame(feats).reset_index(drop=True) if feats is not None else pd.DataFrame()
    axes = ("z", "y", "x")[-coords.shape[1] :] if coords.shape[1] <= 3 else ()
    for i, axis in enumerate(axes):
        if axis not in df.columns:
            df.insert(i, axis, coords[:, i])
    # the only copy of the table: every float written so that it reads back exactly
    out = write_table(df, _csv_path(path), formats=("csv",), csv_digits=None)
    return [str(p) for p in out]


def write_tables(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the table of each Labels / Points layer to ``path/<layer name>.csv``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for data, attributes, kind in layer_data:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in attributes["name"])
        target = folder / f"{safe}.csv"
        if kind == "labels":
            if attributes.get("features") is None or len(attributes["features"].columns) == 0:
                continue
            written += write_labels_features(str(target), data, attributes)
        elif kind == "points":
            written += write_points_features(str(target), data, attributes)
    return written
