"""The result of one image: :class:`AnalysisResult`, frozen, flows from the pipeline to every
writer and every face (a step that changes it makes a new one with ``dataclasses.replace``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["AnalysisResult", "images_table", "squeeze_plane"]


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one image gives; flows to every writer and every face.

    Attributes
    ----------
    image : str
        Image name (the file's stem), the ``image`` column of every table.
    cells_labels : (Y, X) or (Z, Y, X) ndarray of int
        Cell labels, 0 = background.
    nuclei_labels : ndarray of int or None
        Nucleus labels (same shape) when a nuclear channel was segmented.
    spots : pandas.DataFrame
        One row per punctum (``spot_id``, ``y``, ``x`` [, ``z``], ``intensity``, ``cell_id`` ...).
    cells : pandas.DataFrame
        One row per cell (contract columns of ``cells.csv``).
    summary : dict
        The image's row of ``images.csv`` (image-level readouts included).
    thresholds : dict
        Positivity thresholds used (``{"exosome": ..., "<marker>": ...}``).
    provenance : dict
        Device, model identity, timings, threshold of the punctum detector.
    condition : str or None
    extras : dict
        Image-level readout objects (``"tubes"``, ``"collagen"`` results) for overlays.
    """

    image: str
    cells_labels: np.ndarray
    nuclei_labels: np.ndarray | None
    spots: pd.DataFrame
    cells: pd.DataFrame
    summary: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    condition: str | None = None
    extras: dict[str, Any] = field(default_factory=dict, repr=False)
    exo_image: np.ndarray | None = field(default=None, repr=False)


def images_table(results: Sequence[AnalysisResult]) -> pd.DataFrame:
    """``images.csv``: one row per image."""
    return pd.DataFrame([r.summary for r in results])


def squeeze_plane(array: np.ndarray) -> np.ndarray:
    """A ``(1, Y, X)`` single-plane stack as ``(Y, X)``; anything else unchanged (labels and
    channels of a 2D image are kept as one-plane stacks while analysing, and written 2D)."""
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array
