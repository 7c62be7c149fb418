"""The analysable units of one input file (series, time points, planes) and their labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import TIFF_SUFFIXES
from .checks import BYTES_PER_PIXEL, TILED_BYTES_PER_PIXEL
from .manifest import _Task


def _n_series(path: Path, first=None) -> int:
    scenes = first.metadata.get("scenes") if first is not None else None
    if scenes:  # CZI/ND2/LIF/OME-Zarr: the reader's scenes
        return len(scenes)
    if not path.name.lower().endswith(TIFF_SUFFIXES):
        return 1
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return max(len(tif.series), 1)
    except Exception:  # unreadable: read_image gives the proper error
        return 1


def _read_series(path: Path, series: int, axes: str | None, first):
    """Series ``series`` (> 0) of a multi-series TIFF as ImageData, named like series 0."""
    from dataclasses import replace

    import tifffile

    from .. import io

    if first.metadata.get("scenes"):  # CZI/ND2/LIF/OME-Zarr scene
        return io.read_image(path, axes, scene=series)
    with tifffile.TiffFile(path) as tif:
        s = tif.series[series]
        data = s.asarray()
        file_axes = s.axes
    if axes is None:
        axes = io.clean_axes(file_axes, data.shape, path)
    img = io.from_array(data, axes, None, first.pixel_size_um, first.z_step_um, path)
    if img.n_channels == first.n_channels:
        img = replace(img, channel_names=first.channel_names)
    return img


@dataclass
class _Unit:
    name: str
    image: Any  # ImageData (C, Z, Y, X)
    series: int
    t: int
    n_t: int
    z: int | None  # plane index when planes are analysed separately


def _units(task: _Task, labels_z: Callable[[str, int, int], bool]) -> Iterator[_Unit]:
    """Every analysable (C, Z, Y, X) image of one file, with its name."""
    from ..io import read_image

    path = Path(task.path)
    if task.max_pixels is not None:
        _check_header(path, task.max_pixels)  # from the header, before decoding
    first = read_image(path, axes=task.config.axes)  # series 0, and the file's metadata
    n_s = _n_series(path, first)
    scenes = first.metadata.get("scenes")  # named scenes: file[<scene>], else file_s<NN>
    for s in range(n_s):
        img = first if s == 0 else _read_series(path, s, task.config.axes, first)
        n_t = img.n_timepoints
        series = (f"[{scenes[s]}]" if scenes else f"_s{s:02d}") if n_s > 1 else ""
        for t in range(n_t):
            frame = img.frame(t)
            name = task.name + series + (f"_t{t:03d}" if n_t > 1 else "")
            n_z = frame.data.shape[1]
            planes = n_z > 1 and (
                task.z_mode == "planes" or (task.z_mode == "auto" and labels_z(name, t, n_t))
            )
            if planes:
                for z in range(n_z):
                    yield _Unit(f"{name}_z{z:03d}", frame.plane(z), s, t, n_t, z)
            else:
                if task.max_pixels is not None:
                    _check_whole(path, name, frame, task)
                yield _Unit(name, frame, s, t, n_t, None)


def _check_header(path: Path, limit: int) -> None:
    """Refuse from the header a file too big even for the tiled path (``TILED_BYTES_PER_PIXEL``
    instead of ``BYTES_PER_PIXEL`` per pixel); images analysed whole are held to ``limit`` by
    :func:`_check_whole` once their shape is known."""
    from ..io import ImageTooLargeError, check_pixel_count

    tiled = limit * BYTES_PER_PIXEL // TILED_BYTES_PER_PIXEL
    try:
        check_pixel_count(path, tiled)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(
            f"{exc} (the limit is {limit:,} pixels for an image analysed whole, {tiled:,} for "
            "a single plane above big_image_px, analysed tile by tile)"
        ) from None


def _check_whole(path: Path, name: str, frame, task: _Task) -> None:
    """Refuse an image over the pixel limit unless it takes the tiled path (a single plane
    above ``big_image_px``, see :mod:`napari_exouptake.big_image`)."""
    from ..big_image import is_big
    from ..io import ImageTooLargeError

    n = int(np.prod(frame.data.shape, dtype=np.float64))
    if n > task.max_pixels and not is_big(frame, task.config):
        raise ImageTooLargeError(
            f"{path}: {name} has {n:,} pixels, more than the limit of {task.max_pixels:,} for "
            f"an image analysed whole (only a single plane above big_image_px, "
            f"{task.config.big_image_px:,}, is analysed tile by tile); raise --max-pixels if "
            "the memory allows"
        )


def _select_labels(arr: np.ndarray, t: int, n_t: int, z: int | None) -> np.ndarray:
    """Pick the frame / plane of a file-level label array for one unit."""
    # (T, Z, Y, X), or (T, Y, X) for a time series (preferred reading when T == Z)
    if arr.ndim == 4 or (arr.ndim == 3 and n_t > 1 and arr.shape[0] == n_t):
        arr = arr[t]
    if z is not None and arr.ndim == 3:  # (Z, Y, X): this plane; (Y, X): every plane
        arr = arr[z]
    return arr


def _is_zarr(path: Path) -> bool:
    """An OME-Zarr label image (a ``.zarr`` folder)."""
    return path.suffix.lower() == ".zarr" and path.is_dir()


class _LabelSource:
    """Find the label (and nucleus) images of each unit in a ``--labels`` file or folder."""

    def __init__(self, labels: str | None, file_name: str) -> None:
        self.path = Path(labels) if labels else None
        self.file_name = file_name
        self._cache: dict[Path, np.ndarray] = {}

    def _read(self, path: Path) -> np.ndarray:
        from ..io import read_labels

        if path not in self._cache:
            self._cache = {path: read_labels(path)}  # keep one array: frames share the file
        return self._cache[path]

    def _find(self, unit_base: str, kind: str) -> Path | None:
        if self.path is None:
            return None
        if self.path.is_file() or _is_zarr(self.path):  # one label image for every input
            return self.path if kind == "cells" else None
        for stem in dict.fromkeys((unit_base, self.file_name)):
            for ext in (".tif", ".tiff", ".zarr"):
                p = self.path / f"{stem}_{kind}{ext}"
                if p.is_file() or _is_zarr(p):
                    return p
        return None

    def is_2d(self, unit_base: str, t: int, n_t: int) -> bool:
        """True when the labels of this frame are one plane (so a z-stack runs per plane)."""
        p = self._find(unit_base, "cells")
        if p is None:
            return False
        arr = self._read(p)
        return _select_labels(arr, t, n_t, None).ndim == 2

    def get(self, unit: _Unit, base: str, kind: str) -> np.ndarray | None:
        if self.path is None:
            return None
        p = self._find(unit.name, kind) or self._find(base, kind)
        if p is None:
            if kind == "nuclei":
                return None
            looked = " and ".join(
                f"{stem}_cells.tif/.zarr"
                for stem in dict.fromkeys((unit.name, base, self.file_name))
            )
            raise FileNotFoundError(
                f"no label image for {unit.name!r} in {self.path} (looked for {looked})"
            )
        arr = self._read(p)
        if p.name.startswith(f"{unit.name}_"):
            return arr  # the unit's own label file
        return _select_labels(arr, unit.t, unit.n_t, unit.z)
