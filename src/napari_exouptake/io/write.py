"""Atomic writers: a file (:func:`atomic_write`) or a folder (:func:`replace_dir`) appears whole
or not at all; OME-TIFF images and tables (CSV, Parquet) written through them."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
