"""Image reading with axis normalisation, and the writers every face shares.

:func:`read_image` turns OME-TIFF, ImageJ hyperstacks, plain (multi-page) TIFF and PNG/JPEG into
an :class:`ImageData` whose array is ``(C, Z, Y, X)`` (``(T, C, Z, Y, X)`` when the file has a
time axis), with channel names, pixel size in micrometres and the source path.

Where the axes come from, in order: the ``axes`` argument (the config's ``axes:`` key), the
file's metadata (OME-XML, ImageJ hyperstack tags, RGB samples), and, for a plain multi-page TIFF
with no metadata, a documented guess: a leading axis of at most 6 planes is read as channels,
a longer one as Z (a warning says so and how to override it).
"""

from __future__ import annotations

import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "ImageData",
    "ImageReadError",
    "atomic_write",
    "from_array",
    "read_image",
    "read_labels",
    "write_labels",
    "write_ome_tiff",
    "write_table",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: A plain multi-page TIFF's unknown leading axis of at most this many planes is read as C.
MAX_GUESSED_CHANNELS = 6


class ImageReadError(ValueError):
    """An image that cannot be read: the message names the file and why."""


@dataclass(frozen=True)
class ImageData:
    """An image normalised for analysis.

    Attributes
    ----------
    data : (C, Z, Y, X) or (T, C, Z, Y, X) ndarray
        Pixel values in the file's dtype. ``axes`` says which layout.
    channel_names : tuple of str
        One name per channel (from metadata, else ``"C0"``, ``"C1"``, ...).
    pixel_size_um : float or None
        Lateral (Y/X) pixel size in micrometres; None when unknown.
    z_step_um : float or None
        Distance between Z planes in micrometres; None when unknown or 2D.
    source : Path or None
        File the image came from.
    axes : {"CZYX", "TCZYX"}
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
        for suffix in (".ome.tiff", ".ome.tif", *TIFF_SUFFIXES, *RASTER_SUFFIXES):
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
    data, out_axes = _normalise_axes(np.asarray(array), axes)
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


def read_image(path: str | Path, axes: str | None = None) -> ImageData:
    """Read an image file and normalise it to ``(C, Z, Y, X)`` (or ``(T, C, Z, Y, X)``).

    Parameters
    ----------
    path : str or Path
        OME-TIFF, ImageJ TIFF, plain (multi-page) TIFF, PNG or JPEG.
    axes : str, optional
        Axis order of the file's array (e.g. ``"ZCYX"``), overriding the metadata.

    Returns
    -------
    ImageData

    Raises
    ------
    ImageReadError
        When the file is missing, empty, corrupt or of an unsupported type (the message names it).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    lower = path.name.lower()
    try:
        if lower.endswith(TIFF_SUFFIXES):
            image = _read_tiff(path, axes)
        elif lower.endswith(RASTER_SUFFIXES):
            image = _read_raster(path, axes)
        else:
            raise ImageReadError(
                f"{path}: unsupported file type {path.suffix!r}; readable: "
                "OME-TIFF/TIFF (.tif, .tiff), PNG, JPEG"
            )
    except ImageReadError:
        raise
    except Exception as exc:  # corrupt files raise many different things deep in the codecs
        raise ImageReadError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc})"
        ) from exc
    if image.data.size == 0:
        raise ImageReadError(f"{path}: the image holds no pixels (shape {image.data.shape})")
    return image


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path, axes: str | None) -> ImageData:
    # tifffile logs (rather than raises) broken page chains of truncated files and then returns
    # what it could read; collect those messages and refuse the file instead.
    handler = _Collect()
    tlog = logging.getLogger("tifffile")
    tlog.addHandler(handler)
    try:
        image = _read_tiff_inner(path, axes)
    finally:
        tlog.removeHandler(handler)
    broken = [m for m in handler.messages if "invalid" in m or "corrupt" in m.lower()]
    if broken:
        raise ImageReadError(f"{path}: the file is truncated or corrupt ({broken[0]})")
    return image


def _read_tiff_inner(path: Path, axes: str | None) -> ImageData:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: the TIFF holds no image series")
        series = tif.series[0]
        _check_complete(tif, path)
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
        axes = _clean_axes(file_axes, data.shape, path)
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


def _clean_axes(file_axes: str, shape: tuple[int, ...], path: Path) -> str:
    """Map tifffile's axis letters onto T, C, Z, Y, X (+S)."""
    out = []
    unknown = "IQ"
    for i, a in enumerate(file_axes):
        if a in "TCZYXS":
            out.append(a)
        elif a in unknown or a in "R":
            out.append("?")
        else:
            out.append("?")
        del i
    letters = "".join(out)
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


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label image (0 = background) as a zlib-compressed TIFF, atomically."""
    import tifffile

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    dtype = np.uint16 if labels.size == 0 or labels.max() < 2**16 else np.uint32
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    out = labels.astype(dtype, copy=False)
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, out, compression="zlib"))


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label TIFF as an integer array; raise :class:`ImageReadError` naming the file."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such label file")
    try:
        labels = tifffile.imread(path)
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read the label image ({exc})") from exc
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ImageReadError(f"{path}: a label image must hold integers, got {labels.dtype}")
    return labels


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
