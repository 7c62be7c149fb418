"""Image reading with axis normalisation, and the writers every face shares.

:func:`read_image` turns OME-TIFF, ImageJ hyperstacks, plain (multi-page) TIFF and PNG/JPEG into
an :class:`ImageData` whose array is ``(C, Z, Y, X)`` (``(T, C, Z, Y, X)`` when the file has a
time axis), with channel names, pixel size in micrometres and the source path. With the
optional ``formats`` extra (bioio and its plugins) it also reads Zeiss ``.czi``, Nikon ``.nd2``,
Leica ``.lif`` and OME-Zarr (``.zarr`` folders, bioformats2raw layout included); each scene
(series) of such a file is one image, chosen with ``scene=`` (:func:`scene_names` lists them).

Big images are read lazily: above ``io.lazy.LAZY_ABOVE_BYTES`` (1 GiB; or with ``lazy=True``)
the array is a dask array (from bioio, or from tifffile's zarr store for a TIFF), so taking one
channel or plane reads only that part of the file.

Where the axes come from, in order: the ``axes`` argument (the config's ``axes:`` key), the
file's metadata (OME-XML, ImageJ hyperstack tags, RGB samples), and, for a plain multi-page TIFF
with no metadata, a documented guess: a leading axis of at most 6 planes is read as channels,
a longer one as Z (a warning says so and how to override it).

The package's modules: ``image`` (:class:`ImageData`, :func:`from_array`, axes, file types,
errors), ``read`` (:func:`read_image`, PNG/JPEG, :func:`check_pixel_count`), ``tiff`` (TIFF
metadata and axes), ``formats`` (bioio), ``lazy`` (dask arrays over TIFF and OME-Zarr),
``labels`` (:func:`write_labels`, :func:`read_labels`) and ``write`` (atomic writers, OME-TIFF,
tables). Every function and class is importable from ``napari_exouptake.io``; the two
thresholds live, and are read, in their modules: ``io.lazy.LAZY_ABOVE_BYTES`` and
``io.labels.TILED_LABELS_ABOVE_PX`` (change them there).
"""

from __future__ import annotations

from .formats import bioio_suffix, scene_names
from .image import (
    BIOIO_SUFFIXES,
    FORMATS_INSTALL,
    RASTER_SUFFIXES,
    TIFF_SUFFIXES,
    ImageData,
    ImageReadError,
    ImageTooLargeError,
    from_array,
    is_lazy,
)
from .labels import read_labels, write_labels
from .read import check_pixel_count, read_image
from .tiff import MAX_GUESSED_CHANNELS, clean_axes
from .write import atomic_write, replace_dir, write_ome_tiff, write_table

__all__ = [
    "BIOIO_SUFFIXES",
    "FORMATS_INSTALL",
    "MAX_GUESSED_CHANNELS",
    "RASTER_SUFFIXES",
    "TIFF_SUFFIXES",
    "ImageData",
    "ImageReadError",
    "ImageTooLargeError",
    "atomic_write",
    "bioio_suffix",
    "check_pixel_count",
    "clean_axes",
    "from_array",
    "is_lazy",
    "read_image",
    "read_labels",
    "replace_dir",
    "scene_names",
    "write_labels",
    "write_ome_tiff",
    "write_table",
]
