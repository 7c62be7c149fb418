"""Many images -> analysis -> tables: resumable, atomic, serial, local processes or Dask.

:func:`run_analyze` (``exouptake analyze``) and :func:`run_segment` (``exouptake segment``)
take image files, folders (searched recursively) and glob patterns.

How a run is laid out on disk (``OUT`` = the ``--out`` folder)::

    OUT/parts/<file>/part.json            per input file: key, units, provenance (written last)
    OUT/parts/<file>/cells.parquet        cells of every unit of the file (no run-level columns)
    OUT/parts/<file>/spots.parquet
    OUT/parts/<file>/labels/<image>_cells.tif (+ _nuclei.tif)
    OUT/parts/<file>/qc/<image>_exo.npy   (EV plane; overlays are drawn at merge)
    OUT/manifest.jsonl                    one line per finished file (appended, fsync'ed)
    OUT/failures.csv                      image, path, error (only when something failed)
    OUT/exouptake.log                     log of every run on OUT (appended)
    OUT/{cells,spots,images}.{csv,parquet}, columns.md, labels/, qc/, run.json, report.html

Each part is written into a temporary folder and renamed into place, so a killed run leaves
whole parts or none. A part is reused when its key matches: the SHA-256 of the config sections
that change per-image numbers (everything but ``positivity`` and ``conditions``, which are
applied when the parts are merged), the input file's size and modification time, the label
files' size and time, and the part format. After the images, the run-level
:func:`~napari_exouptake.pipeline.finalize` (positivity thresholds over all cells) runs on the
parts sorted by image name and the merged tables are rewritten, so they are identical whatever
the history (interrupted, resumed, serial, processes or Dask).

Stacks: every series of a multi-series file (OME multi-image) and every time point is analysed
on its own; the image name gets ``_s<NN>`` (``[<scene>]`` for the named scenes of a CZI, ND2,
LIF or OME-Zarr file) / ``_t<NNN>`` suffixes (only for axes longer than one)
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
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import AssayConfig, ConfigError, config_hash, load_config
from .io import BIOIO_SUFFIXES, RASTER_SUFFIXES, TIFF_SUFFIXES, atomic_write, replace_dir
from .io import bioio_suffix as _bioio_suffix
from .logs import LOG_FORMAT, log_to_file

__all__ = [
    "BatchResult",
    "BatchUsageError",
    "InputFile",
    "MixedPartsError",
    "OutputError",
    "PART_VERSION",
    "RunLockedError",
    "analysis_hash",
    "analyze_batch",
    "collect_inputs",
    "default_max_pixels",
    "is_output_folder",
    "load_sample_sheet",
    "merge_parts",
    "run_analyze",
    "run_lock",
    "run_segment",
    "segment_batch",
]

log = logging.getLogger(__name__)

#: Version of the part folder layout; a change makes every part stale.
PART_VERSION = 1
_IMAGE_SUFFIXES = tuple(s.lower() for s in (*TIFF_SUFFIXES, *RASTER_SUFFIXES, *BIOIO_SUFFIXES))
_MANIFEST = "manifest.jsonl"
_LOG_NAME = "exouptake.log"
#: Sample-sheet columns that name the image (first one present wins).
SHEET_KEYS = ("image", "pattern", "file")


class BatchUsageError(ConfigError):
    """A mistake in the batch's arguments (inputs, sample sheet, workers): exit code 2."""


# -- run lock ----------------------------------------------------------------------------------

_LOCK_NAME = ".exouptake.lock"
_HELD: set[tuple[str, int]] = set()


class RunLockedError(BatchUsageError):
    """Another exouptake run holds the ``--out`` folder (exit code 2)."""


class OutputError(BatchUsageError):
    """The output folder cannot be written (permissions, disk full, name too long): exit 2."""


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux), to tell reused pids apart."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None) -> bool:
    """True when process ``pid`` of this host runs (and is the same process as at ``start``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a killed process not yet reaped by its parent is a zombie: dead for us
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start


def _describe_holder(rec: dict[str, Any]) -> str:
    return (
        f"`exouptake {rec.get('command', '?')}`, pid {rec.get('pid', '?')} on host "
        f"{rec.get('host', '?')}, started {rec.get('started', '?')}"
    )


@contextlib.contextmanager
def run_lock(out: str | Path, command: str = "analyze") -> Iterator[None]:
    """Hold the exclusive run lock of ``out`` (``OUT/.exouptake.lock``) for the block.

    The lock is an ``flock`` on the lock file, which the kernel releases whatever way the
    process ends (even SIGKILL); the file also records the holder's pid, host and start time.
    A lock left by a process that no longer runs (same host, pid gone or reused) is taken over
    with a warning; one held by a live run, or by a run on another host that did not release it,
    refuses the new run.

    Inside the block, SIGTERM (when this is the main thread) raises ``SystemExit(143)``, so a
    plain ``kill`` runs the clean-up (workers stopped, lock released) too.

    Raises
    ------
    RunLockedError
        Another run holds ``out``.
    OutputError
        The lock file cannot be created.
    """
    out = Path(out)
    path = out / _LOCK_NAME
    ident = (str(out.resolve()), threading.get_ident())
    if ident in _HELD:  # this thread holds it already (merge_parts inside analyze_batch)
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _output_error(exc, path) from None
    owned = False
    old_term = None
    try:
        flocked = False
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            holder = _read_lock_fd(fd)
            raise RunLockedError(
                f"--out {str(out)!r} is in use by another run ({_describe_holder(holder)}); "
                "wait for it to finish, or choose another --out"
            ) from None
        except (ImportError, OSError):  # no flock here (Windows, some network file systems)
            pass
        prev = _read_lock_fd(fd)
        host = platform.node()
        if prev and not prev.get("released"):
            same_host = prev.get("host") == host
            pid = prev.get("pid")
            if same_host and isinstance(pid, int) and pid != os.getpid():
                if _pid_alive(pid, prev.get("proc_start")) and not flocked:
                    raise RunLockedError(
                        f"--out {str(out)!r} is in use by another run ({_describe_holder(prev)}); "
                        "wait for it to finish, or choose another --out"
                    )
            elif not same_host and not flocked:
                raise RunLockedError(
                    f"--out {str(out)!r} is locked by a run on another host "
                    f"({_describe_holder(prev)}); if that run is over, delete {path} and rerun"
                )
            log.warning(
                "%s: taking over the run lock left by a run that ended without releasing it (%s)",
                out,
                _describe_holder(prev),
            )
        rec = {
            "command": command,
            "pid": os.getpid(),
            "host": host,
            "proc_start": _proc_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "released": False,
        }
        _write_lock_fd(fd, rec)
        owned = True
        _HELD.add(ident)
        if threading.current_thread() is threading.main_thread():
            old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        yield
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if owned:
            _HELD.discard(ident)
            with contextlib.suppress(OSError):
                _write_lock_fd(fd, {**rec, "released": True})
        os.close(fd)  # releases the flock


def _on_sigterm(signum: int, frame: Any) -> None:
    log.warning("terminated (SIGTERM): stopping the workers; finished images are kept")
    raise SystemExit(128 + signum)


def _read_lock_fd(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _write_lock_fd(fd: int, rec: dict[str, Any]) -> None:
    data = json.dumps(rec, sort_keys=True).encode("utf-8")
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _output_error(exc: OSError, out: Path | None = None) -> OutputError:
    """One line naming the path and the reason (permission, disk full, name too long ...)."""
    import errno

    where = exc.filename or out
    reason = {
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a file of that name is in the way",
        errno.EISDIR: "a folder of that name is in the way",
    }.get(exc.errno or -1, exc.strerror or str(exc))
    verb = "write the output" if out is None or _under(where, out) else "read"
    return OutputError(f"cannot {verb} {str(where)!r}: {reason}")


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


#: Bytes read from each end of a file for its content fingerprint.
_ENDS_BYTES = 1 << 20


def _fingerprint(path: Path) -> dict[str, Any]:
    """Path, size, modification time and SHA-256 of the first and last MiB plus the size (for
    a ``.zarr`` store: of its file list with sizes and times).

    The content part catches edits that keep the size and time (a copy with ``cp -p``, a tool
    that restores the time stamp); reading 2 MiB keeps it cheap for big images.
    """
    import hashlib

    if path.is_dir():  # an OME-Zarr store: every file's name, size and time
        h = hashlib.sha256()
        size, mtime = 0, 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            fst = f.stat()
            size, mtime = size + fst.st_size, max(mtime, fst.st_mtime_ns)
            h.update(f"{f.relative_to(path)}:{fst.st_size}:{fst.st_mtime_ns}\n".encode())
        return {"path": str(path), "size": size, "mtime_ns": mtime, "ends_sha256": h.hexdigest()}
    st = path.stat()
    h = hashlib.sha256(str(st.st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(_ENDS_BYTES))
        if st.st_size > _ENDS_BYTES:
            fh.seek(max(st.st_size - _ENDS_BYTES, _ENDS_BYTES))
            h.update(fh.read(_ENDS_BYTES))
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ends_sha256": h.hexdigest(),
    }


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
        """Label files that may belong to input ``name`` (``<name>_*``, ``<name>[*``): its key."""
        if self.path is None:
            return []
        if self.path.is_file():
            return [self.path]
        out = []
        for prefix in (f"{name}_", f"{name}["):  # file_t000_cells.tif, file[scene]_cells.tif
            i = bisect.bisect_left(self.files, prefix)
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
    max_pixels: int | None = None


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
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.captureWarnings(True)  # torch's warnings into the log, not the console
    for lg in (pkg, logging.getLogger("cellpose"), logging.getLogger("py.warnings")):
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    for lg in (logging.getLogger("cellpose"), logging.getLogger("py.warnings")):
        lg.propagate = False  # worker processes have no console filter


# -- reading stacks ----------------------------------------------------------------------------


def _n_series(path: Path, first=None) -> int:
    scenes = first.metadata.get("scenes") if first is not None else None
    if scenes:  # CZI/ND2/LIF/OME-Zarr: the reader's scenes
        return len(scenes)
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

    if first.metadata.get("scenes"):  # CZI/ND2/LIF/OME-Zarr scene
        return io.read_image(path, axes, scene=series)
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
    from .io import check_pixel_count, read_image

    path = Path(task.path)
    if task.max_pixels is not None:
        check_pixel_count(path, task.max_pixels)  # from the header, before decoding
    first = read_image(path, axes=task.config.axes)  # series 0, and the file's metadata
    n_s = _n_series(path, first)
    scenes = first.metadata.get("scenes")  # named scenes: file[<scene>], else file_s<NN>
    for s in range(n_s):
        img = first if s == 0 else _read_series(path, s, task.config.axes, first)
        n_t = img.n_timepoints
        series = (f"[{scenes[s]}]" if scenes else f"_s{s:02d}") if n_s > 1 else ""
        for t in range(n_t):
            frame = img.frame(t)
            name = task.name + series + (f"_t{t:03d}" if n_t > 1 else "")
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
            looked = " and ".join(
                f"{stem}_cells.tif" for stem in dict.fromkeys((unit.name, base, self.file_name))
            )
            raise FileNotFoundError(
                f"no label image for {unit.name!r} in {self.path} (looked for {looked})"
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
    from .io import write_labels
    from .pipeline import measure_image, write_readout_overlays

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
            res = measure_image(unit.image, task.config, labels=lab, nuclei=nuc, name=unit.name)
            cells = res.cells.drop(columns=["condition"], errors="ignore")
            cells_frames.append(cells)
            spots_frames.append(res.spots)
            labels_dir = tmp / "labels"
            if res.exo_image is not None:  # None: image-level readouts only, no cells
                write_labels(labels_dir / f"{unit.name}_cells.tif", _squeeze(res.cells_labels))
            if res.nuclei_labels is not None:
                write_labels(labels_dir / f"{unit.name}_nuclei.tif", _squeeze(res.nuclei_labels))
            if task.overlays and res.exo_image is not None:
                # the overlay is drawn at merge time (run-wide contrast, positive cells)
                (tmp / "qc").mkdir(exist_ok=True)
                np.save(tmp / "qc" / f"{unit.name}_exo.npy", _qc_plane(res.exo_image))
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
        replace_dir(tmp, _part_dir(out, task.name))
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


def _die_with_parent(main_pid: int) -> None:
    """In a worker: end when the main process ends, however it ends (SIGKILL included).

    On Linux the kernel sends SIGKILL when the parent (the fork server, which itself exits when
    the main process is gone) dies (``PR_SET_PDEATHSIG``); everywhere a watchdog thread checks
    once a second that the main process still runs.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent or not _pid_alive(main_pid, None):
                os._exit(1)

    if not _pid_alive(main_pid, None):
        os._exit(1)
    threading.Thread(target=watch, name="exouptake-watchdog", daemon=True).start()


def _worker_main(conn: Any, main_pid: int) -> None:
    """A local worker process: run the tasks sent over ``conn`` one at a time."""
    _die_with_parent(main_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        outcome = _run_task(task)
        try:
            conn.send(outcome)
        except (OSError, EOFError):
            return  # the main process is gone
        except Exception as exc:  # an outcome that does not pickle: report, do not die
            conn.send(_crashed(task, f"cannot send the result back ({type(exc).__name__}: {exc})"))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the system may have run out of memory)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


@dataclass(eq=False)
class _Worker:
    proc: Any
    conn: Any
    task: _Task | None = None


def _execute_processes(tasks: Sequence[_Task], workers: int) -> Iterator[dict[str, Any]]:
    """Local worker processes, one image at a time each.

    A worker that dies (out of memory, a crash in a codec) fails only the image it held: that
    image is retried once in a fresh worker, then recorded as failed; the other images go on.
    Workers end with the main process (see :func:`_die_with_parent`); leaving the generator
    (cancel, Ctrl-C, SIGTERM) stops them.
    """
    from collections import deque
    from multiprocessing.connection import wait

    ctx = _mp_context()
    n = min(workers, len(tasks))
    log.info("running %d image(s) on %d local worker processes", len(tasks), n)
    pending = deque(tasks)
    deaths: dict[str, int] = {}
    pool: list[_Worker] = []

    def start() -> _Worker:
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main, args=(child_conn, os.getpid()), name="exouptake-worker"
        )
        proc.start()
        child_conn.close()
        w = _Worker(proc, parent_conn)
        pool.append(w)
        return w

    def retire(w: _Worker) -> None:
        with contextlib.suppress(Exception):
            w.conn.close()
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        pool.remove(w)

    try:
        for _ in range(n):
            start()
        while pending or any(w.task is not None for w in pool):
            for w in [w for w in pool if w.task is None]:
                if not pending:
                    break
                task = pending.popleft()
                try:
                    w.conn.send(task)
                    w.task = task
                except (OSError, EOFError):  # died while idle: not this image's fault
                    pending.appendleft(task)
                    retire(w)
                    start()
            busy = [w for w in pool if w.task is not None]
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                outcome = None
                with contextlib.suppress(EOFError, OSError):
                    if w.conn.poll():
                        outcome = w.conn.recv()
                task, w.task = w.task, None
                if outcome is not None:
                    yield outcome
                    continue
                # no outcome: the process died while holding this image
                w.proc.join(5)
                why = _death(w.proc.exitcode)
                retire(w)
                deaths[task.name] = deaths.get(task.name, 0) + 1
                if deaths[task.name] == 1:
                    log.warning(
                        "%s: the worker process died while analysing %s (%s); retrying it "
                        "once in a fresh worker",
                        task.name,
                        task.path,
                        why,
                    )
                    pending.appendleft(task)
                else:
                    yield _crashed(
                        task,
                        f"the worker process died twice while analysing {task.path} ({why}); "
                        "too large for the memory? see --max-pixels",
                    )
                if pending:
                    start()
    finally:  # normal end, cancel, Ctrl-C or SIGTERM: stop every worker
        for w in list(pool):
            if w.task is None:
                with contextlib.suppress(Exception):
                    w.conn.send(None)
        deadline = time.monotonic() + 5
        for w in list(pool):
            if w.task is None:
                w.proc.join(max(deadline - time.monotonic(), 0))
            retire(w)


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
            # a task whose worker died is retried once, then fails alone (KilledWorker)
            "distributed.scheduler.allowed-failures": 1,
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


# -- publishing the merged tables as one unit -------------------------------------------------

_RESULTS = ".results"
_CURRENT = "current"
#: What one results generation holds; ``OUT/<name>`` points into the current generation.
_PUBLISHED = (
    "cells.csv",
    "cells.parquet",
    "spots.csv",
    "spots.parquet",
    "images.csv",
    "images.parquet",
    "columns.md",
    "failures.csv",
    "run.json",
    "labels",
    "qc",
)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` (so a power cut cannot tear the set)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_generation(out: Path) -> Path:
    """A fresh, empty results folder ``OUT/.results/.gen-<time>-<id>.tmp`` (not yet published)."""
    root = out / _RESULTS
    root.mkdir(exist_ok=True)
    gen = root / f".gen-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.tmp"
    gen.mkdir()
    return gen


def _place(src: Path, dst: Path, prev: Path | None) -> None:
    """Put a part's file ``src`` into a generation as ``dst``.

    The previous generation's copy ``prev`` is hard-linked when it is still that file (same
    size, not older); otherwise ``src`` is copied, never linked, so an edit of a published
    label image in place can never change the part it came from.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if prev is not None:
        with contextlib.suppress(OSError):
            s, d = src.stat(), prev.stat()
            if s.st_size == d.st_size and d.st_mtime_ns >= s.st_mtime_ns:
                os.link(prev, dst)
                return
    shutil.copyfile(src, dst)


def _publish(out: Path, gen: Path) -> None:
    """Make the finished generation ``gen`` the results of ``out`` in one atomic step.

    ``gen`` is fsync'ed, renamed to its final name, then ``OUT/.results/current`` (a relative
    symbolic link) is replaced by one pointing to it: ``rename`` is atomic, so a reader (or a
    kill) sees the old complete set or the new one. ``OUT/cells.csv`` etc. are fixed links
    through ``current``. Where symbolic links cannot be made, the files are renamed into ``OUT``
    one by one (each atomic, the set not) and a warning says so.
    """
    _fsync_tree(gen)
    final = gen.with_name(gen.name.removeprefix(".").removesuffix(".tmp"))
    os.replace(gen, final)
    root = out / _RESULTS
    cur = root / _CURRENT
    tmp_link = root / f".{_CURRENT}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.symlink(final.name, tmp_link, target_is_directory=True)
    except (OSError, NotImplementedError):
        _publish_by_renames(out, final)
        return
    old = _current_generation(out)
    if cur.exists() and not cur.is_symlink():  # a copy of a results folder made it a folder
        os.replace(cur, root / f".{_CURRENT}-copied-{uuid.uuid4().hex[:8]}.old")
    os.replace(tmp_link, cur)
    _fsync_dir(root)
    for name in _PUBLISHED:
        link = out / name
        want = f"{_RESULTS}/{_CURRENT}/{name}"
        if not (final / name).exists():  # e.g. failures.csv of an earlier run
            if link.is_symlink() or link.is_file():
                link.unlink()
            continue
        if link.is_symlink() and os.readlink(link) == want:
            continue
        if link.is_dir() and not link.is_symlink():  # a folder of an older version or of
            # `exouptake segment`: kept beside, never deleted
            aside = out / f"{name}.old-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(link, aside)
            log.warning("%s: the earlier folder %s/ was moved to %s/", out, name, aside.name)
        elif link.exists() or link.is_symlink():  # a table of an older version: replaced
            aside = root / f".legacy-{name}-{uuid.uuid4().hex[:8]}.old"
            os.replace(link, aside)
        tmp = out / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(want, tmp, target_is_directory=(final / name).is_dir())
        os.replace(tmp, link)
    _fsync_dir(out)
    if old is not None and old != final:
        shutil.rmtree(old, ignore_errors=True)
    _clean_results(out)


def _publish_by_renames(out: Path, final: Path) -> None:
    log.warning(
        "%s: symbolic links are not available here; the result files are replaced one by one "
        "(a kill during this step can leave tables of two runs side by side)",
        out,
    )
    for name in _PUBLISHED:
        src, dst = final / name, out / name
        if dst.is_dir() and not dst.is_symlink():
            aside = out / _RESULTS / f".old-{name}-{uuid.uuid4().hex[:8]}.old"
            os.replace(dst, aside)
        elif dst.exists() and not src.exists():
            dst.unlink()
        if src.exists():
            os.replace(src, dst)
    shutil.rmtree(final, ignore_errors=True)
    _clean_results(out)


def _current_generation(out: Path) -> Path | None:
    cur = out / _RESULTS / _CURRENT
    if not cur.is_symlink():
        return None
    return out / _RESULTS / os.readlink(cur)


def _clean_results(out: Path) -> None:
    """Remove unfinished or replaced generations and temporary files (run under the lock)."""
    root = out / _RESULTS
    current = _current_generation(out)
    if root.is_dir():
        for p in root.iterdir():
            if p.name == _CURRENT or (current is not None and p == current):
                continue
            log.info("removing %s (unfinished or replaced results)", p.name)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
    for p in out.glob(".*.tmp"):  # atomic_write / link temporaries of a killed run
        if p.is_file() or p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()


# -- merging -----------------------------------------------------------------------------------


class MixedPartsError(BatchUsageError):
    """A part was made with another config or input than the run merging it (exit code 2)."""


def merge_parts(
    out: str | Path,
    names: Sequence[str],
    config: AssayConfig,
    *,
    sample_sheet: pd.DataFrame | None = None,
    extra_run_info: dict[str, Any] | None = None,
    keys: Mapping[str, dict] | None = None,
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
    keys : mapping of str to dict, optional
        The key every part must carry (config hash, input file fingerprint ...), by name;
        without it, every part must at least have been made with ``config``'s analysis hash.

    Returns
    -------
    dict of str to Path
        ``cells``, ``spots``, ``images``, ``run`` (in ``out``; empty when nothing was merged).

    Raises
    ------
    MixedPartsError
        A part was made with another config or another version of its input file: the
        tables are not written (the previous ones stay).

    Notes
    -----
    The tables are written into a new generation folder ``OUT/.results/gen-...`` and published
    in one atomic step (see :func:`_publish`): readers, and a kill at any moment, see the
    previous complete set or the new one.
    """
    out = Path(out)
    with run_lock(out, "merge"):
        _clean_results(out)
        gen = _new_generation(out)
        try:
            paths = _merge_into(
                gen,
                out,
                names,
                config,
                sample_sheet=sample_sheet,
                extra_run_info=extra_run_info,
                keys=keys,
            )
            if not paths:
                return {}
            _publish(out, gen)
        finally:
            if gen.exists():
                shutil.rmtree(gen, ignore_errors=True)
        published = {k: out / p.name for k, p in paths.items()}
        report = refresh_report(out)
        if report is not None:
            published["report"] = report
    return published


def _merge_into(
    gen: Path,
    out: Path,
    names: Sequence[str],
    config: AssayConfig,
    *,
    sample_sheet: pd.DataFrame | None = None,
    extra_run_info: dict[str, Any] | None = None,
    keys: Mapping[str, dict] | None = None,
) -> dict[str, Path]:
    """Write the merged tables of ``out``'s parts into the unpublished folder ``gen``."""
    from .io import write_table
    from .pipeline import AnalysisResult, condition_for, finalize, images_table, run_info

    want_hash = analysis_hash(config)
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
        _check_part_key(name, pdir, part.get("key") or {}, keys, want_hash)
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
    paths["cells"] = write_table(cells, gen / "cells")[0]
    paths["spots"] = write_table(spots, gen / "spots")[0]
    paths["images"] = write_table(images, gen / "images")[0]
    from ._columns import write_columns_doc

    paths["columns"] = write_columns_doc(gen, {"cells": cells, "spots": spots, "images": images})
    prev = _current_generation(out)
    for r in results:  # only this run's images: labels of removed inputs do not linger
        pdir = files_of[r.image]
        for sub, name in (
            ("labels", f"{r.image}_cells.tif"),
            ("labels", f"{r.image}_nuclei.tif"),
            ("qc", f"{r.image}_overlay.png"),
        ):
            src = pdir / sub / name
            if src.is_file():
                _place(src, gen / sub / name, prev / sub / name if prev else None)
        for kind in ("tubes", "collagen"):  # the image-level readouts' QC pictures
            src = pdir / "qc" / f"{r.image}_{kind}.png"
            if src.is_file():
                name = src.name
                _place(src, gen / "qc" / name, prev / "qc" / name if prev else None)
    _write_merged_qc(gen, results, files_of)
    run = run_info(config, results)
    if extra_run_info:
        run.update(extra_run_info)
    from .pipeline import json_default

    (gen / "run.json").write_text(json.dumps(run, indent=2, default=json_default), encoding="utf-8")
    paths["run"] = gen / "run.json"
    return paths


def _check_part_key(
    name: str, pdir: Path, key: dict, keys: Mapping[str, dict] | None, want_hash: str
) -> None:
    """Refuse a part made with another config or another version of its input."""
    if keys is not None and name in keys:
        want = _jsonable(keys[name])
        if key == want:
            return
        what = [k for k in sorted(set(want) | set(key)) if want.get(k) != key.get(k)]
    elif key.get("analysis_sha256") == want_hash:
        return
    else:
        what = ["analysis_sha256"]
    raise MixedPartsError(
        f"{pdir}: this part of {name!r} was made with another "
        + (
            "config"
            if "analysis_sha256" in what
            else "version of the input file"
            if "input" in what
            else "labels, settings or package version"
        )
        + f" than this run ({', '.join(what)} differ); refusing to mix results. Was another "
        "run writing to the same --out? Rerun to redo that image"
    )


def refresh_report(out: str | Path) -> Path | None:
    """Rewrite ``out/report.html`` from the tables just written; on failure remove the old
    one (a stale report must not outlive a rerun) and log a warning."""
    from .report import write_report

    out = Path(out)
    try:
        return write_report(out)
    except Exception as exc:  # the tables are written: a report problem must not fail the run
        (out / "report.html").unlink(missing_ok=True)
        log.warning("report.html not written (%s); run `exouptake report %s` to retry", exc, out)
        return None


def _qc_plane(exo: np.ndarray) -> np.ndarray:
    """The EV channel as the QC overlay shows it: 2D (maximum projection), float32."""
    exo = np.asarray(exo)
    plane = exo.max(axis=0) if exo.ndim == 3 else exo
    k = _qc_step(plane.shape)
    return np.ascontiguousarray(plane[::k, ::k], dtype=np.float32)


def _qc_step(shape: tuple[int, ...], max_side: int = 2048) -> int:
    """Subsampling step of the saved QC plane: whole-well images are kept at <= 2048 px."""
    return max(1, -(-max(shape[-2:]) // max_side))


def _write_merged_qc(out: Path, results: Sequence[Any], files_of: dict[str, Path]) -> None:
    """``qc/<image>_overlay.png`` for every merged image: one contrast for the whole run,
    EV-positive cells marked (run-level calls), from each part's saved EV plane and labels."""
    from ._qc import run_contrast
    from .io import read_labels
    from .pipeline import write_qc

    planes = {
        r.image: files_of[r.image] / "qc" / f"{r.image}_exo.npy"
        for r in results
        if (files_of[r.image] / "qc" / f"{r.image}_exo.npy").is_file()
    }
    if not planes:
        return
    contrast = run_contrast(np.load(p, mmap_mode="r") for p in planes.values())
    for r in results:
        if r.image not in planes:
            continue
        pdir = files_of[r.image]
        cells_lab = read_labels(pdir / "labels" / f"{r.image}_cells.tif")
        nuc_path = pdir / "labels" / f"{r.image}_nuclei.tif"
        nuclei = read_labels(nuc_path) if nuc_path.is_file() else None
        k = _qc_step(cells_lab.shape)
        shown = r
        if k > 1:  # the saved plane was subsampled: subsample the labels, scale the puncta
            cells_lab = cells_lab[..., ::k, ::k]
            nuclei = None if nuclei is None else nuclei[..., ::k, ::k]
            spots = r.spots.copy()
            spots[["y", "x"]] = spots[["y", "x"]] / k
            ps = r.provenance.get("pixel_size_um")
            prov = {**r.provenance, "pixel_size_um": ps * k if ps else ps}
            shown = replace(r, spots=spots, provenance=prov)
        try:
            write_qc(
                out / "qc" / f"{r.image}_overlay.png",
                shown,
                contrast,
                exo=np.load(planes[r.image]),
                cells_labels=cells_lab,
                nuclei_labels=nuclei,
            )
        except Exception as exc:  # a QC picture must not fail the run
            log.warning("%s: QC overlay not written: %s", r.image, exc)


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


#: Memory budgeted per image pixel (all channels, planes and time points) when the default
#: pixel limit is worked out. Measured peak for the analysis with given labels: 38-66 bytes
#: per pixel (5-channel simulated 2048 x 2048 and 1024 x 1024 images); Cellpose needs more.
BYTES_PER_PIXEL = 100


def _available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable``), or None when unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def default_max_pixels(workers: int = 1) -> int | None:
    """Largest image a worker may decode by default: available memory / workers / 100 B.

    Returns None (no limit) when the available memory cannot be read.
    """
    avail = _available_memory()
    if avail is None:
        return None
    return max(int(avail / max(workers, 1) / BYTES_PER_PIXEL), 1 << 20)


def _pixel_limit(max_pixels: int | None, workers: int, scheduler: str | None) -> int | None:
    if max_pixels is None:
        if scheduler not in (None, "local"):
            return None  # a remote cluster's memory is not this machine's
        return default_max_pixels(workers)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise BatchUsageError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    return max_pixels


#: the pre-flight channel check reads (lazily) at most this many inputs
_PREFLIGHT_FILES = 5


def _preflight_channels(config: AssayConfig, files: Sequence[InputFile]) -> None:
    """Check the config's channel roles against the inputs' channels before any work: a role
    that none of the first few readable inputs has is a usage error (exit code 2), not one
    failure per image. One odd file among good ones fails on its own; unreadable files are
    left to the batch."""
    from .io import ImageReadError, read_image
    from .pipeline import check_channels

    first_error: ConfigError | None = None
    checked = None
    for f in files[:_PREFLIGHT_FILES]:
        try:
            image = read_image(f.path, axes=config.axes, lazy=True)
        except ImageReadError:
            continue
        try:
            check_channels(config, image.channel_names)
            return
        except ConfigError as exc:
            first_error = first_error or exc
            checked = checked or f.path.name
    if first_error is not None:
        raise BatchUsageError(f"{first_error} (checked on {checked}, the first input)") from None


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
    # console records go through the CLI's tqdm-safe handler (cli._TqdmSafeHandler); tqdm's
    # own logging redirect would add an unfiltered handler that prints every INFO line
    with _progress_bar(len(todo), tasks[0].kind if tasks else "", progress) as bar:
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


def _write_failures(folder: Path, result: BatchResult) -> None:
    path = folder / "failures.csv"
    if not result.failed:
        if path.exists():
            path.unlink()
        return
    paths = {f.name: str(f.path) for f in result.inputs}
    rows = [
        {"image": k, "path": paths.get(k, ""), "error": v} for k, v in sorted(result.failed.items())
    ]
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    log.error(
        "%d of %d image(s) failed; see %s", len(rows), len(result.inputs), result.out / path.name
    )


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
    max_pixels: int | None = None,
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
        Checked after each image; when True, images not started are dropped (with local
        worker processes, the ones in progress are stopped too), finished ones are kept and
        merged, and ``BatchResult.cancelled`` is set (a rerun resumes).
    max_pixels : int, optional
        Largest image (pixels of one file's series: C x Z x Y x X x T) a worker may decode;
        larger files fail with a clear message before any pixel is read. Default: from the
        memory available when the batch starts (see :func:`default_max_pixels`).

    Returns
    -------
    BatchResult

    Raises
    ------
    BatchUsageError
        Usage mistakes; :class:`RunLockedError` when another run uses ``out``;
        :class:`OutputError` when ``out`` cannot be written; :class:`MixedPartsError` when a
        part does not belong to this run.
    """
    t0 = time.perf_counter()
    if z_mode not in ("auto", "volume", "planes"):
        raise BatchUsageError(f"z_mode must be auto, volume or planes, got {z_mode!r}")
    with _output_errors(out):
        config, out, files = _prepare(inputs, config, out, labels, workers)
        config.check_roles("quantify" if labels is not None else "analyze")
        _preflight_channels(config, files)
        if labels is None and not config.image_level_only():
            _check_model(config, scheduler)
        sheet = sample_sheet
        if sample_sheet is not None and not isinstance(sample_sheet, pd.DataFrame):
            sheet = load_sample_sheet(sample_sheet)
        index = _LabelsIndex(labels)
        if labels is not None and any(
            _under(labels, out / name) for name in _PUBLISHED if (out / name).exists()
        ):
            raise BatchUsageError(
                f"--labels {str(labels)!r} lies in the results of --out {str(out)!r}, which "
                "this run replaces; use another --out"
            )
        limit = _pixel_limit(max_pixels, workers, scheduler)
        result = BatchResult(out=out, inputs=files)
        with run_lock(out, "analyze"), log_to_file(out / _LOG_NAME):
            executor = (
                f"dask:{scheduler}"
                if scheduler
                else f"processes:{workers}"
                if workers > 1
                else "serial"
            )
            log.info("exouptake analyze: %d input file(s) -> %s (%s)", len(files), out, executor)
            _clean_stale(out)
            _clean_results(out)
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
                    limit,
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
            finished = set(result.done) | set(result.skipped)
            ok = [
                f.name
                for f in files
                if f.name not in result.failed and (not result.cancelled or f.name in finished)
            ]
            gen = _new_generation(out)
            try:
                _write_failures(gen, result)
                paths = (
                    _merge_into(
                        gen,
                        out,
                        ok,
                        config,
                        sample_sheet=sheet,
                        keys={t.name: t.key for t in tasks},
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
                _publish(out, gen)
            finally:
                if gen.exists():
                    shutil.rmtree(gen, ignore_errors=True)
            result.tables = {k: out / p.name for k, p in paths.items()}
            if paths:
                report = refresh_report(out)
                if report is not None:
                    result.tables["report"] = report
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


@contextlib.contextmanager
def _output_errors(out: str | Path) -> Iterator[None]:
    """Turn a file-system error into one line naming the path (exit code 2 in the CLI)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not _under(exc.filename, out):
            raise  # a missing input: its own message
        raise _output_error(exc, Path(out)) from None


def _under(path: Any, folder: str | Path) -> bool:
    if path is None:
        return False
    try:
        p = Path(os.path.abspath(os.fspath(path)))
        f = Path(os.path.abspath(os.fspath(folder)))
    except (TypeError, ValueError):
        return False
    return p == f or f in p.parents


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
    max_pixels: int | None = None,
) -> BatchResult:
    """Segment many images: ``out/labels/<image>_cells.tif`` (and ``_nuclei.tif``), resumable.

    Stacks are split as in :func:`analyze_batch` (series and time points; z-stacks are
    segmented as volumes). Parameters as in :func:`analyze_batch`.
    """
    t0 = time.perf_counter()
    with _output_errors(out):
        config, out, files = _prepare(inputs, config, out, None, workers)
        config.check_roles("segment")
        _check_model(config, scheduler)
        result = BatchResult(out=out, inputs=files)
        none = _LabelsIndex(None)
        limit = _pixel_limit(max_pixels, workers, scheduler)
        if (out / _RESULTS).exists():
            raise BatchUsageError(
                f"--out {str(out)!r} holds results of `exouptake analyze`; write the "
                "segmentation to another folder"
            )
        with run_lock(out, "segment"), log_to_file(out / _LOG_NAME):
            log.info("exouptake segment: %d input file(s) -> %s", len(files), out)
            tasks = [
                _Task(
                    "segment",
                    f.name,
                    str(f.path),
                    str(out.resolve()),
                    config,
                    _key("segment", f, config, none, "volume"),
                    max_pixels=limit,
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
