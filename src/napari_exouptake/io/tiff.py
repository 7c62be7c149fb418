"""TIFF reading: OME-TIFF, ImageJ hyperstacks and plain (multi-page) TIFF, their axes, channel
names and pixel sizes; truncated files refused."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from .image import FORMATS_INSTALL, ImageData, ImageReadError, from_array
from .lazy import _tiff_dask, _want_lazy

log = logging.getLogger("napari_exouptake.io")

#: A plain multi-page TIFF's unknown leading axis of at most this many planes is read as C.
MAX_GUESSED_CHANNELS = 6


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path, axes: str | None, lazy: bool | None = None) -> ImageData:
    # tifffile logs (rather than raises) broken page chains of truncated files and then returns
    # what it could read; collect those messages and refuse the file instead.
    handler = _Collect()
    tlog = logging.getLogger("tifffile")
    tlog.addHandler(handler)
    try:
        image = _read_tiff_inner(path, axes, lazy)
    finally:
        tlog.removeHandler(handler)
    broken = [m for m in handler.messages if "invalid" in m or "corrupt" in m.lower()]
    if broken:
        raise ImageReadError(f"{path}: the file is truncated or corrupt ({broken[0]})")
    return image


def _read_tiff_inner(path: Path, axes: str | None, lazy: bool | None = None) -> ImageData:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: the TIFF holds no image series")
        series = tif.series[0]
        _check_complete(tif, path)
        data = None
        if _want_lazy(lazy, series.nbytes):
            try:
                data = _tiff_dask(path, series.shape)
            except ImportError as exc:  # zarr or dask missing
                if lazy:
                    raise ImageReadError(
                        f"{path}: lazy reading needs zarr and dask ({exc}): {FORMATS_INSTALL}"
                    ) from exc
                log.warning(
                    "%s: %.1f GB read into memory (install zarr and dask to read big TIFFs "
                    "lazily: %s)",
                    path.name,
                    series.nbytes / 1e9,
                    FORMATS_INSTALL,
                )
        if data is None:
            data = series.asarray()
        file_axes = series.axes
        names: list[str] | None = None
        pixel_size = z_step = None
        meta: dict = {}
        if tif.is_ome and tif.ome_metadata:
            names, pixel_size, z_step = _parse_ome(tif.ome_metadata)
            meta["format"] = "ome-tiff"
        elif tif.is_imagej:
            ij = tif.imagej_metadata or {}
            names = _imagej_channel_names(ij, data, file_axes)
            pixel_size = _tiff_pixel_size(tif.pages[0], ij)
            z_step = float(ij["spacing"]) if ij.get("spacing") else None
            meta["format"] = "imagej"
        else:
            pixel_size = _tiff_pixel_size(tif.pages[0], {})
            meta["format"] = "tiff"
            if len(tif.series) > 1:
                meta["n_series"] = len(tif.series)
    if axes is None:
        axes = clean_axes(file_axes, data.shape, path)
    elif len(axes) != data.ndim:
        raise ImageReadError(
            f"{path}: axes {axes!r} has {len(axes)} letters but the image has {data.ndim} "
            f"dimensions (shape {data.shape}, file axes {file_axes!r})"
        )
    img = from_array(data, axes.upper(), None, pixel_size, z_step, path)
    if names is not None and len(names) == img.n_channels:
        img = replace(img, channel_names=tuple(names))
    return replace(img, metadata=meta)


def _check_complete(tif, path: Path) -> None:
    """Refuse a truncated TIFF: tifffile would silently fill the missing strips with zeros."""
    size = path.stat().st_size
    for page in tif.pages:
        offsets = getattr(page, "dataoffsets", None) or ()
        counts = getattr(page, "databytecounts", None) or ()
        if offsets and counts and max(o + c for o, c in zip(offsets, counts, strict=False)) > size:
            raise ImageReadError(
                f"{path}: the file is truncated (pixel data ends past its {size} bytes); "
                "copy it again from the source"
            )


def clean_axes(file_axes: str, shape: tuple[int, ...], path: Path) -> str:
    """Map tifffile's axis letters onto T, C, Z, Y, X (+S)."""
    letters = "".join(a if a in "TCZYXS" else "?" for a in file_axes)
    # resolve unknown leading axes: first unknown becomes C or Z by size, then the other
    while "?" in letters:
        i = letters.index("?")
        n = shape[i]
        if "C" not in letters and n <= MAX_GUESSED_CHANNELS:
            choice = "C"
        elif "Z" not in letters:
            choice = "Z"
        elif "T" not in letters:
            choice = "T"
        elif "C" not in letters:
            choice = "C"
        else:
            raise ImageReadError(
                f"{path}: cannot tell the axes of shape {shape} (file axes {file_axes!r}); "
                "set axes: in the config (e.g. ZCYX)"
            )
        log.warning(
            "%s: no axis metadata for a leading axis of %d planes; reading it as %s "
            "(set axes: in the config to override)",
            path.name,
            n,
            choice,
        )
        letters = letters[:i] + choice + letters[i + 1 :]
    return letters


def _parse_ome(xml: str) -> tuple[list[str] | None, float | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, None
    ns = ""
    if root.tag.startswith("{"):
        ns = root.tag.split("}")[0] + "}"
    pixels = root.find(f".//{ns}Image/{ns}Pixels")
    if pixels is None:
        return None, None, None
    names = [
        c.get("Name") or c.get("ID") or f"C{i}"
        for i, c in enumerate(pixels.findall(f"{ns}Channel"))
    ]

    def size(key: str) -> float | None:
        value = pixels.get(key)
        if value is None:
            return None
        unit = pixels.get(key + "Unit", "µm")
        return _to_um(float(value), unit)

    return (names or None), size("PhysicalSizeX"), size("PhysicalSizeZ")


_UNIT_TO_UM = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "\\u00B5m": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _to_um(value: float, unit: str | None) -> float | None:
    factor = _UNIT_TO_UM.get((unit or "µm").strip())
    return value * factor if factor is not None else None


def _tiff_pixel_size(page, ij: dict) -> float | None:
    try:
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        num, den = tag.value
        if num == 0:
            return None
        per_unit = den / num  # units per pixel
        unit = ij.get("unit")
        if unit:
            return _to_um(per_unit, unit.replace("\\u00B5", "µ"))
        res_unit = page.tags.get("ResolutionUnit")
        code = int(res_unit.value) if res_unit is not None else 2
        if code == 3:  # centimetre
            return per_unit * 1e4
        return None  # inch (or none): a DPI from a scanner or drawing program, not a microscope
    except Exception:  # malformed tags: no pixel size rather than no image
        return None


def _imagej_channel_names(ij: dict, data: np.ndarray, axes: str) -> list[str] | None:
    labels = ij.get("Labels")
    if isinstance(labels, (list, tuple)) and "C" in axes:
        n_c = data.shape[axes.index("C")]
        if len(labels) == n_c:
            return [str(x) for x in labels]
        if len(labels) >= n_c and len(labels) % n_c == 0:
            return [str(x) for x in labels[:n_c]]
    return None
