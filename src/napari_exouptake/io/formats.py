"""Microscope formats through bioio (the ``formats`` extra): Zeiss ``.czi``, Nikon ``.nd2``, Leica
``.lif`` and OME-Zarr (bioformats2raw layout included), their scenes, channel names and sizes."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .image import BIOIO_SUFFIXES, FORMATS_INSTALL, ImageData, ImageReadError, from_array
from .lazy import _want_lazy

log = logging.getLogger("napari_exouptake.io")


def bioio_suffix(path: str | Path) -> str | None:
    """The :data:`BIOIO_SUFFIXES` key of a file read through bioio, else None.

    A folder counts as ``.zarr`` when its name ends in ``.zarr`` or it holds zarr metadata
    (``.zattrs``/``.zgroup``/``zarr.json``), e.g. the ``x.ome.zarr/0`` image of a
    bioformats2raw store.
    """
    path = Path(path)
    lower = path.name.lower()
    for suffix in BIOIO_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    if path.is_dir() and any((path / m).is_file() for m in (".zattrs", ".zgroup", "zarr.json")):
        return ".zarr"
    return None


def _zarr_attrs(path: Path) -> dict:
    """The group attributes of a zarr v2 (``.zattrs``) or v3 (``zarr.json``) folder."""
    import json

    try:
        if (path / ".zattrs").is_file():
            return json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        if (path / "zarr.json").is_file():
            return json.loads((path / "zarr.json").read_text(encoding="utf-8")).get(
                "attributes", {}
            )
    except (OSError, ValueError):
        pass
    return {}


def _bioformats2raw_series(path: Path) -> list[str] | None:
    """The image groups (``0``, ``1``, ...) of a bioformats2raw store, else None."""
    if not path.is_dir() or "bioformats2raw.layout" not in _zarr_attrs(path):
        return None
    groups = [p.name for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(groups, key=int)


def _scene_labels(names) -> list[str]:
    """Scene names made safe for file names (``TR1``; ``Pos 1/A`` -> ``Pos_1_A``; an empty
    name -> ``scene<i>``), unique (a repeat gets ``_<i>``, ``i`` = the scene's index)."""
    labels = []
    for i, name in enumerate(names):
        label = re.sub(r"[^\w.+-]+", "_", str(name)).strip("_") or f"scene{i}"
        labels.append(label if label not in labels else f"{label}_{i}")
    return labels


def _bioio_reader(path: Path, kind: str):
    """The bioio plugin's Reader class for ``kind``; a one-line install hint when missing."""
    import importlib

    plugin = BIOIO_SUFFIXES[kind]
    try:
        importlib.import_module("bioio")
        module = importlib.import_module(plugin.replace("-", "_"))
    except ImportError as exc:
        raise ImageReadError(
            f"{path}: reading {kind} files needs the optional formats extra (bioio and "
            f"{plugin}): {FORMATS_INSTALL}"
        ) from exc
    return module.Reader


def _plugin_version(kind: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    plugin = BIOIO_SUFFIXES[kind]
    try:
        return f"{plugin} {version(plugin)}"
    except PackageNotFoundError:
        return plugin


def scene_names(path: str | Path) -> list[str] | None:
    """The scenes (series) of a CZI/ND2/LIF/OME-Zarr file, else None (TIFF, PNG, JPEG).

    Reads metadata only. The names are the reader's, made safe for file names; the batch names
    scene ``s`` of ``file.czi`` ``file[<name>]``.

    Raises
    ------
    ImageReadError
        When the reader is not installed or cannot open the file.
    """
    path = Path(path)
    kind = bioio_suffix(path)
    if kind is None:
        return None
    groups = _bioformats2raw_series(path) if kind == ".zarr" else None
    if groups is not None:
        return groups
    return _scene_labels(_open_bioio(path, kind).scenes)


def _open_bioio(path: Path, kind: str):
    from bioio import BioImage

    reader = _bioio_reader(path, kind)
    try:
        return BioImage(path, reader=reader)
    except Exception as exc:
        raise ImageReadError(
            f"{path}: {_plugin_version(kind)} cannot open the file ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_bioio(path: Path, kind: str, scene: int | str | None, lazy: bool | None) -> ImageData:
    """One scene of a bioio-readable file as ImageData (channel names, pixel sizes, axes)."""
    groups = _bioformats2raw_series(path) if kind == ".zarr" else None
    if groups is not None:  # bioformats2raw: each numbered group is one image (a scene)
        if not groups:
            raise ImageReadError(f"{path}: the bioformats2raw store holds no image group")
        index = _scene_index(path, scene, groups)
        image = _read_bioio(path / groups[index], kind, None, lazy)
        meta = {**image.metadata, "scene": groups[index], "scenes": groups}
        return replace(image, source=path, metadata=meta)

    bio = _open_bioio(path, kind)
    version = _plugin_version(kind)
    scenes = [str(s) for s in bio.scenes]
    labels = _scene_labels(scenes)
    index = _scene_index(path, scene, labels, scenes)
    where = f"scene {scenes[index]!r} of " if len(scenes) > 1 else ""
    try:
        bio.set_scene(index)
        dims = bio.dims
        order = "TCZYXS" if "S" in dims.order and dims.S > 1 else "TCZYX"
        data = bio.get_image_dask_data(order)
        names_raw = bio.channel_names
        sizes = _sizes_um(bio, path)
    except Exception as exc:
        raise ImageReadError(
            f"{path}: {version} cannot read {where}the file ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from exc
    if order == "TCZYXS":  # RGB(A) samples: the samples are the channels
        data = data[:, 0]
        axes_in = "TZYXS"
    else:
        axes_in = "TCZYX"
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * data.dtype.itemsize
    try:
        if _want_lazy(lazy, nbytes):
            # read one corner now, so a reader that cannot decode the file fails here, naming it
            np.asarray(data[(0,) * (data.ndim - 2) + (slice(0, 1), slice(0, 1))])
        else:
            data = np.asarray(data)
    except Exception as exc:
        raise ImageReadError(
            f"{path}: {version} cannot read the pixels of {where}the file "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    pixel_size = _valid_size(sizes["X"], "X", path)
    pixel_y = _valid_size(sizes["Y"], "Y", path)
    if (
        pixel_size is not None
        and pixel_y is not None
        and not math.isclose(pixel_size, pixel_y, rel_tol=1e-3)
    ):
        log.warning(
            "%s: pixels are not square (X %.6g um, Y %.6g um); areas use the X size",
            path.name,
            pixel_size,
            pixel_y,
        )
    z_step = _valid_size(sizes["Z"], "Z", path) if data.shape[axes_in.index("Z")] > 1 else None
    img = from_array(data, axes_in, None, pixel_size, z_step, path)
    names = [str(n) for n in (names_raw or [])]
    if len(names) == img.n_channels:
        img = replace(img, channel_names=tuple(n or f"C{i}" for i, n in enumerate(names)))
    meta = {
        "format": kind.lstrip("."),
        "reader": version,
        "scene": scenes[index],
        "scenes": labels,
    }
    return replace(img, metadata=meta)


def _sizes_um(bio, path: Path) -> dict[str, float | None]:
    """Physical Z, Y, X pixel sizes in um: bioio's values, converted when the file states a
    unit (an OME-Zarr in nanometres), taken as um when it states none (bioio's convention)."""
    sizes = bio.physical_pixel_sizes
    try:
        props = bio.dimension_properties
    except Exception:  # readers without unit information
        props = None
    out: dict[str, float | None] = {}
    for axis in "ZYX":
        value = getattr(sizes, axis, None) if sizes is not None else None
        unit = getattr(getattr(props, axis, None), "unit", None)
        if value is not None and unit is not None:
            try:
                value = float((value * unit).to("micrometer").magnitude)
            except Exception:  # not a length (e.g. a pixel or dimensionless unit)
                log.warning("%s: %s size unit %s is not a length; ignored", path.name, axis, unit)
                value = None
        out[axis] = value
    return out


def _scene_index(
    path: Path, scene: int | str | None, labels: Sequence[str], raw: Sequence[str] = ()
) -> int:
    if scene is None:
        return 0
    if isinstance(scene, (int, np.integer)):
        if 0 <= scene < len(labels):
            return int(scene)
    elif scene in raw:
        return list(raw).index(scene)
    elif scene in labels:
        return list(labels).index(scene)
    raise ImageReadError(
        f"{path}: scene {scene!r} does not exist; the file has {len(labels)} scene(s): "
        + ", ".join(labels)
    )


def _valid_size(value, axis: str, path: Path) -> float | None:
    """A physical pixel size in um, or None (with a warning) when it is zero, negative or NaN."""
    if value is None:
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = float("nan")
    if not math.isfinite(size) or size <= 0:
        log.warning(
            "%s: the metadata gives pixel size %s = %r, which is not a size; %s",
            path.name,
            axis,
            value,
            "the Z step is unknown"
            if axis == "Z"
            else "the pixel size is unknown (set pixel_size_um in the config if you know it)",
        )
        return None
    return size
