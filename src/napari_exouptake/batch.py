"""Many images -> analysis -> tables: resumable, atomic, serial, local processes or Dask.

:func:`run_analyze` (``exouptake analyze``) and :func:`run_segment` (``exouptake segment``)
take image files, folders (searched recursively) and glob patterns.

How a run is laid out on disk (``OUT`` = the ``--out`` folder)::

    OUT/parts/<file>/part.json            per input file: key, units, provenance (written last)
    OUT/parts/<file>/cells.parquet        cells of every unit of the file (no run-level columns)
    OUT/parts/<file>/spots.parquet
    OUT/parts/<file>/labels/<image>_cells.tif (+ _nuclei.tif)
    OUT/parts/<file>/qc/<image>_overlay.png
    OUT/manifest.jsonl                    one line per finished file (appended, fsync'ed)
    OUT/failures.csv                      image, path, error (only when something failed)
    OUT/exouptake.log                     log of every run on OUT (appended)
    OUT/cells.csv, cells.parquet, spots.csv, images.csv, labels/, qc/, run.json   (merged)

Each part is written into a temporary folder and renamed into place, so a killed run leaves
whole parts or none. A part is reused when its key matches: the SHA-256 of the config sections
that change per-image numbers (everything but ``positivity`` and ``conditions``, which are
applied when the parts are merged), the input file's size and modification time, the label
files' size and time, and the part format. After the images, the run-level
:func:`~napari_exouptake.pipeline.finalize` (positivity thresholds over all cells) runs on the
parts sorted by image name and the merged tables are rewritten, so they are identical whatever
the history (interrupted, resumed, serial, processes or Dask).

Stacks: every series of a multi-series file (OME multi-image) and every time point is analysed
on its own; the image name gets ``_s<NN>`` / ``_t<NNN>`` suffixes (only for axes longer than one)
and the tables get ``source_image``, ``series`` and ``t`` columns. Z-stacks are analysed as
volumes, unless ``z_mode="planes"`` or the given labels are 2-D: then each plane is one image
(``_z<NNN>`` suffix, ``z`` column = plane index).
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import glob
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import AssayConfig, ConfigError, config_hash, load_config
from .io import RASTER_SUFFIXES, TIFF_SUFFIXES, atomic_write

__all__ = [
    "BatchResult",
    "BatchUsageError",
    "InputFile",
    "PART_VERSION",
    "analysis_hash",
    "analyze_batch",
    "collect_inputs",
    "load_sample_sheet",
    "merge_parts",
    "run_analyze",
    "run_segment",
    "segment_batch",
]

log = logging.getLogger(__name__)

#: Version of the part folder layout; a change makes every part stale.
PART_VERSION = 1
_IMAGE_SUFFIXES = tuple(s.lower() for s in (*TIFF_SUFFIXES, *RASTER_SUFFIXES))
_MANIFEST = "manifest.jsonl"
_LOG_NAME = "exouptake.log"
_LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"
#: Sample-sheet columns that name the image (first one present wins).
SHEET_KEYS = ("image", "pattern", "file")


class BatchUsageError(ConfigError):
    """A mistake in the batch's arguments (inputs, sample sheet, workers): exit code 2."""


# -- inputs ------------------------------------------------------------------------------------


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
    for suffix in (".ome.tiff", ".ome.tif", *TIFF_SUFFIXES, *RASTER_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(_IMAGE_SUFFIXES) and not path.name.startswith(".")


def collect_inputs(
    inputs: Sequence[str | Path] | str | Path,
    exclude: Sequence[str | Path] = (),
) -> list[InputFile]:
    """Expand files, folders (recursive) and glob patterns into uniquely named inputs.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        Image files, folders (every TIFF/PNG/JPEG below them) or glob patterns
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
        if p.is_dir():
            hits = sorted(q for q in p.rglob("*") if q.is_file() and _is_image(q))
            if not hits:
                log.warning("%s: folder holds no TIFF/PNG/JPEG image", p)
        elif p.is_file():
            hits = [p]
        elif glob.has_magic(str(item)):
            hits = sorted(Path(h) for h in glob.glob(str(item), recursive=True))
            hits = [h for h in hits if h.is_file() and _is_image(h)]
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


# -- sample sheet ------------------------------------------------------------------------------


def load_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read a sample sheet: image name or glob pattern -> condition, dose, replicate, well ...

    Parameters
    ----------
    path : str or Path
        CSV with a key column ``image`` (or ``pattern`` / ``file``): an image name, file name,
        relative path or a glob pattern (``plate1/*_A0?``); and any of ``condition``, ``dose``
        (number, e.g. ug/mL), ``replicate``, ``well`` and further columns, which are all copied
        into the cells and images tables. The first matching row wins. The simulator's
        ``conditions.csv`` is a valid sample sheet.

    Returns
    -------
    pandas.DataFrame
        With the key column renamed ``pattern``.

    Raises
    ------
    BatchUsageError
        Missing file, no key column, an empty sheet or a non-numeric ``dose``.
    """
    path = Path(path)
    if not path.is_file():
        raise BatchUsageError(f"sample sheet {str(path)!r} does not exist")
    try:
        sheet = pd.read_csv(path, dtype=dict.fromkeys((*SHEET_KEYS, "condition", "well"), str))
    except Exception as exc:
        raise BatchUsageError(f"sample sheet {path}: cannot read it as CSV ({exc})") from None
    sheet.columns = [str(c).strip() for c in sheet.columns]
    key = next((k for k in SHEET_KEYS if k in sheet.columns), None)
    if key is None:
        raise BatchUsageError(
            f"sample sheet {path}: needs a column naming the images ({', '.join(SHEET_KEYS)}); "
            f"it has {', '.join(sheet.columns)}"
        )
    if sheet.empty:
        raise BatchUsageError(f"sample sheet {path}: has no rows")
    sheet = sheet.drop(columns=[k for k in SHEET_KEYS if k in sheet.columns and k != key])
    sheet = sheet.rename(columns={key: "pattern"})
    if sheet["pattern"].isna().any():
        row = int(np.flatnonzero(sheet["pattern"].isna().to_numpy())[0]) + 2
        raise BatchUsageError(f"sample sheet {path}: line {row} has an empty {key!r}")
    if "dose" in sheet.columns:
        dose = pd.to_numeric(sheet["dose"], errors="coerce")
        bad = dose.isna() & sheet["dose"].notna()
        if bad.any():
            raise BatchUsageError(
                f"sample sheet {path}: dose {sheet['dose'][bad].iloc[0]!r} is not a number "
                "(give the unit in a dose_unit column)"
            )
        sheet["dose"] = dose.astype(float)
    return sheet.reset_index(drop=True)


def _sheet_row(sheet: pd.DataFrame | None, candidates: Sequence[str]) -> dict[str, Any]:
    """Metadata of the first sheet row whose pattern matches one of ``candidates``."""
    if sheet is None:
        return {}
    for row in sheet.itertuples(index=False):  # rows of a sheet, not cells
        pattern = str(row.pattern)
        if any(c == pattern or fnmatch.fnmatchcase(c, pattern) for c in candidates):
            return {k: v for k, v in row._asdict().items() if k != "pattern"}
    return {}


# -- keys and manifest -------------------------------------------------------------------------


def analysis_hash(config: AssayConfig) -> str:
    """SHA-256 of the config without the sections applied at merge time.

    ``positivity`` and ``conditions`` only act in the run-level finalize, so changing them
    re-merges the parts without re-analysing any image.
    """
    data = config.to_dict()
    data.pop("positivity", None)
    data.pop("conditions", None)
    return config_hash(AssayConfig.from_dict(data))


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _LabelsIndex:
    """Label files of a ``--labels`` folder (listed once), or one label file for every image."""

    def __init__(self, labels: str | Path | None) -> None:
        self.path = Path(labels) if labels is not None else None
        self.files: list[str] = []
        if self.path is None:
            return
        if self.path.is_dir():
            self.files = sorted(
                e.name
                for e in os.scandir(self.path)
                if e.is_file() and e.name.lower().endswith((".tif", ".tiff"))
            )
        elif not self.path.is_file():
            raise FileNotFoundError(f"--labels {str(self.path)!r}: no such file or folder")

    def for_name(self, name: str) -> list[Path]:
        """Label files that may belong to input ``name`` (``<name>_*``): part of its key."""
        if self.path is None:
            return []
        if self.path.is_file():
            return [self.path]
        prefix = f"{name}_"
        i = bisect.bisect_left(self.files, prefix)
        out = []
        while i < len(self.files) and self.files[i].startswith(prefix):
            out.append(self.path / self.files[i])
            i += 1
        return out


@dataclass(frozen=True)
class _Task:
    kind: str  # "analyze" | "segment"
    name: str
    path: str
    out: str
    config: AssayConfig
    key: dict
    labels: str | None = None
    z_mode: str = "auto"
    overlays: bool = True


def _key(
    kind: str, f: InputFile, config: AssayConfig, labels: _LabelsIndex, z_mode: str
) -> dict[str, Any]:
    from ._version import __version__

    return {
        "kind": kind,
        "part_version": PART_VERSION,
        "package": __version__,
        "analysis_sha256": analysis_hash(config),
        "input": _fingerprint(f.path),
        "labels": [_fingerprint(p) for p in labels.for_name(f.name)],
        "z_mode": z_mode,
    }


def _read_manifest(out: Path) -> dict[str, dict]:
    """Last manifest entry per image; a torn last line (killed run) is ignored."""
    path = out / _MANIFEST
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "image" in rec:
                entries[rec["image"]] = rec
    return entries


def _append_manifest(out: Path, record: dict) -> None:
    path = out / _MANIFEST
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _part_dir(out: Path, name: str) -> Path:
    return out / "parts" / name


def _is_done(task: _Task, manifest: dict[str, dict], out: Path) -> bool:
    """True when the task's output is there and was made with the same key.

    An analysis part is self-certifying (its ``part.json``, written last and renamed into
    place with the folder, holds the key), so a part finished just before a kill counts even
    when the manifest line was not yet appended. Segmentation output needs the manifest line.
    """
    key = _jsonable(task.key)
    if task.kind == "analyze":
        meta = _part_dir(out, task.name) / "part.json"
        try:
            return json.loads(meta.read_text(encoding="utf-8")).get("key") == key
        except (OSError, json.JSONDecodeError):
            return False
    entry = manifest.get(task.name)
    if entry is None or entry.get("key") != key or not entry.get("files"):
        return False
    return all((out / "labels" / f).is_file() for f in entry["files"])


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# -- logging -----------------------------------------------------------------------------------

_WORKER_LOGS: set[str] = set()


@contextlib.contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    pkg = logging.getLogger("napari_exouptake")
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    old_level = pkg.level
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        handler.close()


def _worker_logging(out: str) -> None:
    """In a worker process: log to ``OUT/exouptake.log`` as well (once per process)."""
    if out in _WORKER_LOGS:
        return
    _WORKER_LOGS.add(out)
    pkg = logging.getLogger("napari_exouptake")
    if any(
        isinstance(h, logging.FileHandler) and h.baseFilename == str(Path(out) / _LOG_NAME)
        for h in pkg.handlers
    ):
        return  # the parent process itself (serial run) already logs there
    handler = logging.FileHandler(Path(out) / _LOG_NAME, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)


# -- reading stacks ----------------------------------------------------------------------------


def _n_series(path: Path) -> int:
    if not path.name.lower().endswith(TIFF_SUFFIXES):
        return 1
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return max(len(tif.series), 1)
    except Exception:  # unreadable: read_image gives the proper error
        return 1


def _read_series(path: Path, series: int, axes: str | None, first):
    """Series ``series`` (> 0) of a multi-series TIFF as ImageData, named like series 0."""
    from dataclasses import replace

    import tifffile

    from . import io

    with tifffile.TiffFile(path) as tif:
        s = tif.series[series]
        data = s.asarray()
        file_axes = s.axes
    if axes is None:
        clean = getattr(io, "_clean_axes", None)
        axes = clean(file_axes, data.shape, path) if clean else file_axes
    img = io.from_array(data, axes, None, first.pixel_size_um, first.z_step_um, path)
    if img.n_channels == first.n_channels:
        img = replace(img, channel_names=first.channel_names)
    return img


@dataclass
class _Unit:
    name: str
    image: Any  # ImageData (C, Z, Y, X)
    series: int
    t: int
    n_t: int
    z: int | None  # plane index when planes are analysed separately


def _units(task: _Task, labels_z: Callable[[str, int, int], bool]) -> Iterator[_Unit]:
    """Every analysable (C, Z, Y, X) image of one file, with its name."""
    from .io import read_image

    path = Path(task.path)
    first = read_image(path, axes=task.config.axes)  # series 0, and the file's metadata
    n_s = _n_series(path)
    for s in range(n_s):
        img = first if s == 0 else _read_series(path, s, task.config.axes, first)
        n_t = img.n_timepoints
        for t in range(n_t):
            frame = img.frame(t)
            name = task.name + (f"_s{s:02d}" if n_s > 1 else "") + (f"_t{t:03d}" if n_t > 1 else "")
            n_z = frame.data.shape[1]
            planes = n_z > 1 and (
                task.z_mode == "planes" or (task.z_mode == "auto" and labels_z(name, t, n_t))
            )
            if planes:
                for z in range(n_z):
                    yield _Unit(f"{name}_z{z:03d}", frame.plane(z), s, t, n_t, z)
            else:
                yield _Unit(name, frame, s, t, n_t, None)


def _select_labels(arr: np.ndarray, t: int, n_t: int, z: int | None) -> np.ndarray:
    """Pick the frame / plane of a file-level label array for one unit."""
    # (T, Z, Y, X), or (T, Y, X) for a time series (preferred reading when T == Z)
    if arr.ndim == 4 or (arr.ndim == 3 and n_t > 1 and arr.shape[0] == n_t):
        arr = arr[t]
    if z is not None and arr.ndim == 3:  # (Z, Y, X): this plane; (Y, X): every plane
        arr = arr[z]
    return arr


class _LabelSource:
    """Find the label (and nucleus) images of each unit in a ``--labels`` file or folder."""

    def __init__(self, labels: str | None, file_name: str) -> None:
        self.path = Path(labels) if labels else None
        self.file_name = file_name
        self._cache: dict[Path, np.ndarray] = {}

    def _read(self, path: Path) -> np.ndarray:
        from .io import read_labels

        if path not in self._cache:
            self._cache = {path: read_labels(path)}  # keep one array: frames share the file
        return self._cache[path]

    def _find(self, unit_base: str, kind: str) -> Path | None:
        if self.path is None:
            return None
        if self.path.is_file():
            return self.path if kind == "cells" else None
        for stem in dict.fromkeys((unit_base, self.file_name)):
            for ext in (".tif", ".tiff"):
                p = self.path / f"{stem}_{kind}{ext}"
                if p.is_file():
                    return p
        return None

    def is_2d(self, unit_base: str, t: int, n_t: int) -> bool:
        """True when the labels of this frame are one plane (so a z-stack runs per plane)."""
        p = self._find(unit_base, "cells")
        if p is None:
            return False
        arr = self._read(p)
        return _select_labels(arr, t, n_t, None).ndim == 2

    def get(self, unit: _Unit, base: str, kind: str) -> np.ndarray | None:
        if self.path is None:
            return None
        p = self._find(unit.name, kind) or self._find(base, kind)
        if p is None:
            if kind == "nuclei":
                return None
            raise FileNotFoundError(
                f"no label image for {unit.name!r} in {self.path} (looked for "
                f"{unit.name}_cells.tif and {self.file_name}_cells.tif)"
            )
        arr = self._read(p)
        if p.name.startswith(f"{unit.name}_"):
            return arr  # the unit's own label file
        return _select_labels(arr, unit.t, unit.n_t, unit.z)


# -- the work of one file (runs in the worker) -------------------------------------------------


def _run_task(task: _Task) -> dict[str, Any]:
    """Analyse (or segment) every unit of one file; never raises (errors go in the outcome)."""
    _worker_logging(task.out)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if task.kind == "analyze":
            info = _analyze_file(task)
        else:
            info = _segment_file(task)
        seconds = time.perf_counter() - t0
        log.info(
            "%s: done in %.2f s (%s)",
            task.name,
            seconds,
            ", ".join(f"{k} {v}" for k, v in info.items() if k != "files"),
        )
        return {
            "image": task.name,
            "ok": True,
            "seconds": seconds,
            "cpu_s": time.process_time() - c0,
            "worker": f"{platform.node()}:{os.getpid()}",
            **info,
        }
    except Exception as exc:  # a broken image must not stop the batch
        seconds = time.perf_counter() - t0
        msg = f"{type(exc).__name__}: {exc}"
        log.error("%s: failed after %.2f s: %s", task.name, seconds, msg)
        log.debug("%s: traceback", task.name, exc_info=True)
        return {"image": task.name, "ok": False, "seconds": seconds, "error": msg}


def _analyze_file(task: _Task) -> dict[str, Any]:
    import imageio.v3 as iio

    from .io import write_labels
    from .pipeline import analyze_image, qc_overlay, write_readout_overlays

    out = Path(task.out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tmp = parts / f".{task.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        source = _LabelSource(task.labels, task.name)
        cells_frames, spots_frames, units_meta = [], [], []
        for unit in _units(task, source.is_2d):
            base = unit.name if unit.z is None else unit.name.rsplit("_z", 1)[0]
            lab = source.get(unit, base, "cells")
            nuc = source.get(unit, base, "nuclei") if lab is not None else None
            res = analyze_image(unit.image, task.config, labels=lab, nuclei=nuc, name=unit.name)
            cells = res.cells.drop(columns=["condition"], errors="ignore")
            cells_frames.append(cells)
            spots_frames.append(res.spots)
            labels_dir = tmp / "labels"
            if res.exo_image is not None:  # None: image-level readouts only, no cells
                write_labels(labels_dir / f"{unit.name}_cells.tif", _squeeze(res.cells_labels))
            if res.nuclei_labels is not None:
                write_labels(labels_dir / f"{unit.name}_nuclei.tif", _squeeze(res.nuclei_labels))
            if task.overlays and res.exo_image is not None:
                (tmp / "qc").mkdir(exist_ok=True)
                iio.imwrite(tmp / "qc" / f"{unit.name}_overlay.png", qc_overlay(res))
            if task.overlays:
                write_readout_overlays(res, tmp / "qc")
            units_meta.append(
                {
                    "image": unit.name,
                    "series": unit.series,
                    "t": unit.t,
                    "z": unit.z,
                    "readouts": res.extras.get("readouts", {}),
                    "provenance": res.provenance,
                    "nuclei": res.nuclei_labels is not None,
                }
            )
        if not units_meta:
            raise ValueError(f"{task.path}: the file holds no image")
        cells = pd.concat(cells_frames, ignore_index=True)
        spots = pd.concat(spots_frames, ignore_index=True)
        cells.to_parquet(tmp / "cells.parquet", index=False)
        spots.to_parquet(tmp / "spots.parquet", index=False)
        meta = {
            "part_version": PART_VERSION,
            "image": task.name,
            "path": task.path,
            "key": _jsonable(task.key),
            "units": units_meta,
        }
        (tmp / "part.json").write_text(
            json.dumps(_jsonable(meta), indent=1, sort_keys=True), encoding="utf-8"
        )
        _replace_dir(tmp, _part_dir(out, task.name))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"units": len(units_meta), "cells": int(len(cells)), "spots": int(len(spots))}


def _segment_file(task: _Task) -> dict[str, Any]:
    from .io import write_labels
    from .segmentation import segment

    task.config.check_roles("segment")
    labels_dir = Path(task.out) / "labels"
    files: list[str] = []
    n_cells = 0
    for unit in _units(task, lambda name, t, n_t: False):
        seg = segment(unit.image, task.config)
        write_labels(labels_dir / f"{unit.name}_cells.tif", _squeeze(seg.cells))
        files.append(f"{unit.name}_cells.tif")
        if seg.nuclei is not None and task.config.segmentation.mode != "nuclei":
            write_labels(labels_dir / f"{unit.name}_nuclei.tif", _squeeze(seg.nuclei))
            files.append(f"{unit.name}_nuclei.tif")
        n_cells += seg.n_cells
    return {"units": len(files), "cells": n_cells, "files": files}


def _squeeze(labels: np.ndarray) -> np.ndarray:
    return labels[0] if labels.ndim == 3 and labels.shape[0] == 1 else labels


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder onto ``final`` (an old one is moved aside first)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- executors ---------------------------------------------------------------------------------


def _execute(
    tasks: Sequence[_Task], workers: int, scheduler: str | None
) -> Iterator[dict[str, Any]]:
    """Run ``_run_task`` over ``tasks``; yield outcomes as they complete."""
    if not tasks:
        return
    if scheduler:
        yield from _execute_dask(tasks, workers, scheduler)
    elif workers > 1 and len(tasks) > 1:
        yield from _execute_processes(tasks, workers)
    else:
        for t in tasks:
            yield _run_task(t)


def _mp_context():
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # imported once in the fork server, inherited by every worker
        ctx.set_forkserver_preload(["napari_exouptake.batch", "napari_exouptake.pipeline"])
        return ctx
    return mp.get_context("spawn")


def _execute_processes(tasks: Sequence[_Task], workers: int) -> Iterator[dict[str, Any]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    n = min(workers, len(tasks))
    log.info("running %d image(s) on %d local worker processes", len(tasks), n)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=_mp_context())
    try:
        futures = {pool.submit(_run_task, t): t for t in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                yield fut.result()
            except BrokenProcessPool as exc:
                yield _crashed(task, f"worker process died ({exc}); out of memory?")
            except Exception as exc:
                yield _crashed(task, f"{type(exc).__name__}: {exc}")
    finally:  # on an interrupt, drop the images not started yet
        pool.shutdown(wait=True, cancel_futures=True)


def _crashed(task: _Task, msg: str) -> dict[str, Any]:
    log.error("%s: failed: %s", task.name, msg)
    return {"image": task.name, "ok": False, "seconds": float("nan"), "error": msg}


def _dask_forkserver_preload() -> None:
    """Have local Dask workers forked from a server with numpy, pandas and the pipeline
    already imported (as the local process pool is), instead of fresh interpreters."""
    from distributed import utils

    ctx = utils.get_mp_context()  # sets Dask's own preload list once
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(
            [
                "distributed",
                "numpy",
                "pandas",
                "napari_exouptake.batch",
                "napari_exouptake.pipeline",
            ]
        )


def _execute_dask(tasks: Sequence[_Task], workers: int, scheduler: str) -> Iterator[dict[str, Any]]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchUsageError(
            "--scheduler needs Dask distributed: pip install 'napari-exouptake[distributed]'"
        ) from None
    cluster = None
    if scheduler == "local":
        import multiprocessing as mp

        import dask

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        settings = {
            "distributed.worker.multiprocessing-method": method,
            # the statistical profiler samples every 10 ms: CPU that analysis needs
            "distributed.worker.profile.enabled": False,
            # fewer event-loop wake-ups competing with the analysis thread for the GIL
            "distributed.admin.tick.interval": "500ms",
            "distributed.admin.system-monitor.interval": "2s",
            "distributed.worker.memory.monitor-interval": "1s",
            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which makes glibc
            # return memory after every large array: page faults on every image (measured:
            # ~25% more CPU per image than a plain worker process). Keep glibc's default.
            "distributed.nanny.pre-spawn-environ": {},
        }
        with dask.config.set(settings):
            _dask_forkserver_preload()
            cluster = LocalCluster(
                n_workers=max(workers, 1),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise BatchUsageError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
    log.info(
        "running %d image(s) on Dask %s (%d worker(s))",
        len(tasks),
        "local cluster" if cluster else scheduler,
        len(client.scheduler_info()["workers"]),
    )
    try:
        token = uuid.uuid4().hex[:8]
        futures = client.map(
            _run_task,
            list(tasks),
            pure=False,
            key=[f"exouptake-{t.kind}-{t.name}-{token}" for t in tasks],
        )
        by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as exc:  # KilledWorker, lost connection ...
                yield _crashed(by_key[fut.key], f"{type(exc).__name__}: {exc}")
            fut.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# -- merging -----------------------------------------------------------------------------------


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and d.st_mtime_ns >= s.st_mtime_ns:
            return
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def merge_parts(
    out: str | Path,
    names: Sequence[str],
    config: AssayConfig,
    *,
    sample_sheet: pd.DataFrame | None = None,
    extra_run_info: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Rebuild the run-level tables of ``out`` from its part folders.

    Loads the parts of ``names``, sorts every image by name, attaches conditions (sample sheet
    first, else ``config.conditions``) and sample-sheet columns, applies the run-level
    :func:`~napari_exouptake.pipeline.finalize` and writes ``cells.csv``/``.parquet``,
    ``spots.csv``, ``images.csv``, ``labels/``, ``qc/`` and ``run.json``.

    Parameters
    ----------
    out : str or Path
        The batch output folder.
    names : sequence of str
        Input names whose parts to merge (missing parts are skipped with a warning).
    config : AssayConfig
    sample_sheet : pandas.DataFrame, optional
        From :func:`load_sample_sheet`.
    extra_run_info : dict, optional
        Added to ``run.json``.

    Returns
    -------
    dict of str to Path
        ``cells``, ``spots``, ``images``, ``run``.
    """
    from .io import write_table
    from .pipeline import AnalysisResult, condition_for, finalize, images_table, run_info

    out = Path(out)
    results: list[AnalysisResult] = []
    meta_of: dict[str, dict[str, Any]] = {}
    files_of: dict[str, Path] = {}
    for name in sorted(names):
        pdir = _part_dir(out, name)
        try:
            part = json.loads((pdir / "part.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("%s: no finished part in %s; left out of the tables", name, pdir)
            continue
        cells_all = pd.read_parquet(pdir / "cells.parquet")
        spots_all = pd.read_parquet(pdir / "spots.parquet")
        cell_groups = dict(tuple(cells_all.groupby("image", sort=False))) if len(cells_all) else {}
        spot_groups = dict(tuple(spots_all.groupby("image", sort=False))) if len(spots_all) else {}
        rel = _relative(Path(part["path"]))
        for u in part["units"]:
            img = u["image"]
            cells = cell_groups.get(img, cells_all.iloc[:0]).reset_index(drop=True)
            spots = spot_groups.get(img, spots_all.iloc[:0]).reset_index(drop=True)
            row = _sheet_row(sample_sheet, (img, name, rel, Path(part["path"]).name))
            condition = row.pop("condition", None)
            if condition is None or (isinstance(condition, float) and math.isnan(condition)):
                condition = condition_for(img, config)
            if condition is not None:
                cells.insert(1, "condition", str(condition))
            meta = dict(row)
            meta.update(source_image=name, series=int(u["series"]), t=int(u["t"]), z=u["z"])
            meta_of[img] = meta
            files_of[img] = pdir
            results.append(
                AnalysisResult(
                    image=img,
                    cells_labels=np.zeros((0, 0), np.int32),  # labels stay on disk in the part
                    nuclei_labels=None,
                    spots=spots,
                    cells=cells,
                    summary={},
                    provenance=u["provenance"],
                    condition=None if condition is None else str(condition),
                    extras={"readouts": u.get("readouts", {}), "nuclei": u.get("nuclei", False)},
                )
            )
    results.sort(key=lambda r: r.image)
    if not results:
        log.error("no finished image to merge in %s", out)
        return {}
    dupes = pd.Series([r.image for r in results]).duplicated()
    if dupes.any():
        log.warning(
            "image names repeat across inputs (%s); rename the files",
            results[int(np.flatnonzero(dupes.to_numpy())[0])].image,
        )
    results = finalize(results, config)

    # which stack columns this run needs (all images get them, with 0 where not split)
    metas = [meta_of[r.image] for r in results]
    sheet_cols = [
        c
        for c in (sample_sheet.columns if sample_sheet is not None else [])
        if c not in ("pattern", "condition")
    ]
    stack_cols = [
        c
        for c, pred in (
            ("series", lambda m: m["series"] > 0),
            ("t", lambda m: m["t"] > 0),
            ("z", lambda m: m["z"] is not None),
        )
        if any(pred(m) for m in metas)
    ]
    add_cols = sheet_cols + (["source_image", *stack_cols] if stack_cols else [])

    def with_meta(df: pd.DataFrame, meta: dict[str, Any], after: str) -> pd.DataFrame:
        pos = list(df.columns).index(after) + 1 if after in df.columns else 0
        for i, col in enumerate(add_cols):
            value = meta.get(col, np.nan)  # no sample-sheet row: missing (NaN)
            if col == "z":
                value = -1 if value is None else int(value)
            if col in df.columns and col == "z":  # 3-D spots: keep their own z coordinate
                continue
            df.insert(pos + i, col, pd.Series([value] * len(df), dtype=_dtype(value)))
        return df

    cells = pd.concat(
        [
            with_meta(r.cells.copy(), meta_of[r.image], "condition" if r.condition else "image")
            for r in results
        ],
        ignore_index=True,
    )
    spots = pd.concat(
        [with_meta(r.spots.copy(), meta_of[r.image], "image") for r in results],
        ignore_index=True,
    )
    images = images_table(results)
    image_rows = [
        with_meta(
            images.iloc[[i]].reset_index(drop=True),
            meta_of[r.image],
            "condition" if "condition" in images.columns else "image",
        )
        for i, r in enumerate(results)
    ]
    images = pd.concat(image_rows, ignore_index=True)

    paths: dict[str, Path] = {}
    paths["cells"] = write_table(cells, out / "cells")[0]
    paths["spots"] = write_table(spots, out / "spots", formats=("csv",))[0]
    paths["images"] = write_table(images, out / "images", formats=("csv",))[0]
    for r in results:
        pdir = files_of[r.image]
        for kind in ("cells", "nuclei"):
            src = pdir / "labels" / f"{r.image}_{kind}.tif"
            if src.is_file():
                _copy_if_changed(src, out / "labels" / src.name)
        for kind in ("overlay", "tubes", "collagen"):
            src = pdir / "qc" / f"{r.image}_{kind}.png"
            if src.is_file():
                _copy_if_changed(src, out / "qc" / src.name)
    run = run_info(config, results)
    if extra_run_info:
        run.update(extra_run_info)
    from .pipeline import _json_default

    atomic_write(
        out / "run.json",
        lambda tmp: tmp.write_text(
            json.dumps(run, indent=2, default=_json_default), encoding="utf-8"
        ),
    )
    paths["run"] = out / "run.json"
    return paths


def _dtype(value: Any) -> str | None:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int64"
    if isinstance(value, (float, np.floating)):
        return "float64"
    return "object"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the batch ---------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What a batch did.

    Attributes
    ----------
    out : Path
    inputs : list of InputFile
    done : list of str
        Images analysed in this run.
    skipped : list of str
        Images whose finished part was reused.
    failed : dict of str to str
        Image -> error message (also in ``failures.csv``).
    wall_s : float
        Seconds for the whole batch, merge included.
    tables : dict of str to Path
    """

    out: Path
    inputs: list[InputFile]
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    wall_s: float = 0.0
    tables: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every input is in the tables, 1 when some failed (CONTRACT exit codes)."""
        return 1 if self.failed else 0


def _prepare(
    inputs: Sequence[str | Path] | str | Path,
    config: AssayConfig | str | Path,
    out: str | Path,
    labels: str | Path | None,
    workers: int,
) -> tuple[AssayConfig, Path, list[InputFile]]:
    if not isinstance(config, AssayConfig):
        config = load_config(config)
    if not isinstance(workers, int) or workers < 1:
        raise BatchUsageError(f"workers must be a whole number >= 1, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BatchUsageError(f"--out {str(out)!r} is a file, not a folder")
    exclude = [out] + ([Path(labels)] if labels is not None and Path(labels).is_dir() else [])
    files = collect_inputs(inputs, exclude=exclude)
    out.mkdir(parents=True, exist_ok=True)
    return config, out, files


def _check_model(config: AssayConfig, scheduler: str | None) -> None:
    """Fail fast (usage error) when the segmentation model is not available here.

    Skipped for a remote Dask scheduler: the workers may see other paths.
    """
    if scheduler not in (None, "local"):
        return
    from .segmentation import ModelNotAvailableError, resolve_model

    sc = config.segmentation
    try:
        for name in dict.fromkeys(n for n in (sc.model, sc.nuclei_model) if n):
            resolve_model(name)
    except ModelNotAvailableError as exc:
        raise BatchUsageError(str(exc)) from None


def _clean_stale(out: Path) -> None:
    """Remove temporary part folders left by a killed run (one batch per OUT at a time)."""
    parts = out / "parts"
    if not parts.is_dir():
        return
    for p in parts.iterdir():
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name) and p.is_dir():
            log.info("removing %s left by an interrupted run", p.name)
            shutil.rmtree(p, ignore_errors=True)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="image",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _run_tasks(
    tasks: list[_Task],
    out: Path,
    workers: int,
    scheduler: str | None,
    progress: bool,
    result: BatchResult,
    force: bool,
    on_progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> None:
    manifest = {} if force else _read_manifest(out)
    todo = []
    for t in tasks:
        if _is_done(t, manifest, out):
            result.skipped.append(t.name)
            if _jsonable(t.key) != manifest.get(t.name, {}).get("key"):
                _append_manifest(
                    out,
                    {  # finished just before a kill: record it now
                        "image": t.name,
                        "path": t.path,
                        "status": "done",
                        "recovered": True,
                        "key": _jsonable(t.key),
                        "config_sha256": config_hash(t.config),
                    },
                )
        else:
            todo.append(t)
    if result.skipped:
        log.info(
            "%d image(s) already done with the same config and files: skipped", len(result.skipped)
        )
    from tqdm.contrib.logging import logging_redirect_tqdm

    with (
        _progress_bar(len(todo), tasks[0].kind if tasks else "", progress) as bar,
        logging_redirect_tqdm(),
    ):
        by_name = {t.name: t for t in todo}
        for outcome in _execute(todo, workers, scheduler):
            task = by_name[outcome["image"]]
            if outcome["ok"]:
                result.done.append(task.name)
                _append_manifest(
                    out,
                    {
                        "image": task.name,
                        "path": task.path,
                        "status": "done",
                        "key": _jsonable(task.key),
                        "config_sha256": config_hash(task.config),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "seconds": round(float(outcome["seconds"]), 3),
                        "cpu_s": round(float(outcome.get("cpu_s", float("nan"))), 3),
                        "worker": outcome.get("worker"),
                        "units": outcome.get("units"),
                        "files": outcome.get("files", []),
                    },
                )
            else:
                result.failed[task.name] = outcome["error"]
            bar.set_postfix(failed=len(result.failed), refresh=False)
            bar.update(1)
            if on_progress is not None:
                on_progress(len(result.done) + len(result.failed), len(todo), task.name)
            if cancel is not None and cancel():
                # leaving the loop closes the executor generator: images not started are
                # dropped, finished parts are kept and merged (a rerun resumes from them)
                result.cancelled = True
                log.warning("cancelled after %d of %d image(s)", bar.n, len(todo))
                break


def _write_failures(out: Path, result: BatchResult) -> None:
    path = out / "failures.csv"
    if not result.failed:
        if path.exists():
            path.unlink()
        return
    paths = {f.name: str(f.path) for f in result.inputs}
    rows = [
        {"image": k, "path": paths.get(k, ""), "error": v} for k, v in sorted(result.failed.items())
    ]
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    log.error("%d of %d image(s) failed; see %s", len(rows), len(result.inputs), path)


def analyze_batch(
    inputs: Sequence[str | Path] | str | Path,
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    sample_sheet: str | Path | pd.DataFrame | None = None,
    z_mode: str = "auto",
    overlays: bool = True,
    progress: bool = True,
    force: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> BatchResult:
    """Analyse many images into ``out``, resumably, then merge the run-level tables.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        Image files, folders (recursive) or glob patterns.
    config : AssayConfig or path of a YAML config
    out : str or Path
        Output folder (created). A rerun on the same folder skips finished images.
    labels : str or Path, optional
        A label image used for every image, or a folder of ``<image>_cells.tif`` (and
        ``<image>_nuclei.tif``); for stacks ``<image>_t003_cells.tif`` etc., or one file-level
        label array of shape (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X).
    workers : int
        Local worker processes (1: in this process); with ``scheduler="local"`` the number of
        Dask workers.
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``), or ``"local"`` for a LocalCluster on
        127.0.0.1. Workers must see ``out`` and the inputs at the same paths.
    sample_sheet : path or DataFrame, optional
        See :func:`load_sample_sheet`.
    z_mode : {"auto", "volume", "planes"}
        How z-stacks are analysed: as volumes, or plane by plane; ``auto``: per plane when the
        given labels are 2-D, else as volumes.
    overlays : bool
        Write QC overlay PNGs (``qc/<image>_overlay.png``).
    progress : bool
        Show a progress bar with ETA on stderr.
    force : bool
        Redo every image even when its part is up to date.
    on_progress : callable(done: int, total: int, image: str), optional
        Called after each image finishes (for a GUI progress bar).
    cancel : callable() -> bool, optional
        Checked after each image; when True, images not started are dropped, finished ones
        are kept and merged, and ``BatchResult.cancelled`` is set (a rerun resumes).

    Returns
    -------
    BatchResult
    """
    t0 = time.perf_counter()
    if z_mode not in ("auto", "volume", "planes"):
        raise BatchUsageError(f"z_mode must be auto, volume or planes, got {z_mode!r}")
    config, out, files = _prepare(inputs, config, out, labels, workers)
    config.check_roles("quantify" if labels is not None else "analyze")
    if labels is None and not config.image_level_only():
        _check_model(config, scheduler)
    sheet = sample_sheet
    if sample_sheet is not None and not isinstance(sample_sheet, pd.DataFrame):
        sheet = load_sample_sheet(sample_sheet)
    index = _LabelsIndex(labels)
    result = BatchResult(out=out, inputs=files)
    with _log_to_file(out / _LOG_NAME):
        executor = (
            f"dask:{scheduler}"
            if scheduler
            else f"processes:{workers}"
            if workers > 1
            else "serial"
        )
        log.info("exouptake analyze: %d input file(s) -> %s (%s)", len(files), out, executor)
        _clean_stale(out)
        tasks = [
            _Task(
                "analyze",
                f.name,
                str(f.path),
                str(out.resolve()),
                config,
                _key("analyze", f, config, index, z_mode),
                str(Path(labels).resolve()) if labels is not None else None,
                z_mode,
                overlays,
            )
            for f in files
        ]
        _run_tasks(
            tasks,
            out,
            workers,
            scheduler,
            progress,
            result,
            force,
            on_progress=on_progress,
            cancel=cancel,
        )
        _write_failures(out, result)
        finished = set(result.done) | set(result.skipped)
        ok = [
            f.name
            for f in files
            if f.name not in result.failed and (not result.cancelled or f.name in finished)
        ]
        result.tables = (
            merge_parts(
                out,
                ok,
                config,
                sample_sheet=sheet,
                extra_run_info={
                    "batch": {
                        "inputs": len(files),
                        "failed": sorted(result.failed),
                        "sample_sheet": str(sample_sheet)
                        if isinstance(sample_sheet, (str, Path))
                        else None,
                    },
                },
            )
            if ok
            else {}
        )
        result.wall_s = time.perf_counter() - t0
        log.info(
            "analyzed %d, reused %d, failed %d image file(s) in %.1f s -> %s",
            len(result.done),
            len(result.skipped),
            len(result.failed),
            result.wall_s,
            out,
        )
    return result


def run_analyze(
    inputs: Sequence[str | Path],
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    sample_sheet: str | Path | None = None,
    **kwargs: Any,
) -> int:
    """``exouptake analyze`` body: :func:`analyze_batch`, returning the exit code (0 or 1).

    Usage mistakes raise :class:`BatchUsageError` / ``FileNotFoundError`` (exit code 2 in the
    CLI). Keyword arguments are passed to :func:`analyze_batch`.
    """
    res = analyze_batch(
        inputs,
        config,
        out,
        labels=labels,
        workers=workers,
        scheduler=scheduler,
        sample_sheet=sample_sheet,
        **kwargs,
    )
    return res.exit_code


def segment_batch(
    inputs: Sequence[str | Path] | str | Path,
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> BatchResult:
    """Segment many images: ``out/labels/<image>_cells.tif`` (and ``_nuclei.tif``), resumable.

    Stacks are split as in :func:`analyze_batch` (series and time points; z-stacks are
    segmented as volumes). Parameters as in :func:`analyze_batch`.
    """
    t0 = time.perf_counter()
    config, out, files = _prepare(inputs, config, out, None, workers)
    config.check_roles("segment")
    _check_model(config, scheduler)
    result = BatchResult(out=out, inputs=files)
    none = _LabelsIndex(None)
    with _log_to_file(out / _LOG_NAME):
        log.info("exouptake segment: %d input file(s) -> %s", len(files), out)
        tasks = [
            _Task(
                "segment",
                f.name,
                str(f.path),
                str(out.resolve()),
                config,
                _key("segment", f, config, none, "volume"),
            )
            for f in files
        ]
        _run_tasks(tasks, out, workers, scheduler, progress, result, force)
        _write_failures(out, result)
        result.wall_s = time.perf_counter() - t0
        log.info(
            "segmented %d, reused %d, failed %d image file(s) in %.1f s",
            len(result.done),
            len(result.skipped),
            len(result.failed),
            result.wall_s,
        )
    return result


def run_segment(
    inputs: Sequence[str | Path],
    config: AssayConfig | str | Path,
    out: str | Path,
    **kwargs: Any,
) -> int:
    """``exouptake segment`` body: :func:`segment_batch`, returning the exit code (0 or 1)."""
    return segment_batch(inputs, config, out, **kwargs).exit_code
