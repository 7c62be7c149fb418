""":func:`read_image`: any readable file to :class:`~napari_exouptake.io.image.ImageData`, the
PNG/JPEG reader, and :func:`check_pixel_count` (refuse an oversized image from its header)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .formats import _read_bioio, bioio_suffix
from .image import (
    BIOIO_SUFFIXES,
    FORMATS_INSTALL,
    RASTER_SUFFIXES,
    TIFF_SUFFIXES,
    ImageData,
    ImageReadError,
    ImageTooLargeError,
    from_array,
)
from .tiff import _read_tiff


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
