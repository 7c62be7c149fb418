"""Label images: :func:`write_labels` (TIFF, tiled TIFF above :data:`TILED_LABELS_ABOVE_PX`, or
OME-Zarr) and :func:`read_labels` (eager or lazy)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np

from .image import FORMATS_INSTALL, ImageReadError, is_lazy
from .lazy import _open_zarr_level0, _tiff_dask
from .write import atomic_write, replace_dir

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


def _can_read_lazily() -> bool:
    """dask and zarr are installed (the ``formats`` extra)."""
    from importlib.util import find_spec

    return find_spec("dask") is not None and find_spec("zarr") is not None


def read_labels(path: str | Path, lazy: bool = False) -> np.ndarray:
    """Read a label image (TIFF, tiled TIFF or OME-Zarr) as an integer array.

    Parameters
    ----------
    path : str or Path
        A label TIFF, or a ``.zarr`` folder (OME-Zarr: its first resolution level).
    lazy : bool
        True: a dask array read on demand (tiles/chunks), for label images too big to hold.
        Lazy reading needs dask and zarr (the ``formats`` extra); without them a TIFF is
        read whole (a numpy array, sliced the same way).

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
            if not _can_read_lazily():
                raise ImageReadError(
                    f"{path}: OME-Zarr labels need the formats extra ({FORMATS_INSTALL})"
                )
            labels = _open_zarr_level0(path)
        elif lazy and _can_read_lazily():
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
        eager = isinstance(labels, np.ndarray)
        if labels.dtype.kind == "f" and eager and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ImageReadError(f"{path}: a label image must hold integers, got {labels.dtype}")
    return labels
