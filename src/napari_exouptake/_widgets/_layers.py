"""Conversions between napari layers and the core's objects (no Qt, no analysis arithmetic).

The widgets and the reader share these, so a result shows up the same way whether it was just
computed or reopened from an ``exouptake`` output folder. Functions return napari
LayerData tuples ``(data, kwargs, layer_type)`` and never import napari themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_RADIUS_PX

__all__ = [
    "ChannelSource",
    "cells_features",
    "image_from_sources",
    "labels_layer_data",
    "points_layer_data",
    "value_colors",
]

#: key of ``layer.metadata`` under which this plugin records what a layer is and came from
META_KEY = "exouptake"


@dataclass(frozen=True)
class ChannelSource:
    """One channel offered in the role dropdowns.

    Attributes
    ----------
    label : str
        Text shown in the dropdown (``"PKH26"``, or ``"2: PKH26"`` for a channel of a multichannel
        layer; ``"2: PKH26 · stack"`` when several multichannel layers are open).
    name : str
        Channel name used in the assay config and in ``ImageData.channel_names``.
    layer_name : str
        Name of the napari image layer holding the data.
    index : int or None
        Channel index along the layer's first axis for a multichannel layer, else None.
    """

    label: str
    name: str
    layer_name: str
    index: int | None = None


def image_from_sources(
    arrays: Sequence[np.ndarray],
    names: Sequence[str],
    pixel_size_um: float | None = None,
    source: str | None = None,
) -> Any:
    """Stack per-channel arrays into an :class:`~napari_exouptake.io.ImageData`.

    Parameters
    ----------
    arrays : sequence of (Y, X) or (Z, Y, X) ndarray
        One array per channel, all of the same shape.
    names : sequence of str
        Channel names (unique), one per array.
    pixel_size_um : float, optional
        Lateral pixel size in micrometres.
    source : str, optional
        File the layers were read from (sets ``ImageData.source`` and so the image name).

    Returns
    -------
    ImageData
        ``(C, Z, Y, X)``.

    Raises
    ------
    ValueError
        No channels, unequal shapes (the message names the channels), repeated names.
    """
    from ..io import from_array

    if not arrays:
        raise ValueError("no image channels to analyse: add an image layer first")
    if len(arrays) != len(names):
        raise ValueError(f"{len(arrays)} arrays for {len(names)} channel names")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique, got {list(names)}")
    shapes = {n: np.shape(a) for n, a in zip(names, arrays, strict=True)}
    if len(set(shapes.values())) != 1:
        listing = ", ".join(f"{n}: {s}" for n, s in shapes.items())
        raise ValueError(f"channels have different shapes ({listing}); pick channels of one image")
    shape = next(iter(shapes.values()))
    if len(shape) not in (2, 3):
        raise ValueError(f"channels must be (Y, X) or (Z, Y, X), got shape {shape}")
    data = np.stack([np.asarray(a) for a in arrays])
    axes = "CYX" if data.ndim == 3 else "CZYX"
    return from_array(
        data, axes=axes, channel_names=list(names), pixel_size_um=pixel_size_um, source=source
    )


def cells_features(cells: pd.DataFrame) -> pd.DataFrame:
    """The per-cell table as a Labels layer's ``features``: ``index`` (= ``cell_id``) first.

    napari maps feature rows to label values through the ``index`` column.
    """
    if "cell_id" not in cells.columns:
        raise ValueError(f"cells table has no 'cell_id' column (columns: {list(cells.columns)})")
    feats = cells.reset_index(drop=True).copy()
    if "index" in feats.columns:
        feats = feats.drop(columns="index")
    feats.insert(0, "index", feats["cell_id"].to_numpy())
    return feats


def _squeeze_labels(labels: np.ndarray, ndim: int) -> np.ndarray:
    from ..io import is_lazy

    lab = labels if is_lazy(labels) else np.asarray(labels)  # big label images stay dask
    if lab.ndim == 3 and ndim == 2 and lab.shape[0] == 1:
        return lab[0]
    return lab


def labels_layer_data(
    labels: np.ndarray,
    cells: pd.DataFrame | None,
    *,
    name: str,
    ndim: int = 2,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    metadata: dict | None = None,
    opacity: float = 0.5,
) -> tuple:
    """LayerData for a cell label image with the per-cell table as ``features``.

    Parameters
    ----------
    labels : (Y, X), (1, Y, X) or (Z, Y, X) int ndarray
    cells : pandas.DataFrame or None
        One row per cell (``cell_id`` ...), e.g. ``AnalysisResult.cells``.
    ndim : int
        Dimensionality of the image layers (2 squeezes a single plane).
    """
    kwargs: dict[str, Any] = {"name": name, "opacity": opacity, "metadata": dict(metadata or {})}
    if cells is not None:
        kwargs["features"] = cells_features(cells)
    if scale is not None:
        kwargs["scale"] = tuple(scale)
    if translate is not None:
        kwargs["translate"] = tuple(translate)
    return (_squeeze_labels(labels, ndim), kwargs, "labels")


def points_layer_data(
    spots: pd.DataFrame,
    *,
    name: str,
    ndim: int = 2,
    radius_px: float = DEFAULT_RADIUS_PX,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    metadata: dict | None = None,
) -> tuple:
    """LayerData for puncta: one point per punctum, the spots table as ``features``.

    Parameters
    ----------
    spots : pandas.DataFrame
        ``y``, ``x`` (``z`` in 3D) in pixel coordinates, plus any per-punctum columns
        (``intensity``, ``cell_id``, ``n_estimate`` ...).
    ndim : int
        2 or 3 (a 2D table on a 3D layer is placed at z = 0).
    radius_px : float
        Punctum radius in pixels; points are drawn 4 x radius wide.
    """
    cols = ["z", "y", "x"] if ndim == 3 else ["y", "x"]
    df = spots.reset_index(drop=True)
    if ndim == 3 and "z" not in df.columns:
        coords = np.column_stack([np.zeros(len(df)), df["y"], df["x"]])
    else:
        coords = df[cols].to_numpy(dtype=float) if len(df) else np.zeros((0, ndim))
    inside = df["cell_id"].to_numpy() > 0 if "cell_id" in df.columns else np.ones(len(df), bool)
    border = np.where(inside[:, None], [[1.0, 0.85, 0.0, 1.0]], [[0.6, 0.6, 0.6, 1.0]])
    kwargs: dict[str, Any] = {
        "name": name,
        "features": df,
        "size": max(4.0 * float(radius_px), 3.0),
        "face_color": "transparent",
        "border_color": border if len(df) else "yellow",
        "border_width": 0.15,
        "metadata": dict(metadata or {}),
    }
    if scale is not None:
        kwargs["scale"] = tuple(scale)
    if translate is not None:
        kwargs["translate"] = tuple(translate)
    return (coords, kwargs, "points")


def value_colors(
    ids: np.ndarray, values: np.ndarray, cmap: str = "viridis"
) -> dict[int | None, np.ndarray]:
    """Colour per label from a per-cell value (display only).

    Parameters
    ----------
    ids : (N,) int ndarray
        Label values (cell ids).
    values : (N,) ndarray
        Number or bool per cell; NaN cells are grey. Bool: False blue, True red.
    cmap : str
        Matplotlib colormap name for numeric values (min -> max of the finite values).

    Returns
    -------
    dict
        ``{label: (4,) RGBA float array}`` plus ``None`` (other labels: transparent) and ``0``
        (background: transparent), as napari's ``DirectLabelColormap(color_dict=...)`` takes.
    """
    import matplotlib

    ids = np.asarray(ids).astype(np.int64)
    vals = np.asarray(values)
    if vals.dtype == bool:
        rgba = np.where(vals[:, None], [[0.9, 0.15, 0.15, 1.0]], [[0.2, 0.4, 0.95, 1.0]])
    else:
        v = vals.astype(float)
        finite = np.isfinite(v)
        lo = float(v[finite].min()) if finite.any() else 0.0
        hi = float(v[finite].max()) if finite.any() else 1.0
        norm = (v - lo) / (hi - lo) if hi > lo else np.full(v.shape, 0.5)
        rgba = np.asarray(matplotlib.colormaps[cmap](np.nan_to_num(norm, nan=0.0)))
        rgba[~finite] = (0.5, 0.5, 0.5, 1.0)
    colors: dict[int | None, np.ndarray] = dict(zip(ids.tolist(), rgba, strict=True))
    colors[None] = np.zeros(4)
    colors[0] = np.zeros(4)
    return colors
