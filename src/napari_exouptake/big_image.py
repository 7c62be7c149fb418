"""Big images: puncta detection and per-cell measurement tile by tile, in bounded memory.

:func:`analyze_image <napari_exouptake.pipeline.analyze_image>` takes this path when an image's
plane is larger than the config's ``big_image_px`` (default 40 million pixels, e.g. 6,300 x
6,300): the exosome and marker channels stay lazy (dask arrays from
:func:`napari_exouptake.io.read_image`: tiled OME-TIFF through tifffile's zarr store, OME-Zarr
through bioio), puncta are found by :func:`napari_exouptake.spots.tiled.detect_spots_tiled`
(the same puncta as the whole-image detector) and cells measured by
:func:`napari_exouptake.measure.measure_cells_tiled` (the same table). 2D images without a
nucleus channel in the measurement; others keep the whole-image path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from .config import DEFAULT_RADIUS_PX, AssayConfig
from .io import ImageData, read_labels
from .measure import assign_spots_tiled, measure_cells_tiled
from .progress import Progress, within
from .spots.detect import config_options
from .spots.tiled import DEFAULT_TILE, detect_spots_tiled

__all__ = ["is_big", "lazy_labels", "spots_and_cells"]

logger = logging.getLogger(__name__)


def is_big(image: ImageData, config: AssayConfig, nuclei: Any = None) -> bool:
    """Whether ``image`` takes the tiled path: a single plane larger than
    ``config.big_image_px`` pixels, measured without nuclei."""
    z, y, x = image.data.shape[-3:]
    big = z == 1 and y * x > config.big_image_px
    if big and nuclei is not None:
        logger.info("%s: nuclei given, so the image is measured whole (no tiling)", image.name)
        return False
    return big


def lazy_labels(labels: Any, image: ImageData) -> Any:
    """Cell labels ``(1, Y, X)`` for a big image, read lazily from a file (a given array is
    used as it is)."""
    arr = read_labels(labels, lazy=True) if isinstance(labels, (str, Path)) else labels
    if arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer label image, got dtype {arr.dtype}")
    y, x = image.data.shape[-2:]
    if tuple(arr.shape[-2:]) != (y, x) or arr.ndim not in (2, 3):
        raise ValueError(
            f"labels have shape {tuple(arr.shape)} but the image {image.name!r} is {(y, x)}"
        )
    return arr if arr.ndim == 3 else arr[None]


def spots_and_cells(
    image: ImageData,
    config: AssayConfig,
    cells: Any,
    exosome: int,
    markers: dict[str, int],
    pixel_size_um: float | None,
    *,
    progress: Progress | None = None,
    cancel: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Puncta of the exosome channel and the per-cell table, tile by tile.

    Parameters
    ----------
    image : ImageData
        ``(C, 1, Y, X)``, a dask array for big files.
    config : AssayConfig
    cells : (1, Y, X) int ndarray or dask array
    exosome : int
        Exosome channel index.
    markers : dict of str to int
        Marker name -> channel index.
    pixel_size_um : float or None

    Returns
    -------
    spots : pandas.DataFrame
        As :func:`napari_exouptake.spots.detect_spots_from_config`, with ``cell_id``.
    cells : pandas.DataFrame
        As :func:`napari_exouptake.measure.measure_cells`.
    """
    sc = config.spots
    data = image.data
    exo = data[exosome, 0]
    lab = cells[0]
    spots = detect_spots_tiled(
        exo,
        **config_options(sc),
        tile=DEFAULT_TILE,
        progress=within(progress, 0.0, 0.7),
        cancel=cancel,
    )
    spots = assign_spots_tiled(spots, lab)
    channels = {"exosome": exo, **{m: data[i, 0] for m, i in markers.items()}}
    table = measure_cells_tiled(
        lab,
        channels,
        spots,
        pixel_size_um=pixel_size_um,
        marker_names=list(markers),
        spot_radius_px=float(spots.attrs.get("radius_px", DEFAULT_RADIUS_PX)),
        progress=within(progress, 0.7, 1.0),
        cancel=cancel,
    )
    return spots, table
