"""napari sample-data hook: a bundled, simulated exosome-uptake assay image.

The data under ``sample_data/`` is written by ``scripts/make_sample_data.py`` with
:func:`napari_exouptake.simulate.write_dataset` (fixed seed). This module returns plain
LayerData tuples and imports nothing from napari.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SAMPLE_DIR", "make_sample_data", "sample_image_names"]

#: Folder of the bundled simulated dataset (contract layout of ``exouptake simulate``).
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

_COLORMAPS = {
    "DAPI": "blue",
    "CellMask": "gray",
    "PKH26": "magenta",
    "CD31": "green",
    "COL1": "red",
}
_FALLBACK_COLORMAPS = ("blue", "gray", "magenta", "green", "red", "cyan", "yellow")


def sample_image_names() -> list[str]:
    """Names of the bundled sample images, in file order (e.g. ``["untreated_000", ...]``)."""
    images = SAMPLE_DIR / "images"
    if not images.is_dir():
        return []
    return sorted(p.name.removesuffix(".ome.tif") for p in images.glob("*.ome.tif"))


def _default_name() -> str:
    names = sample_image_names()
    if not names:
        raise FileNotFoundError(
            f"no bundled sample images in {SAMPLE_DIR}; run scripts/make_sample_data.py"
        )
    table = SAMPLE_DIR / "conditions.csv"
    if table.is_file():  # show the treated condition: it is the one with visible uptake
        conds = pd.read_csv(table)
        high = conds.loc[conds["condition"] == "ev_high", "image"].tolist()
        if high:
            return str(high[0])
    return names[0]


def make_sample_data(name: str | None = None) -> list[tuple]:
    """Return one bundled sample image as napari LayerData tuples.

    Parameters
    ----------
    name : str, optional
        Image name (see :func:`sample_image_names`); default: the first ``ev_high`` image.

    Returns
    -------
    list of (data, metadata, layer_type)
        One ``"image"`` layer per channel, each ``(Y, X)`` uint16 (``(Z, Y, X)`` for a 3D
        sample), named after the channel, additive blending, scaled in micrometres; then the
        simulator's truth cell labels as a ``"labels"`` layer.
    """
    from .io import read_image, read_labels

    name = _default_name() if name is None else name
    path = SAMPLE_DIR / "images" / f"{name}.ome.tif"
    if not path.is_file():
        raise FileNotFoundError(
            f"sample image {name!r} not found; available: {sample_image_names()}"
        )
    img = read_image(path)
    data = img.data  # (C, Z, Y, X)
    if data.shape[1] == 1:
        data = data[:, 0]
    px = img.pixel_size_um or 1.0
    scale = (px,) * (data.ndim - 1)
    layers: list[tuple] = []
    for c, ch in enumerate(img.channel_names):
        plane = np.asarray(data[c])
        lo, hi = np.percentile(plane, [0.5, 99.8])
        meta = {
            "name": ch,
            "colormap": _COLORMAPS.get(ch, _FALLBACK_COLORMAPS[c % len(_FALLBACK_COLORMAPS)]),
            "blending": "additive",
            "scale": scale,
            "contrast_limits": (float(lo), float(max(hi, lo + 1))),
            "visible": ch != "CellMask",  # a gray additive layer washes out the rest
            "metadata": {"source": str(path), "pixel_size_um": img.pixel_size_um},
        }
        layers.append((plane, meta, "image"))
    labels_path = SAMPLE_DIR / "labels" / f"{name}_cells.tif"
    if labels_path.is_file():
        labels = read_labels(labels_path)
        layers.append(
            (
                labels,
                {"name": f"{name} cells (truth)", "scale": scale, "opacity": 0.3, "visible": False},
                "labels",
            )
        )
    return layers
