"""Lazy reading: when an image is read as a dask array (:data:`LAZY_ABOVE_BYTES`), and the dask
arrays over a TIFF (tifffile's zarr store) and an OME-Zarr image."""

from __future__ import annotations

import sys
from pathlib import Path

from .image import ImageReadError

#: Images larger than this (bytes, all planes) are read as lazy dask arrays.
LAZY_ABOVE_BYTES = 1 << 30


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
