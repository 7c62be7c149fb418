"""The image every analysis takes: :class:`ImageData` ``(C, Z, Y, X)`` (or ``(T, C, Z, Y, X)``),
:func:`from_array`, axis normalisation, the readable file types and the read errors."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

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


class ImageReadError(ValueError):
    """An image that cannot be read: the message names the file and why."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


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


def is_lazy(array) -> bool:
    """True for a dask array (read on demand) rather than an in-memory numpy array."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(array, da.Array)


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
