"""Input discovery: files, folders (recursive) and globs -> uniquely named input files."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import BIOIO_SUFFIXES, RASTER_SUFFIXES, TIFF_SUFFIXES
from ..io import bioio_suffix as _bioio_suffix
from .layout import _LOCK_NAME, _MANIFEST, _RESULTS

__all__ = ["InputFile", "collect_inputs", "is_output_folder"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = tuple(s.lower() for s in (*TIFF_SUFFIXES, *RASTER_SUFFIXES, *BIOIO_SUFFIXES))


@dataclass(frozen=True)
class InputFile:
    """One input file of a batch.

    Attributes
    ----------
    path : Path
        Absolute path.
    name : str
        Unique image name: the file's stem (``.ome.tif`` etc. removed), prefixed with its
        folder relative to the other files of the same stem when stems repeat
        (``plate1/A01.tif`` and ``plate2/A01.tif`` -> ``plate1_A01``, ``plate2_A01``).
    """

    path: Path
    name: str


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *TIFF_SUFFIXES, *RASTER_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(_IMAGE_SUFFIXES) and not path.name.startswith(".")


def _is_input(path: Path) -> bool:
    """An image file, or a ``.zarr`` folder (an OME-Zarr image is a folder)."""
    is_store = path.is_dir() and path.name.lower().endswith(".zarr")
    return (path.is_file() or is_store) and _is_image(path)


def collect_inputs(
    inputs: Sequence[str | Path] | str | Path,
    exclude: Sequence[str | Path] = (),
) -> list[InputFile]:
    """Expand files, folders (recursive) and glob patterns into uniquely named inputs.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        Image files, folders (every TIFF/PNG/JPEG/CZI/ND2/LIF file and ``.zarr`` store below
        them) or glob patterns
        (``**`` recurses).
    exclude : sequence of path
        Folders whose files are never inputs (the output folder, a labels folder).

    Returns
    -------
    list of InputFile
        Sorted by name; each file once.

    Raises
    ------
    FileNotFoundError
        When an input is neither a file, a folder nor a pattern that matches a file, or when
        nothing is found at all.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    excluded = [Path(e).resolve() for e in exclude]

    def keep(p: Path) -> bool:
        rp = p.resolve()
        return not any(rp == e or e in rp.parents for e in excluded)

    found: dict[Path, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir() and _bioio_suffix(p) == ".zarr":  # an OME-Zarr store is one input
            hits = [p]
        elif p.is_dir():
            hits = _images_below(p)
            if not hits:
                log.warning("%s: folder holds no TIFF/PNG/JPEG/CZI/ND2/LIF/OME-Zarr image", p)
        elif p.is_file():
            hits = [p]
        elif glob.has_magic(str(item)):
            hits = sorted(Path(h) for h in glob.glob(str(item), recursive=True))
            hits = [h for h in hits if _is_input(h) and not _in_output(h)]
            if not hits:
                raise FileNotFoundError(f"input pattern {str(item)!r} matches no image file")
        else:
            raise FileNotFoundError(f"input {str(item)!r}: no such file or folder")
        for h in hits:
            if keep(h):
                found[h.resolve()] = None
    if not found:
        raise FileNotFoundError(
            "no input images found in " + ", ".join(repr(str(i)) for i in inputs)
        )
    return _unique_names(sorted(found))


def is_output_folder(folder: str | Path) -> bool:
    """True for a folder written by ``exouptake analyze``/``segment`` (never read as input).

    Recognised by its run lock, manifest or results generations, or by ``run.json`` beside
    ``cells.csv`` (older runs, dataset reference results).
    """
    d = Path(folder)
    return (
        (d / _LOCK_NAME).is_file()
        or (d / _MANIFEST).is_file()
        or (d / _RESULTS).is_dir()
        or ((d / "run.json").is_file() and (d / "cells.csv").is_file())
    )


def _in_output(path: Path) -> bool:
    return any(is_output_folder(d) for d in path.resolve().parents)


def _images_below(folder: Path) -> list[Path]:
    """Image files and ``.zarr`` stores below ``folder``, leaving out exouptake output folders
    and hidden ones."""
    if is_output_folder(folder) or _in_output(folder):
        log.warning("%s is an exouptake output folder; its files are not inputs", folder)
        return []
    hits: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        d = Path(dirpath)
        real = os.path.realpath(d)
        if real in seen:  # a linked folder met twice (or a link loop)
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for sub in sorted(dirs):
            if sub.startswith("."):
                continue
            if is_output_folder(d / sub):
                log.info("%s: an exouptake output folder, not read as input", d / sub)
                continue
            if sub.lower().endswith(".zarr"):  # an OME-Zarr store is one input, not searched
                hits.append(d / sub)
                continue
            keep.append(sub)
        dirs[:] = keep
        hits.extend(d / f for f in files if _is_image(d / f) and (d / f).is_file())
    return sorted(hits)


def _unique_names(paths: Sequence[Path]) -> list[InputFile]:
    by_stem: dict[str, list[Path]] = {}
    for p in paths:
        by_stem.setdefault(_stem(p), []).append(p)
    named: list[InputFile] = []
    for stem, group in by_stem.items():
        if len(group) == 1:
            named.append(InputFile(group[0], stem))
            continue
        common = Path(os.path.commonpath([str(p.parent) for p in group]))
        for p in group:
            parts = p.parent.relative_to(common).parts
            if parts:
                name = "_".join((*parts, stem))
            else:  # same folder, same stem, other type (a.tif, a.png): a_tif, a_png
                name = f"{stem}_{p.name[len(stem) :].lstrip('.').replace('.', '_')}"
            named.append(InputFile(p, name))
    # a folder-prefixed name can still meet another file's stem: number the repeats
    seen: dict[str, int] = {}
    out = []
    for f in sorted(named, key=lambda f: (f.name, str(f.path))):
        n = seen.get(f.name, 0)
        seen[f.name] = n + 1
        out.append(f if n == 0 else InputFile(f.path, f"{f.name}_{n + 1}"))
    return sorted(out, key=lambda f: f.name)
