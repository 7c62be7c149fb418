"""What makes a part reusable: its key (config hash, input and label fingerprints), the
manifest of finished files, and the task a worker runs for one input file."""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AssayConfig, config_hash
from .inputs import InputFile
from .layout import _MANIFEST, PART_VERSION, _part_dir

__all__ = ["analysis_hash"]


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
    from .._version import __version__

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
