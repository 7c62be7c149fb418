"""Image reading with axis normalisation, and the writers every face shares.

:func:`read_image` turns OME-TIFF, ImageJ hyperstacks, plain (multi-page) TIFF and PNG/JPEG into
an :class:`ImageData` whose array is ``(C, Z, Y, X)`` (``(T, C, Z, Y, X)`` when the file has a
time axis), with channel names, pixel size in micrometres and the source path. With the
optional ``formats`` extra (bioio and its plugins) it also reads Zeiss ``.czi``, Nikon ``.nd2``,
Leica ``.lif`` and OME-Zarr (``.zarr`` folders, bioformats2raw layout included); each scene
(series) of such a file is one image, chosen with ``scene=`` (:func:`scene_names` lists them).

Big images are read lazily: above :data:`LAZY_ABOVE_BYTES` (or with ``lazy=True``) the array is
a dask array (from bioio, or from tifffile's zarr store for a TIFF), so taking one channel or
plane reads only that part of the file.

Where the axes come from, in order: the ``axes`` argument (the config's ``axes:`` key), the
file's metadata (OME-XML, ImageJ hyperstack tags, RGB samples), and, for a plain multi-page TIFF
with no metadata, a documented guess: a leading axis of at most 6 planes is read as channels,
a longer one as Z (a warning says so and how to override it).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "ImageData",
    "ImageReadError",
    "ImageTooLargeError",
    "clean_axes",
    "atomic_write",
    "check_pixel_count",
    "from_array",
    "read_image",
    "read_labels",
    "replace_dir",
    "scene_names",
    "write_labels",
    "write_ome_tiff",
    "write_table",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: File types read through bioio (the ``formats`` extra): suffix -> the bioio plugin that reads it.
BIOIO_SUFFIXES = {
    ".czi": "bioio-czi",
    ".nd2": "bioio-nd2",
    ".lif": "bioio-lif",
    ".zarr": "bioio-ome-zarr",
}
#: How to install the readers of :data:`BIOIO_SUFFIXES`.
FORMATS_INSTALL = 'pip install "napari-exouptake[formats]"'
#: Images larger than this (bytes, all planes) are read as lazy dask arrays.
LAZY_ABOVE_BYTES = 1 << 30
#: A plain multi-page TIFF's unknown leading axis of at most this many planes is read as C.
MAX_GUESSED_CHANNELS = 6


class ImageReadError(ValueError):
    """An image that cannot be read: the message names the file and why."""


@dataclass(frozen=True)
class ImageData:
    """An image normalised for analysis.

    Attributes
    ----------
    data : (C, Z, Y, X) or (T, C, Z, Y, X) ndarray or dask array
        Pixel values in the file's dtype. ``axes`` says which layout. A dask array (big
        images, ``read_image(lazy=True)``) reads from the file what is taken of it
        (``np.asarray(image.channel(i))`` reads one channel).
    channel_names : tuple of str
        One name per channel (from metadata, else ``"C0"``, ``"C1"``, ...).
    pixel_size_um : float or None
        Lateral (Y/X) pixel size in micrometres; None when unknown.
    z_step_um : float or None
        Distance between Z planes in micrometres; None when unknown or 2D.
    source : Path or None
        File the image came from.
    axes : {"CZYX", "TCZYX"}
    metadata : dict
        What the reader knew: ``format``; for CZI/ND2/LIF/OME-Zarr also ``reader``, ``scene``
        and ``scenes`` (see :func:`read_image`).
    """

    data: np.ndarray
    channel_names: tuple[str, ...]
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    source: Path | None = None
    axes: str = "CZYX"
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.axes not in ("CZYX", "TCZYX"):
            raise ValueError(f"ImageData.axes must be 'CZYX' or 'TCZYX', got {self.axes!r}")
        if self.data.ndim != len(self.axes):
            raise ValueError(
                f"ImageData.data has {self.data.ndim} dimensions but axes {self.axes!r} needs "
                f"{len(self.axes)}"
            )
        n_c = self.data.shape[self.axes.index("C")]
        if len(self.channel_names) != n_c:
            raise ValueError(
                f"{len(self.channel_names)} channel names for {n_c} channels: {self.channel_names}"
            )

    @property
    def name(self) -> str:
        """The source file's stem without ``.ome`` (``image`` when there is no file)."""
        if self.source is None:
            return "image"
        stem = self.source.name
        for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *TIFF_SUFFIXES, *RASTER_SUFFIXES):
            if stem.lower().endswith(suffix):
                return stem[: -len(suffix)]
        return self.source.stem

    @property
    def n_channels(self) -> int:
        return self.data.shape[self.axes.index("C")]

    @property
    def n_timepoints(self) -> int:
        return self.data.shape[0] if self.axes == "TCZYX" else 1

    @property
    def is_3d(self) -> bool:
        """True when there is more than one Z plane."""
        return self.data.shape[-3] > 1

    @property
    def shape_yx(self) -> tuple[int, int]:
        return tuple(self.data.shape[-2:])  # type: ignore[return-value]

    def channel(self, index: int) -> np.ndarray:
        """One channel as ``(Z, Y, X)``.

        Raises
        ------
        ValueError
            When the index does not exist (the message lists the channels), or when the image
            has a time axis (use :meth:`frame` first).
        """
        if self.axes != "CZYX":
            raise ValueError("image has a time axis: take one frame with .frame(t) first")
        if not 0 <= index < self.n_channels:
            listing = ", ".join(f"{i}: {n}" for i, n in enumerate(self.channel_names))
            raise ValueError(
                f"channel {index} does not exist: image has {self.n_channels} channel(s) "
                f"({listing})"
            )
        return self.data[index]

    def frame(self, t: int) -> ImageData:
        """The ``(C, Z, Y, X)`` image of time point ``t`` (the image itself when no T axis)."""
        if self.axes == "CZYX":
            if t != 0:
                raise ValueError(f"time point {t} does not exist: image has no time axis")
            return self
        return replace(self, data=self.data[t], axes="CZYX")

    def plane(self, z: int) -> ImageData:
        """A single-plane ``(C, 1, Y, X)`` image of Z plane ``z``."""
        if self.axes != "CZYX":
            raise ValueError("image has a time axis: take one frame with .frame(t) first")
        return replace(self, data=self.data[:, z : z + 1])


# -- reading -----------------------------------------------------------------------------------


def from_array(
    array: np.ndarray,
    axes: str = "CYX",
    channel_names: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    z_step_um: float | None = None,
    source: str | Path | None = None,
) -> ImageData:
    """Wrap an in-memory array as :class:`ImageData`.

    Parameters
    ----------
    array : ndarray
        Pixel data whose dimensions ``axes`` names.
    axes : str
        Letters from T, C, Z, Y, X (S = RGB samples, read as C), ending in ``YX``.
    channel_names : sequence of str, optional
    pixel_size_um, z_step_um : float, optional
        Micrometres per pixel / per Z step.
    """
    data, out_axes = _normalise_axes(array if is_lazy(array) else np.asarray(array), axes)
    n_c = data.shape[out_axes.index("C")]
    names = tuple(channel_names) if channel_names is not None else _default_names(n_c)
    return ImageData(
        data=data,
        channel_names=names,
        pixel_size_um=pixel_size_um,
        z_step_um=z_step_um,
        source=Path(source) if source is not None else None,
        axes=out_axes,
    )


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def check_pixel_count(path: str | Path, max_pixels: int) -> int:
    """Refuse, from the file's header alone, an image with more than ``max_pixels`` pixels.

    Parameters
    ----------
    path : str or Path
        A TIFF (every series is counted), PNG, JPEG or BMP file; other types pass unchecked.
    max_pixels : int
        Largest pixel count (all channels, planes and time points of one series) allowed.

    Returns
    -------
    int
        The largest pixel count found (0 when the type is not checked).

    Raises
    ------
    ImageTooLargeError
        With the declared shape and the limit.
    """
    path = Path(path)
    lower = path.name.lower()
    shapes: list[tuple[int, ...]] = []
    try:
        if lower.endswith(TIFF_SUFFIXES):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shapes = [tuple(int(n) for n in s.shape) for s in tif.series]
        elif lower.endswith(RASTER_SUFFIXES):
            from PIL import Image

            with Image.open(path) as im:  # reads the header only
                shapes = [(im.size[1], im.size[0], len(im.getbands()))]
    except Exception:  # unreadable header: read_image gives the proper error
        return 0
    biggest, shape = 0, ()
    for sh in shapes:
        n = int(np.prod(sh, dtype=np.float64))
        if n > biggest:
            biggest, shape = n, sh
    if biggest > max_pixels:
        raise ImageTooLargeError(
            f"{path}: the image declares {biggest:,} pixels (shape {shape}), more than the "
            f"limit of {max_pixels:,}; refused before reading it (raise the limit with "
            "--max-pixels if the memory allows)"
        )
    return biggest


def read_image(
    path: str | Path,
    axes: str | None = None,
    *,
    scene: int | str | None = None,
    lazy: bool | None = None,
) -> ImageData:
    """Read an image file and normalise it to ``(C, Z, Y, X)`` (or ``(T, C, Z, Y, X)``).

    Parameters
    ----------
    path : str or Path
        OME-TIFF, ImageJ TIFF, plain (multi-page) TIFF, PNG or JPEG; with the ``formats`` extra
        also ``.czi``, ``.nd2``, ``.lif`` and OME-Zarr (a ``.zarr`` folder).
    axes : str, optional
        Axis order of a TIFF/PNG/JPEG array (e.g. ``"ZCYX"``), overriding the metadata. The
        bioio formats always carry their axes, so it does not apply to them.
    scene : int or str, optional
        Scene (series) of a CZI/ND2/LIF/OME-Zarr file, by index or name (default: the first).
    lazy : bool, optional
        True: a dask array that reads planes on demand; False: a numpy array; None (default):
        lazy when the image is larger than :data:`LAZY_ABOVE_BYTES` (TIFF and bioio formats).

    Returns
    -------
    ImageData
        ``metadata`` holds ``format`` and, for bioio formats, ``reader``, ``scene`` (its name)
        and ``scenes`` (every scene's label, the text that goes between ``[ ]`` in image names).

    Raises
    ------
    ImageReadError
        When the file is missing, empty, corrupt or of an unsupported type, when its reader is
        not installed, or when the reader fails (the message names the file and the reason).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    lower = path.name.lower()
    bioio_kind = bioio_suffix(path)
    if scene not in (None, 0) and bioio_kind is None:
        raise ImageReadError(f"{path}: scene {scene!r} does not exist: a TIFF/PNG/JPEG has one")
    if path.is_dir() and bioio_kind != ".zarr":
        raise ImageReadError(f"{path}: is a folder, not an image file (nor a .zarr store)")
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    try:
        if lower.endswith(TIFF_SUFFIXES):
            image = _read_tiff(path, axes, lazy)
        elif lower.endswith(RASTER_SUFFIXES):
            image = _read_raster(path, axes)
        elif bioio_kind is not None:
            image = _read_bioio(path, bioio_kind, scene, lazy)
        else:
            raise ImageReadError(
                f"{path}: unsupported file type {path.suffix!r}; readable: "
                "OME-TIFF/TIFF (.tif, .tiff), PNG, JPEG, and with the formats extra "
                f"{', '.join(BIOIO_SUFFIXES)} ({FORMATS_INSTALL})"
            )
    except ImageReadError:
        raise
    except Exception as exc:  # corrupt files raise many different things deep in the codecs
        raise ImageReadError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc})"
        ) from exc
    if image.data.size == 0:
        raise ImageReadError(f"{path}: the image holds no pixels (shape {image.data.shape})")
    if image.data.dtype == np.bool_:
        raise ImageReadError(
            f"{path}: a true/false (binary mask) image, not an intensity image; a mask or "
            "label image belongs in --labels"
        )
    return image


def _want_lazy(lazy: bool | None, nbytes: int) -> bool:
    """The ``lazy`` rule: as asked, else above :data:`LAZY_ABOVE_BYTES`, except inside a Dask
    distributed worker, where computing a dask array from within a task would submit it to the
    cluster the task is running on (which can deadlock with one thread per worker)."""
    if lazy is not None:
        return bool(lazy)
    return nbytes > LAZY_ABOVE_BYTES and not _in_dask_worker()


def _in_dask_worker() -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def is_lazy(array) -> bool:
    """True for a dask array (read on demand) rather than an in-memory numpy array."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(array, da.Array)


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


def _tiff_dask(path: Path, shape: tuple[int, ...]):
    """Series 0 (full resolution) of a TIFF as a dask array over tifffile's zarr store.

    Chunks are the file's tiles (or strips), so a slice reads only the tiles it touches.
    """
    import dask.array as da
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0, level=0)
    arr = zarr.open(store, mode="r")
    if isinstance(arr, zarr.Group):  # multiscale store: level 0 is "0"
        arr = arr["0"]
    data = da.from_zarr(arr)
    if tuple(data.shape) != tuple(shape):
        raise ImageReadError(f"{path}: lazy TIFF shape {data.shape} differs from {shape}")
    return data


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


def _read_raster(path: Path, axes: str | None) -> ImageData:
    import imageio.v3 as iio

    data = np.asarray(iio.imread(path))
    if axes is not None:
        return replace(from_array(data, axes.upper(), source=path), metadata={"format": "raster"})
    if data.ndim == 2:
        return from_array(data, "YX", ("gray",), source=path)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return from_array(rgb[..., 0], "YX", ("gray",), source=path)
        return from_array(rgb, "YXS", ("red", "green", "blue"), source=path)
    raise ImageReadError(f"{path}: unexpected image shape {data.shape} for a PNG/JPEG")


# -- bioio formats (the ``formats`` extra) -----------------------------------------------------


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


def _normalise_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    axes = axes.upper().replace("S", "C") if "C" not in axes.upper() else axes.upper()
    if "S" in axes:  # both C and S: fold samples into channels
        raise ValueError(f"axes {axes!r} has both C and S; give one of them")
    if len(axes) != data.ndim:
        raise ValueError(f"axes {axes!r} does not match an array of shape {data.shape}")
    if len(set(axes)) != len(axes) or not set(axes) <= set("TCZYX") or not {"Y", "X"} <= set(axes):
        raise ValueError(f"axes {axes!r} must use T, C, Z, Y, X at most once and include Y and X")
    for letter in "CZ":
        if letter not in axes:
            data = data[np.newaxis]
            axes = letter + axes
    target = "TCZYX" if "T" in axes else "CZYX"
    data = np.transpose(data, [axes.index(a) for a in target])
    if target == "TCZYX" and data.shape[0] == 1:
        data, target = data[0], "CZYX"
    return data, target


def _default_names(n: int) -> tuple[str, ...]:
    return tuple(f"C{i}" for i in range(n))


# -- writing -----------------------------------------------------------------------------------


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` atomically.

    A crash part-way leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_ome_tiff(
    path: str | Path,
    data: np.ndarray,
    channel_names: Sequence[str],
    pixel_size_um: float | None = None,
    z_step_um: float | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Write a ``(C, Y, X)`` or ``(C, Z, Y, X)`` array as OME-TIFF with names and pixel size."""
    import tifffile

    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"write_ome_tiff expects (C, Y, X) or (C, Z, Y, X), got {data.shape}")
    if len(channel_names) != data.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for {data.shape[0]} channels")
    axes = "CYX" if data.ndim == 3 else "CZYX"
    metadata: dict = {"axes": axes, "Channel": {"Name": list(channel_names)}}
    if pixel_size_um is not None:
        metadata.update(
            PhysicalSizeX=float(pixel_size_um),
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=float(pixel_size_um),
            PhysicalSizeYUnit="µm",
        )
    if z_step_um is not None and data.ndim == 4:
        metadata.update(PhysicalSizeZ=float(z_step_um), PhysicalSizeZUnit="µm")

    def _write(tmp: Path) -> None:
        tifffile.imwrite(tmp, data, ome=True, metadata=metadata, compression=compression)

    # tifffile decides OME by suffix; the temporary name ends in .tmp, so ome=True is explicit
    return atomic_write(path, _write)


#: Label images with more pixels per plane than this are written as tiled TIFF (256 x 256 tiles),
#: so a reader can take one region without decoding whole strips.
TILED_LABELS_ABOVE_PX = 4096 * 4096
_LABEL_TILE = (256, 256)


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label image (0 = background), atomically.

    A ``.zarr`` path gives an OME-Zarr (NGFF 0.4) image with one resolution level, chunked
    1024 x 1024; otherwise a zlib-compressed TIFF, tiled 256 x 256 (BigTIFF when over 2 GB)
    when a plane has more than :data:`TILED_LABELS_ABOVE_PX` pixels. :func:`read_labels`
    reads all of them.

    Parameters
    ----------
    path : str or Path
    labels : (Y, X) or (Z, Y, X) integer ndarray (numpy or dask)
    """
    path = Path(path)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    lazy = is_lazy(labels)
    if not lazy:
        labels = np.asarray(labels)
    lo, hi = (int(v) for v in _min_max(labels))
    if lo < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    dtype = np.uint16 if hi < 2**16 else np.uint32
    out = labels.astype(dtype, copy=False)
    if path.name.lower().endswith(".zarr"):
        return _write_labels_zarr(path, out)
    import tifffile

    # minisblack: a (3, Y, X) or (4, Y, X) stack is Z planes, never RGB(A) samples
    kwargs: dict = {"compression": "zlib", "photometric": "minisblack"}
    tiled = out.shape[-2] * out.shape[-1] > TILED_LABELS_ABOVE_PX
    if tiled:
        kwargs.update(tile=_LABEL_TILE, bigtiff=out.nbytes > 2**31 - 2**25)
    if lazy:  # a dask array: computed one band of tiles (or one plane) at a time
        kwargs.update(shape=out.shape, dtype=dtype)
        pieces = _label_tiles(out) if tiled else (np.asarray(p) for p in _planes(out))
        return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, pieces, **kwargs))
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, out, **kwargs))


def _planes(arr):
    return arr.reshape((-1, *arr.shape[-2:]))


def _label_tiles(arr):
    """The tiles of a (dask) label image in TIFF order, edge tiles zero-padded."""
    th, tw = _LABEL_TILE
    for plane in _planes(arr):
        for y in range(0, plane.shape[0], th):
            band = np.asarray(plane[y : y + th])
            for x in range(0, plane.shape[1], tw):
                tile = np.zeros(_LABEL_TILE, band.dtype)
                piece = band[:, x : x + tw]
                tile[: piece.shape[0], : piece.shape[1]] = piece
                yield tile


def _min_max(labels) -> tuple[int, int]:
    if labels.size == 0:
        return 0, 0
    if is_lazy(labels):
        import dask

        return dask.compute(labels.min(), labels.max())
    return labels.min(), labels.max()


def _write_labels_zarr(path: Path, labels) -> Path:
    """An OME-Zarr (NGFF 0.4, zarr format 2) label image written into a temporary folder and
    renamed into place (an old store is moved aside first)."""

    import zarr

    axes = [{"name": a, "type": "space"} for a in ("zyx" if labels.ndim == 3 else "yx")]
    chunks = (1, 1024, 1024) if labels.ndim == 3 else (1024, 1024)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        arr = root.create_array(
            "0", shape=labels.shape, dtype=labels.dtype, chunks=chunks[-labels.ndim :]
        )
        if is_lazy(labels):
            labels.rechunk(arr.chunks).store(arr, lock=False)
        else:
            arr[...] = labels
        root.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0] * labels.ndim}
                        ],
                    }
                ],
            }
        ]
        root.attrs["image-label"] = {"version": "0.4"}
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_labels(path: str | Path, lazy: bool = False) -> np.ndarray:
    """Read a label image (TIFF, tiled TIFF or OME-Zarr) as an integer array.

    Parameters
    ----------
    path : str or Path
        A label TIFF, or a ``.zarr`` folder (OME-Zarr: its first resolution level).
    lazy : bool
        True: a dask array read on demand (tiles/chunks), for label images too big to hold.

    Raises
    ------
    ImageReadError
        Naming the file, when it is missing, unreadable or not integer.
    """
    path = Path(path)
    is_zarr = path.name.lower().endswith(".zarr") and path.is_dir()
    if not (path.is_file() or is_zarr):
        raise ImageReadError(f"{path}: no such label file")
    try:
        if is_zarr:
            labels = _open_zarr_level0(path)
        elif lazy:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            labels = _tiff_dask(path, shape)
        else:
            import tifffile

            labels = tifffile.imread(path)
        if not lazy:
            labels = np.asarray(labels)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read the label image ({exc})") from exc
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and not lazy and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ImageReadError(f"{path}: a label image must hold integers, got {labels.dtype}")
    return labels


def _open_zarr_level0(path: Path):
    """The first resolution level of an OME-Zarr image (or the array of a plain zarr array)."""
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group):
        multiscales = node.attrs.get("multiscales") or [{}]
        datasets = multiscales[0].get("datasets") or [{"path": "0"}]
        node = node[datasets[0]["path"]]
    return da.from_zarr(node)


def write_table(
    df,
    path: str | Path,
    formats: Sequence[str] = ("csv", "parquet"),
    csv_digits: int | None = 10,
) -> list[Path]:
    """Write a pandas table as ``<path>.csv`` and/or ``<path>.parquet``, atomically.

    Parameters
    ----------
    df : pandas.DataFrame
    path : str or Path
        Destination without suffix (a given ``.csv``/``.parquet`` suffix is dropped).
    formats : sequence of {"csv", "parquet"}
    csv_digits : int or None
        Significant digits of floats in the CSV (10: ``118.3``, not ``118.30000000000001``;
        Parquet keeps full precision). None: every float written so it reads back exactly.
    """
    path = Path(path)
    if path.suffix in (".csv", ".parquet"):
        path = path.with_suffix("")
    float_format = None if csv_digits is None else f"%.{int(csv_digits)}g"
    written = []
    for fmt in formats:
        target = path.with_name(path.name + "." + fmt)
        if fmt == "csv":
            written.append(
                atomic_write(
                    target, lambda tmp: df.to_csv(tmp, index=False, float_format=float_format)
                )
            )
        elif fmt == "parquet":
            written.append(atomic_write(target, lambda tmp: df.to_parquet(tmp, index=False)))
        else:
            raise ValueError(f"unknown table format {fmt!r}; use csv or parquet")
    return written


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder onto ``final`` (an old one is moved aside first and
    removed after, so ``final`` is never half-written)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
