"""npe2 reader: open an ``exouptake`` output folder (or a dataset bundle) as napari layers.

An output folder (``exouptake analyze`` / ``demo`` / the widget's folder run) holds
``cells.csv`` (+ ``cells.parquet``), ``spots.csv``, ``labels/<image>_cells.tif`` (tiled for big
images; ``labels/<image>_cells.zarr``, an OME-Zarr, is read too) and ``run.json``. Each image
comes back as its channels (image layers), its cell (and nucleus) labels with the per-cell table
as ``features``, and its puncta as a Points layer with the per-punctum table as ``features``:
the layers the dock widget makes. The image itself is taken from ``images/<image>.*`` in the
folder, else from the source path recorded in ``run.json``.

This module returns plain LayerData tuples and imports no Qt.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["get_reader", "is_results_folder", "read_results_folder"]

log = logging.getLogger(__name__)

_COLORMAPS = ("blue", "gray", "magenta", "green", "red", "cyan", "yellow")
_IMAGE_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".ome.zarr")


def is_results_folder(path: str | Path) -> bool:
    """True for a folder with ``cells.csv`` or ``cells.parquet`` (an exouptake output)."""
    p = Path(path)
    return p.is_dir() and ((p / "cells.csv").is_file() or (p / "cells.parquet").is_file())


def _is_bundle(path: Path) -> bool:
    """A dataset bundle: a folder with ``dataset.yaml`` or a ``.zip`` (see :mod:`.datasets`)."""
    if path.is_dir():
        return (path / "dataset.yaml").is_file()
    return path.is_file() and path.suffix.lower() == ".zip"


def get_reader(path: str | list[str]) -> Any:
    """npe2 reader hook: a reader function for an exouptake results folder or bundle, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if is_results_folder(p):
        return read_results_folder
    if _is_bundle(p):
        return read_bundle_folder
    return None


def _read_cells(folder: Path) -> pd.DataFrame:
    if (folder / "cells.parquet").is_file():
        try:
            return pd.read_parquet(folder / "cells.parquet")
        except Exception as exc:  # pyarrow missing or a damaged file: fall back to the CSV
            log.warning("%s: cannot read cells.parquet (%s); using cells.csv", folder, exc)
    return pd.read_csv(folder / "cells.csv", float_precision="round_trip")


def _read_spots(folder: Path) -> pd.DataFrame | None:
    if (folder / "spots.parquet").is_file():
        return pd.read_parquet(folder / "spots.parquet")
    if (folder / "spots.csv").is_file():
        return pd.read_csv(folder / "spots.csv", float_precision="round_trip")
    return None


def _find_image(folder: Path, name: str, run: dict) -> Path | None:
    for base in (folder / "images", folder):
        for suffix in _IMAGE_SUFFIXES:
            cand = base / f"{name}{suffix}"
            if cand.is_file():
                return cand
    src = (run.get("images", {}).get(name) or {}).get("source")
    if src:
        cand = Path(src)
        if not cand.is_absolute():
            cand = folder / cand
        if cand.exists():  # a file, or an OME-Zarr folder
            return cand
    return None


def _label_file(folder: Path, name: str, kind: str) -> Path | None:
    """``labels/<name>_<kind>.tif``, else ``labels/<name>_<kind>.zarr`` (OME-Zarr), else None."""
    for suffix in (".tif", ".zarr"):
        p = folder / "labels" / f"{name}_{kind}{suffix}"
        if p.is_file() or (suffix == ".zarr" and p.is_dir()):
            return p
    return None


def _read_labels_for_display(path: Path) -> Any:
    """A label image; a dask array over its tiles or chunks when it is an OME-Zarr or bigger
    than the lazy-reading limit (napari draws the visible part), else a numpy array."""
    import tifffile

    from . import io

    if path.is_dir():  # an OME-Zarr store is read chunk by chunk
        return io.read_labels(path, lazy=True)
    try:
        with tifffile.TiffFile(path) as tif:
            big = tif.series[0].nbytes > io.lazy.LAZY_ABOVE_BYTES
    except Exception:  # read_labels gives the proper error
        big = False
    return io.read_labels(path, lazy=big)


def _stack_position(folder: Path, name: str) -> tuple[int, int]:
    """(scene, time point) of image ``name`` from ``images.csv`` (0, 0 when not split)."""
    table = folder / "images.csv"
    if not table.is_file():
        return 0, 0
    try:
        images = pd.read_csv(table, usecols=lambda c: c in ("image", "series", "t"))
    except (OSError, ValueError):
        return 0, 0
    row = images[images["image"].astype(str) == name] if "image" in images else images.iloc[:0]
    if row.empty:
        return 0, 0
    get = row.iloc[0].get
    return int(get("series", 0) or 0), int(get("t", 0) or 0)


def read_results_folder(path: str | list[str]) -> list[tuple]:
    """Layers of an exouptake output folder.

    Returns
    -------
    list of (data, kwargs, layer_type)
        Per image: its channels (one image layer each, named after the channel; prefixed with
        the image name when the folder holds several images), ``<image> cells`` (Labels with
        the per-cell table as ``features``), ``<image> nuclei`` when written, and
        ``<image> puncta`` (Points with the per-punctum table as ``features``).
    """
    from ._widgets._layers import META_KEY, labels_layer_data, points_layer_data
    from .config import DEFAULT_RADIUS_PX
    from .io import read_image

    folder = Path(path[0] if isinstance(path, list) else path)
    cells = _read_cells(folder)
    spots = _read_spots(folder)
    run = {}
    if (folder / "run.json").is_file():
        run = json.loads((folder / "run.json").read_text())
    cfg = run.get("config", {})
    radius = (cfg.get("spots") or {}).get("radius_px", DEFAULT_RADIUS_PX)
    if not isinstance(radius, (int, float)):  # "auto": measured per image; a size to draw
        radius = DEFAULT_RADIUS_PX
    names = list(dict.fromkeys(cells["image"].astype(str))) if "image" in cells else []
    for suffix in ("_cells.tif", "_cells.zarr"):
        for lab in sorted((folder / "labels").glob(f"*{suffix}")):
            stem = lab.name[: -len(suffix)]
            if stem not in names:
                names.append(stem)
    several = len(names) > 1
    layers: list[tuple] = []
    for k, name in enumerate(names):
        tie = {META_KEY: {"image": name, "results_folder": str(folder)}}
        px = cfg.get("pixel_size_um")
        img_path = _find_image(folder, name, run)
        ndim = 2
        if img_path is not None:
            scene, t = _stack_position(folder, name)
            img = read_image(img_path, scene=scene if scene else None)
            img = img.frame(min(t, img.n_timepoints - 1))
            chans, ndim, _ = _image_layers(img, f"{name} " if several else "", k == 0)
            layers += chans
            px = img.pixel_size_um or px  # results are drawn over the image: same scale
        else:
            log.warning("%s: image %s not found (images/ or run.json source)", folder, name)
        scale = (px or 1.0,) * 3
        table = cells[cells["image"].astype(str) == name] if "image" in cells else cells
        lab_path = _label_file(folder, name, "cells")
        if lab_path is not None:
            labels = _read_labels_for_display(lab_path)
            ndim = 3 if labels.ndim == 3 and labels.shape[0] > 1 else 2
            layers.append(
                labels_layer_data(
                    labels,
                    table,
                    name=f"{name} cells",
                    ndim=ndim,
                    scale=scale[-ndim:],
                    metadata={META_KEY: {**tie[META_KEY], "kind": "cells"}},
                )
            )
        nuc_path = _label_file(folder, name, "nuclei")
        if nuc_path is not None:
            layers.append(
                labels_layer_data(
                    _read_labels_for_display(nuc_path),
                    None,
                    name=f"{name} nuclei",
                    ndim=ndim,
                    scale=scale[-ndim:],
                    opacity=0.3,
                    metadata={META_KEY: {**tie[META_KEY], "kind": "nuclei"}},
                )
            )
        if spots is not None:
            sp = spots[spots["image"].astype(str) == name] if "image" in spots else spots
            layers.append(
                points_layer_data(
                    sp,
                    name=f"{name} puncta",
                    ndim=ndim,
                    radius_px=radius,
                    scale=scale[-ndim:],
                    metadata={META_KEY: {**tie[META_KEY], "kind": "puncta"}},
                )
            )
    return layers


def _image_layers(img: Any, prefix: str, visible: bool) -> tuple[list[tuple], int, tuple]:
    """One image layer per channel of an ImageData (first frame of a time series)."""
    from .io import is_lazy

    data = img.data if img.axes == "CZYX" else img.data[0]
    if data.shape[1] == 1:
        data = data[:, 0]
    ndim = data.ndim - 1
    scale = (img.pixel_size_um or 1.0,) * ndim
    layers = []
    for c, ch in enumerate(img.channel_names):
        if is_lazy(data[c]):  # a big image stays lazy; contrast from every k-th pixel
            plane = data[c]
            step = max(1, int(np.ceil(np.sqrt(plane.size / 4e6))))
            sample = np.asarray(plane[..., ::step, ::step])
        else:
            plane = sample = np.asarray(data[c])
        lo, hi = np.percentile(sample, [0.5, 99.8])
        kwargs = {
            "name": f"{prefix}{ch}",
            "blending": "additive",
            "colormap": _COLORMAPS[c % len(_COLORMAPS)],
            "contrast_limits": (float(lo), float(max(hi, lo + 1))),
            "scale": scale,
            "visible": visible,
            "metadata": {"source": str(img.source), "pixel_size_um": img.pixel_size_um},
        }
        layers.append((plane, kwargs, "image"))
    return layers, ndim, scale


def read_bundle_folder(path: str | list[str]) -> list[tuple]:
    """Layers of a dataset bundle (folder or ``.zip``, opened with ``datasets.read_bundle``).

    Per image: its channels, the ground-truth cell / nucleus labels (``<image> cells (truth)``,
    ``<image> nuclei (truth)``) and puncta (``<image> puncta (truth)``) when the bundle has
    them, and the reference results (``<image> cells`` with the per-cell table, ``<image>
    puncta``) when it carries a ``reference/`` folder. The bundle's ``config.yaml`` path is in
    each layer's ``metadata["exouptake"]["config_path"]`` (load it in the widget).
    """
    from . import datasets
    from ._widgets._layers import META_KEY, labels_layer_data, points_layer_data
    from .io import read_labels

    bundle = datasets.read_bundle(Path(path[0] if isinstance(path, list) else path))
    names = bundle.image_names
    several = len(names) > 1
    ref_layers: dict[str, list[tuple]] = {}
    ref = bundle.reference_dir
    if ref is not None and is_results_folder(ref):
        for layer in read_results_folder(ref):
            if layer[2] != "image":
                img_name = layer[1]["metadata"].get(META_KEY, {}).get("image")
                ref_layers.setdefault(str(img_name), []).append(layer)
    layers: list[tuple] = []
    for k, name in enumerate(names):
        tie = {
            META_KEY: {
                "image": name,
                "bundle": str(bundle.root),
                "config_path": str(bundle.root / "config.yaml"),
            }
        }
        img = bundle.read_image(name)
        chans, ndim, scale = _image_layers(img, f"{name} " if several else "", k == 0)
        for _, kwargs, _ in chans:
            kwargs["metadata"].update(tie)
        layers += chans
        for kind, truth in (
            ("cells", bundle.truth_cell_labels(name)),
            ("nuclei", bundle.truth_nucleus_labels(name)),
        ):
            if truth is not None:
                layers.append(
                    labels_layer_data(
                        truth,
                        None,
                        name=f"{name} {kind} (truth)",
                        ndim=ndim,
                        scale=scale,
                        opacity=0.3,
                        metadata=tie,
                    )
                )
        spots = bundle.truth_spots(name)
        if spots is not None:
            layers.append(
                points_layer_data(
                    spots, name=f"{name} puncta (truth)", ndim=ndim, scale=scale, metadata=tie
                )
            )
        from_ref = ref_layers.get(name, [])
        if (
            ref is not None
            and is_results_folder(ref)
            and not any(kind == "labels" for _, _, kind in from_ref)
        ):  # the reference ran on given labels: put its per-cell table on them
            with contextlib.suppress(datasets.DatasetError):
                cells_path, _ = bundle.analysis_labels(name)
                if cells_path is not None:
                    table = _read_cells(ref)
                    table = table[table["image"].astype(str) == name] if "image" in table else table
                    from_ref.insert(
                        0,
                        labels_layer_data(
                            read_labels(cells_path),
                            table,
                            name=f"{name} cells",
                            ndim=ndim,
                            scale=scale,
                            metadata={META_KEY: {**tie[META_KEY], "kind": "cells"}},
                        ),
                    )
        layers += from_ref
    return layers
