"""Shareable, verifiable dataset bundles (``exouptake dataset pack/verify/validate/fetch``).

A bundle is a folder, or a ``.zip`` of that folder's contents, laid out as (see
``docs/datasets.md``)::

    dataset.yaml            what it is: name, description, licence, authors, channel roles, pixel
                            size, the assay config, how the reference was analysed, the software
                            that made it, tolerances per metric
    checksums.sha256        SHA-256 of every other file, ``sha256sum -c`` format
    config.yaml             the same assay config as a file (for ``exouptake analyze --config``)
    images/<name>.ome.tif   the images, OME-TIFF with channel names and pixel size
    labels/<name>_cells.tif, labels/<name>_nuclei.tif     optional ground-truth labels
    truth_spots.csv, truth_cells.csv                      optional ground-truth puncta / counts
    conditions.csv, README.md, LICENSE*                   optional
    analysis_labels/<name>_cells.tif                      optional labels the analysis used
    reference/              optional reference results: cells.csv, images.csv, spots.csv,
                            run.json (+ labels/ when the reference segmented)

Opening a bundle never writes outside its target folder and never executes anything: zip
members with absolute paths, ``..``, backslashes, links or special files, encrypted members, too
many or too large members are refused before anything is extracted; ``dataset.yaml`` is read with
``yaml.safe_load``; a folder bundle containing a symbolic link fails verification.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "Bundle",
    "BundleValidation",
    "DatasetError",
    "analyze_bundle",
    "compute_checksums",
    "fetch_bundle",
    "main_dataset",
    "open_bundle",
    "pack_bundle",
    "read_bundle",
    "safe_extract",
    "validate_bundle",
    "verify_bundle",
    "write_bundle_metadata",
    "write_checksums",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "exouptake-dataset"
BUNDLE_FORMAT_VERSION = 1
METADATA_FILE = "dataset.yaml"
CHECKSUM_FILE = "checksums.sha256"
REFERENCE_DIR = "reference"
ANALYSIS_LABELS_DIR = "analysis_labels"

#: Largest single member of a zip bundle, bytes (uncompressed).
MAX_MEMBER_BYTES = 4 * 1024**3
#: Largest total uncompressed size of a zip bundle, bytes.
MAX_TOTAL_BYTES = 64 * 1024**3
#: Most members in a zip bundle.
MAX_MEMBERS = 100_000
#: Largest compression ratio (uncompressed / compressed) of a zip member of at least
#: ``RATIO_MIN_BYTES``, and of the whole archive when it unpacks to that much. Our own TIFFs are
#: compressed inside (ratio about 1); deflate's own maximum is about 1,030.
MAX_RATIO = 100.0
RATIO_MIN_BYTES = 16 * 1024**2
#: Largest download of ``dataset fetch``, bytes.
MAX_DOWNLOAD_BYTES = 16 * 1024**3
#: Largest dataset.yaml / checksums.sha256, bytes (they are small text files).
MAX_TEXT_BYTES = 8 * 1024**2

IMAGE_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
_LABEL_SUFFIXES = ("_cells", "_nuclei", "_labels", "_masks")
_EXTRA_FILES = (
    "README.md",
    "README.txt",
    "README",
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "conditions.csv",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DatasetError(ValueError):
    """A bundle that cannot be made, opened, trusted or fetched: the message says which file."""


# --------------------------------------------------------------------------------------------
# paths and checksums
# --------------------------------------------------------------------------------------------
def _check_relpath(path: Any, what: str) -> str:
    """A safe relative POSIX path inside a bundle, or DatasetError."""
    if not isinstance(path, str) or not path:
        raise DatasetError(f"{what}: expected a relative path, got {path!r}")
    if any(c in path for c in "\x00\n\r"):
        raise DatasetError(f"{what}: path {path!r} contains control characters")
    if "\\" in path:
        raise DatasetError(f"{what}: path {path!r} contains a backslash")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise DatasetError(f"{what}: absolute path {path!r} is not allowed")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise DatasetError(f"{what}: path {path!r} must not contain '..', '.' or empty parts")
    return path


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, links or special files) under ``root`` as sorted relative POSIX paths."""
    files, bad = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for name in list(dirnames):
            if (d / name).is_symlink():
                bad.append((d / name).relative_to(root).as_posix())
                dirnames.remove(name)
        for name in filenames:
            p = d / name
            rel = p.relative_to(root).as_posix()
            mode = p.lstat().st_mode
            if stat.S_ISREG(mode):
                files.append(rel)
            else:
                bad.append(rel)
    return sorted(files), sorted(bad)


def compute_checksums(root: str | Path) -> dict[str, str]:
    """SHA-256 (hex) of every regular file under ``root`` except ``checksums.sha256``.

    Returns
    -------
    dict
        Relative POSIX path -> hex digest, sorted by path.

    Raises
    ------
    DatasetError
        When the folder holds a symbolic link or special file.
    """
    root = Path(root)
    files, bad = _walk(root)
    if bad:
        raise DatasetError(
            f"{root}: links and special files are not allowed in a bundle: {', '.join(bad)}"
        )
    return {rel: _sha256(root / rel) for rel in files if rel != CHECKSUM_FILE}


def write_checksums(root: str | Path) -> Path:
    """Write ``checksums.sha256`` (``sha256sum -c`` format) for every file under ``root``."""
    root = Path(root)
    sums = compute_checksums(root)
    text = "".join(f"{digest}  {rel}\n" for rel, digest in sums.items())
    path = root / CHECKSUM_FILE
    path.write_text(text, encoding="utf-8")
    return path


def _read_checksums(root: Path, problems: list[str]) -> dict[str, str]:
    path = root / CHECKSUM_FILE
    if not path.is_file() or path.is_symlink():
        problems.append(f"{CHECKSUM_FILE}: missing")
        return {}
    if path.stat().st_size > MAX_TEXT_BYTES:
        problems.append(f"{CHECKSUM_FILE}: larger than {MAX_TEXT_BYTES} bytes")
        return {}
    sums: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not m:
            problems.append(f"{CHECKSUM_FILE}: line {i} is not '<sha256>  <path>'")
            continue
        digest, rel = m.group(1).lower(), m.group(2)
        try:
            _check_relpath(rel, f"{CHECKSUM_FILE} line {i}")
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        if rel in sums:
            problems.append(f"{CHECKSUM_FILE}: {rel} is listed twice")
        sums[rel] = digest
    return sums


# --------------------------------------------------------------------------------------------
# zip: safe extraction and deterministic writing
# --------------------------------------------------------------------------------------------
def _check_members(
    zf: zipfile.ZipFile,
    max_member_bytes: int,
    max_total_bytes: int,
    max_members: int,
    max_ratio: float = MAX_RATIO,
) -> list[tuple[zipfile.ZipInfo, str]]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise DatasetError(f"zip has {len(infos)} members, more than the limit {max_members}")
    out, seen, total = [], set(), 0
    for info in infos:
        name = info.filename
        is_dir = name.endswith("/")
        rel = name[:-1] if is_dir else name
        _check_relpath(rel, f"zip member {name!r}")
        mode = info.external_attr >> 16
        ftype = stat.S_IFMT(mode)
        if ftype == stat.S_IFLNK:
            raise DatasetError(f"zip member {name!r} is a symbolic link; links are not allowed")
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DatasetError(f"zip member {name!r} is a special file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise DatasetError(f"zip member {name!r} is encrypted")
        if info.file_size > max_member_bytes:
            raise DatasetError(
                f"zip member {name!r} is {info.file_size} bytes, more than the "
                f"per-file limit {max_member_bytes}"
            )
        if info.file_size >= RATIO_MIN_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise DatasetError(
                f"zip member {name!r} would unpack {info.file_size} bytes from "
                f"{info.compress_size} (ratio {info.file_size / max(info.compress_size, 1):.0f}, "
                f"limit {max_ratio:.0f}); refusing a possible zip bomb"
            )
        total += info.file_size
        if total > max_total_bytes:
            raise DatasetError(f"zip holds more than the total limit of {max_total_bytes} bytes")
        key = rel.casefold()
        if key in seen:
            raise DatasetError(f"zip member {name!r} appears twice (names compared ignoring case)")
        seen.add(key)
        out.append((info, rel))
    files = {rel for info, rel in out if not info.filename.endswith("/")}
    for rel in files:  # a file may not also be a folder of another member
        parts = rel.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in files:
                raise DatasetError(f"zip member {rel!r} lies under a file of the same name")
    return out


def safe_extract(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
    max_ratio: float = MAX_RATIO,
    listed_only: bool = False,
) -> Path:
    """Extract a zip into ``dest`` after checking every member; nothing is written elsewhere.

    Every ``ZipInfo`` is checked before anything is written: absolute paths, drive letters,
    ``..``/``.``/empty parts, backslashes, symbolic links and other special files, encrypted
    members, duplicate names, and sizes (per member, total, member count). Members are streamed
    into a fresh staging folder beside ``dest`` (created with ``O_EXCL``, mode 0644, no execute
    bits), byte counts are enforced while streaming, and the staging folder is renamed onto
    ``dest`` only when everything succeeded.

    Parameters
    ----------
    zip_path : str or Path
    dest : str or Path
        Target folder; must not exist or be empty.
    max_member_bytes, max_total_bytes, max_members : int
        Limits (uncompressed bytes, member count). The total must also fit the free space
        of the target's disk.
    max_ratio : float
        Largest compression ratio of a member (and of the archive) unpacking to at least
        ``RATIO_MIN_BYTES`` (16 MiB).
    listed_only : bool
        A bundle: the zip must hold ``checksums.sha256`` (at its top or in its one top
        folder), and every other file member must be listed in it; checked before anything
        is extracted.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DatasetError
        When the archive is not a zip, breaks a rule (the message names the member), or
        ``dest`` is not empty.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise DatasetError(f"{dest}: extraction target must not exist or be an empty folder")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{zip_path}: not a readable zip file ({exc})") from None
    try:
        members = _check_members(zf, max_member_bytes, max_total_bytes, max_members, max_ratio)
        total = sum(info.file_size for info, _ in members)
        archive = max(Path(zip_path).stat().st_size, 1)
        if total >= RATIO_MIN_BYTES and total > max_ratio * archive:
            raise DatasetError(
                f"{zip_path}: would unpack {total} bytes from {archive} (ratio "
                f"{total / archive:.0f}, limit {max_ratio:.0f}); refusing a possible zip bomb"
            )
        if listed_only:
            _check_listed(zf, members)
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        if total > free:
            raise DatasetError(
                f"{zip_path}: unpacks to {total} bytes but {dest.parent} has {free} bytes free"
            )
    except zipfile.BadZipFile as exc:
        zf.close()
        raise DatasetError(f"{zip_path}: corrupt zip ({exc})") from None
    except BaseException:
        zf.close()
        raise
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    base = staging.resolve()
    try:
        with zf:
            for info, rel in members:
                target = staging / rel
                if base not in target.resolve().parents:  # defence in depth
                    raise DatasetError(f"zip member {info.filename!r} escapes the target folder")
                if info.filename.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with zf.open(info) as src, os.fdopen(fd, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > info.file_size or written > max_member_bytes:
                            raise DatasetError(
                                f"zip member {info.filename!r} is larger than it "
                                "declares; refusing it"
                            )
                        out.write(block)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is for sharing
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"{zip_path}: corrupt zip ({exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _check_listed(zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, str]]) -> None:
    """Every file member of a bundle zip is listed in its checksums.sha256 (before extracting)."""
    files = [(info, rel) for info, rel in members if not info.filename.endswith("/")]
    roots = [rel[: -len(CHECKSUM_FILE)] for _, rel in files if rel.split("/")[-1] == CHECKSUM_FILE]
    roots = [r for r in roots if r.count("/") <= 1]
    if len(roots) != 1:
        raise DatasetError(
            f"zip holds {'no' if not roots else 'more than one'} {CHECKSUM_FILE} at its top; "
            "not a dataset bundle"
        )
    prefix = roots[0]
    info = zf.getinfo(prefix + CHECKSUM_FILE)
    if info.file_size > MAX_TEXT_BYTES:
        raise DatasetError(f"{CHECKSUM_FILE}: larger than {MAX_TEXT_BYTES} bytes")
    with zf.open(info) as fh:
        text = fh.read(MAX_TEXT_BYTES + 1).decode("utf-8", errors="replace")
    listed = set()
    for line in text.splitlines():
        m = re.match(r"^[0-9a-fA-F]{64} [ *](.+)$", line)
        if m:
            listed.add(prefix + m.group(1))
    for _, rel in files:
        if rel != prefix + CHECKSUM_FILE and rel not in listed:
            raise DatasetError(
                f"zip member {rel!r} is not listed in {CHECKSUM_FILE}; refusing the bundle "
                "before extracting anything"
            )


def _write_zip(root: Path, out: Path) -> Path:
    """Zip ``root``'s files (deterministic order and timestamps, no execute bits)."""
    files, bad = _walk(root)
    if bad:
        raise DatasetError(f"{root}: links are not allowed in a bundle: {', '.join(bad)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for rel in files:
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(root / rel, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _cache_dir() -> Path:
    env = os.environ.get("EXOUPTAKE_CACHE_DIR")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("napari-exouptake"))


# --------------------------------------------------------------------------------------------
# metadata schema
# --------------------------------------------------------------------------------------------
def _load_yaml(path: Path) -> Any:
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DatasetError(f"{path.name}: larger than {MAX_TEXT_BYTES} bytes")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path.name}: not valid YAML ({exc})") from None


def _schema_problems(meta: Any) -> list[str]:
    """Every problem with a parsed dataset.yaml (empty list: valid)."""
    from .config import AssayConfig, ConfigError
    from .validation import Tolerance

    p: list[str] = []
    f = METADATA_FILE
    if not isinstance(meta, dict):
        return [f"{f}: must be a mapping of keys, got {type(meta).__name__}"]
    if meta.get("format") != BUNDLE_FORMAT:
        p.append(f"{f}: format must be {BUNDLE_FORMAT!r}, got {meta.get('format')!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        p.append(f"{f}: format_version must be a positive integer, got {version!r}")
    elif version > BUNDLE_FORMAT_VERSION:
        p.append(
            f"{f}: format_version {version} is newer than this napari-exouptake reads "
            f"({BUNDLE_FORMAT_VERSION}); update napari-exouptake"
        )
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        p.append(f"{f}: name must be letters, digits, '.', '_' or '-' (got {name!r})")
    for key in ("description", "licence"):
        if not isinstance(meta.get(key), str) or not meta.get(key).strip():
            p.append(f"{f}: {key} must be a non-empty text")
    authors = meta.get("authors")
    if not isinstance(authors, list) or not all(isinstance(a, str) for a in authors):
        p.append(f"{f}: authors must be a list of names")
    images = meta.get("images")
    if not isinstance(images, list) or not images:
        p.append(f"{f}: images must be a non-empty list of paths")
    else:
        for i, img in enumerate(images):
            try:
                _check_relpath(img, f"{f}: images[{i}]")
            except DatasetError as exc:
                p.append(str(exc))
    channels = meta.get("channels")
    if not isinstance(channels, list) or not all(
        isinstance(c, dict) and isinstance(c.get("index"), int) and isinstance(c.get("name"), str)
        for c in channels
    ):
        p.append(f"{f}: channels must be a list of {{index, name, role}}")
    px = meta.get("pixel_size_um")
    if px is not None and (isinstance(px, bool) or not isinstance(px, (int, float)) or px <= 0):
        p.append(f"{f}: pixel_size_um must be a positive number or null, got {px!r}")
    try:
        AssayConfig.from_dict(meta.get("assay_config"))
    except ConfigError as exc:
        p.append(f"{f}: assay_config: {exc}")
    analysis = meta.get("analysis")
    labels = analysis.get("labels") if isinstance(analysis, dict) else None
    if not isinstance(labels, str) or not (
        labels in ("segmentation", "ground_truth") or labels == ANALYSIS_LABELS_DIR
    ):
        p.append(
            f"{f}: analysis.labels must be segmentation, ground_truth or "
            f"{ANALYSIS_LABELS_DIR}, got {labels!r}"
        )
    gt = meta.get("ground_truth")
    if gt is not None and not isinstance(gt, dict):
        p.append(f"{f}: ground_truth must be a mapping or null")
    elif isinstance(gt, dict):
        for key, value in gt.items():
            if key not in ("cell_labels", "nucleus_labels", "spots", "cells"):
                p.append(
                    f"{f}: ground_truth.{key} is not a known key (cell_labels, "
                    "nucleus_labels, spots, cells)"
                )
            elif value is not None:
                try:
                    _check_relpath(str(value).replace("{image}", "x"), f"{f}: ground_truth.{key}")
                except DatasetError as exc:
                    p.append(str(exc))
    if labels == "ground_truth" and not (isinstance(gt, dict) and gt.get("cell_labels")):
        p.append(f"{f}: analysis.labels is ground_truth but ground_truth.cell_labels is not set")
    ref = meta.get("reference")
    if ref is not None and not (isinstance(ref, dict) and isinstance(ref.get("folder"), str)):
        p.append(f"{f}: reference must be null or a mapping with folder, software, ...")
    elif isinstance(ref, dict):
        try:
            _check_relpath(ref["folder"], f"{f}: reference.folder")
        except DatasetError as exc:
            p.append(str(exc))
    tol = meta.get("tolerances", {})
    if not isinstance(tol, dict):
        p.append(f"{f}: tolerances must be a mapping metric -> {{rtol, atol, min_fraction, min}}")
    else:
        for metric, value in tol.items():
            try:
                Tolerance.from_dict(value, str(metric))
            except ValueError as exc:
                p.append(f"{f}: tolerances: {exc}")
    for key in ("config_file", "conditions"):
        if meta.get(key) is not None:
            try:
                _check_relpath(meta[key], f"{f}: {key}")
            except DatasetError as exc:
                p.append(str(exc))
    return p


def _image_name(rel: str) -> str:
    base = rel.rsplit("/", 1)[-1]
    for suffix in IMAGE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base.rsplit(".", 1)[0]


# --------------------------------------------------------------------------------------------
# the Bundle object
# --------------------------------------------------------------------------------------------
@dataclass
class Bundle:
    """An opened (and verified) dataset bundle.

    Attributes
    ----------
    root : Path
        Folder holding ``dataset.yaml`` (for a zip: where it was extracted).
    meta : dict
        Parsed ``dataset.yaml``.
    source : Path
        What was opened (the folder or the zip).
    """

    root: Path
    meta: dict[str, Any]
    source: Path
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    # -- descriptive ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))

    @property
    def image_names(self) -> list[str]:
        """Image names (file stems without ``.ome.tif``), the ``image`` column of tables."""
        return [_image_name(rel) for rel in self.meta["images"]]

    @property
    def image_paths(self) -> dict[str, Path]:
        """Image name -> OME-TIFF path."""
        return {_image_name(rel): self.root / rel for rel in self.meta["images"]}

    @property
    def channel_names(self) -> list[str]:
        return [str(c["name"]) for c in sorted(self.meta["channels"], key=lambda c: c["index"])]

    @property
    def channel_roles(self) -> dict[str, str | None]:
        """Channel name -> role (``nucleus``, ``cell``, ``exosome``, a marker name) or None."""
        return {str(c["name"]): c.get("role") for c in self.meta["channels"]}

    @property
    def pixel_size_um(self) -> float | None:
        px = self.meta.get("pixel_size_um")
        return float(px) if px is not None else None

    @property
    def config(self):
        """The bundle's :class:`~napari_exouptake.config.AssayConfig`."""
        from .config import AssayConfig

        return AssayConfig.from_dict(self.meta["assay_config"])

    @property
    def analysis_labels_mode(self) -> str:
        """``segmentation``, ``ground_truth`` or ``analysis_labels`` (how the reference ran)."""
        return str(self.meta["analysis"]["labels"])

    @property
    def tolerances(self) -> dict[str, Any]:
        """Per-metric tolerances (defaults for the analysis mode when the bundle gives none)."""
        from .validation import DEFAULT_TOLERANCES, DEFAULT_TOLERANCES_SEGMENTATION

        tol = self.meta.get("tolerances")
        if tol:
            return dict(tol)
        if self.analysis_labels_mode == "segmentation":
            return dict(DEFAULT_TOLERANCES_SEGMENTATION)
        return dict(DEFAULT_TOLERANCES)

    @property
    def reference_dir(self) -> Path | None:
        ref = self.meta.get("reference")
        return self.root / ref["folder"] if isinstance(ref, dict) else None

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.meta.get("ground_truth"))

    # -- data ----------------------------------------------------------------------------------
    def read_image(self, name: str):
        """The image ``name`` as :class:`~napari_exouptake.io.ImageData` ``(C, Z, Y, X)``."""
        from .io import read_image

        paths = self.image_paths
        if name not in paths:
            raise KeyError(f"bundle {self.name!r} has no image {name!r}; it has {', '.join(paths)}")
        return read_image(paths[name], axes=self.config.axes)

    def _gt_path(self, key: str, name: str) -> Path | None:
        gt = self.meta.get("ground_truth") or {}
        pattern = gt.get(key)
        if not pattern:
            return None
        p = self.root / str(pattern).replace("{image}", name)
        return p if p.is_file() else None

    def truth_cell_labels(self, name: str) -> np.ndarray | None:
        """Ground-truth cell labels ``(Y, X)`` or ``(Z, Y, X)`` of ``name`` (None if absent)."""
        from .io import read_labels

        p = self._gt_path("cell_labels", name)
        return read_labels(p) if p is not None else None

    def truth_nucleus_labels(self, name: str) -> np.ndarray | None:
        """Ground-truth nucleus labels of ``name`` (None if absent)."""
        from .io import read_labels

        p = self._gt_path("nucleus_labels", name)
        return read_labels(p) if p is not None else None

    def truth_spots(self, name: str | None = None) -> pd.DataFrame | None:
        """True puncta (``image``, ``y``, ``x`` [``z``] ...) of one image or all; None if absent."""
        gt = self.meta.get("ground_truth") or {}
        if not gt.get("spots"):
            return None
        df = pd.read_csv(self.root / gt["spots"])
        return df if name is None else df[df["image"].astype(str) == name].reset_index(drop=True)

    def truth_cells(self) -> pd.DataFrame | None:
        """True per-cell table (``image``, ``cell_id``, ``n_spots``, ...) or None."""
        gt = self.meta.get("ground_truth") or {}
        return pd.read_csv(self.root / gt["cells"]) if gt.get("cells") else None

    def analysis_labels(self, name: str) -> tuple[Path | None, Path | None]:
        """(cell labels, nucleus labels) paths the analysis uses for ``name`` (None: segment)."""
        mode = self.analysis_labels_mode
        if mode == "segmentation":
            return None, None
        if mode == "ground_truth":
            cells = self._gt_path("cell_labels", name)
            if cells is None:
                raise DatasetError(f"bundle {self.name!r}: no ground-truth labels for {name}")
            return cells, self._gt_path("nucleus_labels", name)
        d = self.root / ANALYSIS_LABELS_DIR
        cells = d / f"{name}_cells.tif"
        if not cells.is_file():
            raise DatasetError(
                f"bundle {self.name!r}: {ANALYSIS_LABELS_DIR}/{name}_cells.tif is missing"
            )
        nuc = d / f"{name}_nuclei.tif"
        return cells, (nuc if nuc.is_file() else None)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Delete the temporary extraction folder of a zip bundle (no-op for folders)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _find_root(folder: Path) -> Path:
    if (folder / METADATA_FILE).is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    others = [p for p in folder.iterdir() if not p.is_dir()]
    if len(subs) == 1 and not others and (subs[0] / METADATA_FILE).is_file():
        return subs[0]
    raise DatasetError(f"{folder}: no {METADATA_FILE}; is this a dataset bundle?")


def open_bundle(
    path: str | Path, *, extract_to: str | Path | None = None, verify: bool = True
) -> Bundle:
    """Open a bundle folder or ``.zip`` (zips are extracted safely, see :func:`safe_extract`).

    Parameters
    ----------
    path : str or Path
        Bundle folder or zip.
    extract_to : str or Path, optional
        Where to extract a zip (must not exist or be empty). Default: a temporary folder that
        :meth:`Bundle.close` (or leaving a ``with`` block) deletes.
    verify : bool, default True
        Check every checksum and the schema first.

    Raises
    ------
    DatasetError
        When the bundle is missing, unsafe, or fails verification (the message lists problems).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such bundle (folder or .zip)")
    tmp = None
    if path.is_file():
        if extract_to is None:
            tmp = tempfile.TemporaryDirectory(prefix="exouptake-bundle-")
            target = Path(tmp.name) / "bundle"
        else:
            target = Path(extract_to)
        try:
            safe_extract(path, target, listed_only=True)
            root = _find_root(target)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
            raise
    else:
        root = _find_root(path)
    try:
        if verify:
            problems = _verify_root(root)
            if problems:
                raise DatasetError(f"{path}: bundle failed verification: " + "; ".join(problems))
        meta = _load_yaml(root / METADATA_FILE)
        if not verify:
            problems = _schema_problems(meta)
            if problems:
                raise DatasetError(f"{path}: " + "; ".join(problems))
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root=root, meta=meta, source=path, _tmp=tmp)


def read_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle for viewing (e.g. by the napari reader).

    A zip is extracted once into the cache folder (``$EXOUPTAKE_CACHE_DIR`` or pooch's OS cache
    ``napari-exouptake/bundles/<zip sha256[:16]>``) and reused while it verifies, so the
    returned :class:`Bundle` stays valid after the call.

    Returns
    -------
    Bundle
        ``image_names``, ``read_image(name)``, ``channel_names``, ``channel_roles``,
        ``pixel_size_um``, ``truth_cell_labels(name)``, ``truth_nucleus_labels(name)``,
        ``truth_spots(name)``, ``truth_cells()``, ``config``.
    """
    path = Path(path)
    if path.is_file():
        target = _cache_dir() / "bundles" / _sha256(path)[:16]
        if target.is_dir() and any(target.iterdir()):
            try:
                return open_bundle(target)
            except DatasetError:
                log.warning("cached extraction %s failed verification; extracting again", target)
                shutil.rmtree(target)
        return open_bundle(path, extract_to=target)
    return open_bundle(path)


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------
def _verify_root(root: Path) -> list[str]:
    problems: list[str] = []
    files, bad = _walk(root)
    for rel in bad:
        problems.append(f"{rel}: links and special files are not allowed in a bundle")
    sums = _read_checksums(root, problems)
    present = set(files) - {CHECKSUM_FILE}
    for rel, digest in sums.items():
        if rel not in present:
            problems.append(f"{rel}: listed in {CHECKSUM_FILE} but missing")
            continue
        actual = _sha256(root / rel)
        if actual != digest:
            problems.append(
                f"{rel}: SHA-256 mismatch (expected {digest[:12]}..., "
                f"got {actual[:12]}...): the file was changed or corrupted"
            )
    for rel in sorted(present - set(sums)):
        problems.append(f"{rel}: not listed in {CHECKSUM_FILE}")
    if METADATA_FILE not in present:
        problems.append(f"{METADATA_FILE}: missing")
        return problems
    try:
        meta = _load_yaml(root / METADATA_FILE)
    except DatasetError as exc:
        problems.append(str(exc))
        return problems
    schema = _schema_problems(meta)
    problems += schema
    if schema:
        return problems
    # every referenced file exists and is checksummed
    refs = list(meta["images"])
    for key in ("config_file", "conditions"):
        if meta.get(key):
            refs.append(meta[key])
    gt = meta.get("ground_truth") or {}
    for key in ("spots", "cells"):
        if gt.get(key):
            refs.append(gt[key])
    names = [_image_name(r) for r in meta["images"]]
    if len(set(names)) != len(names):
        problems.append(f"{METADATA_FILE}: image names are not unique")
    for key in ("cell_labels",) if meta["analysis"]["labels"] == "ground_truth" else ():
        refs += [gt[key].replace("{image}", n) for n in names]
    if meta["analysis"]["labels"] == ANALYSIS_LABELS_DIR:
        refs += [f"{ANALYSIS_LABELS_DIR}/{n}_cells.tif" for n in names]
    ref = meta.get("reference")
    if isinstance(ref, dict):
        refs += [f"{ref['folder']}/cells.csv", f"{ref['folder']}/images.csv"]
    for rel in refs:
        if rel not in sums:
            problems.append(
                f"{rel}: named in {METADATA_FILE} but not in the bundle's {CHECKSUM_FILE}"
            )
    cfg_file = meta.get("config_file")
    if cfg_file and cfg_file in sums and cfg_file in present:
        from .config import AssayConfig, ConfigError, config_hash, load_config

        try:
            same = config_hash(load_config(root / cfg_file)) == config_hash(
                AssayConfig.from_dict(meta["assay_config"])
            )
        except ConfigError as exc:
            problems.append(f"{cfg_file}: {exc}")
        else:
            if not same:
                problems.append(f"{cfg_file}: differs from assay_config in {METADATA_FILE}")
    return problems


def verify_bundle(path: str | Path) -> list[str]:
    """Check a bundle: every SHA-256, no unlisted or missing file, no link, the schema.

    Parameters
    ----------
    path : str or Path
        Bundle folder or zip (a zip is extracted safely into a temporary folder first).

    Returns
    -------
    list of str
        Problems, each naming its file; empty when the bundle is intact.

    Raises
    ------
    DatasetError
        When the path does not exist or a zip is unsafe or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such bundle (folder or .zip)")
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="exouptake-verify-") as tmp:
            target = Path(tmp) / "bundle"
            safe_extract(path, target, listed_only=True)
            return _verify_root(_find_root(target))
    return _verify_root(_find_root(path))


# --------------------------------------------------------------------------------------------
# analysis of a bundle
# --------------------------------------------------------------------------------------------
Progress = Callable[[str], None]


def analyze_bundle(bundle: Bundle, *, progress: Progress | None = None) -> list:
    """Run the bundle's analysis (its config, its labels mode) on every image.

    Returns
    -------
    list of AnalysisResult
        After :func:`napari_exouptake.pipeline.finalize` over the whole bundle.
    """
    from .pipeline import analyze_image, finalize

    config = bundle.config
    results = []
    for i, (name, path) in enumerate(bundle.image_paths.items(), 1):  # one image per iteration
        cells, nuclei = bundle.analysis_labels(name)
        try:
            r = analyze_image(path, config, labels=cells, nuclei=nuclei, name=name)
        except Exception as exc:
            if type(exc).__name__ == "ModelNotAvailableError":
                raise DatasetError(
                    f"{name}: segmentation model not available ({exc}); give labels instead "
                    "(pack with labels='ground_truth' or a labels folder)"
                ) from None
            raise
        results.append(r)
        if progress is not None:
            progress(
                f"[{i}/{len(bundle.image_paths)}] {name}: {len(r.cells)} cells, "
                f"{len(r.spots)} puncta"
            )
    return finalize(results, config)


def _relativise(obj: Any, roots: Sequence[str]) -> Any:
    """Replace absolute paths under ``roots`` by bundle-relative ones (no local paths leak)."""
    if isinstance(obj, dict):
        return {k: _relativise(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relativise(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            if obj.startswith(r + os.sep) or obj.startswith(r + "/"):
                return obj[len(r) + 1 :].replace(os.sep, "/")
    return obj


def _write_reference(results: Sequence, root: Path, config, labels_given: bool) -> dict:
    from .pipeline import write_outputs

    ref = root / REFERENCE_DIR
    if ref.exists():
        shutil.rmtree(ref)
    write_outputs(results, ref, config, overlays=False)
    for stem in ("cells", "spots", "images"):  # the reference keeps the CSV tables only
        with contextlib.suppress(FileNotFoundError):
            (ref / f"{stem}.parquet").unlink()
    if labels_given:  # the labels are the given ones: no need to store them twice
        shutil.rmtree(ref / "labels", ignore_errors=True)
    run = json.loads((ref / "run.json").read_text())
    roots = sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    run = _relativise(run, roots)
    for key in ("platform",):
        run.pop(key, None)
    (ref / "run.json").write_text(json.dumps(run, indent=2, sort_keys=False))
    devices = sorted(
        {str(r.provenance.get("segmentation", {}).get("device", "none")) for r in results}
    )
    return {
        "folder": REFERENCE_DIR,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": run.get("versions", {}),
        "python": run.get("python"),
        "config_sha256": run.get("config_sha256"),
        "device": ", ".join(devices) if not labels_given else "none (labels given)",
        "models": sorted(
            {
                str(r.provenance.get("segmentation", {}).get("model"))
                for r in results
                if not labels_given
            }
        ),
    }


def _channels_meta(names: Sequence[str], config) -> list[dict[str, Any]]:
    try:
        res = config.channels.resolve(names)
    except ValueError:
        res = None
    roles: dict[int, str] = {}
    if res is not None:
        for role in ("nucleus", "cell", "exosome"):
            idx = getattr(res, role)
            if idx is not None:
                roles[idx] = role
        for m, idx in res.markers.items():
            roles.setdefault(idx, m)
    return [{"index": i, "name": str(n), "role": roles.get(i)} for i, n in enumerate(names)]


def write_bundle_metadata(
    root: str | Path,
    config,
    *,
    name: str,
    description: str,
    licence: str,
    authors: Sequence[str] = (),
    title: str | None = None,
    labels: str = "segmentation",
    with_results: bool = False,
    tolerances: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Turn a folder in the bundle layout into a bundle: reference, ``dataset.yaml``, checksums.

    The folder must already hold ``images/*.ome.tif`` and, as present, ground truth
    (``labels/<image>_cells.tif``, ``_nuclei.tif``, ``truth_spots.csv``, ``truth_cells.csv``)
    and ``analysis_labels/``. Existing images and ground truth are never modified.

    Parameters
    ----------
    root : str or Path
        The bundle folder.
    config : AssayConfig or path
        Assay config (written into ``dataset.yaml`` and as ``config.yaml`` unless one exists).
    name, description, licence, authors, title
        Descriptive metadata (``name``: letters, digits, ``.``, ``_``, ``-``).
    labels : {"segmentation", "ground_truth", "analysis_labels"}
        What the analysis (reference and ``validate``) segments with.
    with_results : bool
        Run the analysis now and store ``reference/``.
    tolerances : mapping, optional
        Per-metric tolerances (default: by ``labels``, see :mod:`napari_exouptake.validation`).
    extra : mapping, optional
        More keys for ``dataset.yaml`` (e.g. ``source``, ``citation``).

    Returns
    -------
    Path
        ``root / "dataset.yaml"``.
    """
    from .config import AssayConfig, config_hash, load_config, save_config
    from .io import read_image
    from .validation import DEFAULT_TOLERANCES, DEFAULT_TOLERANCES_SEGMENTATION

    root = Path(root)
    if not isinstance(config, AssayConfig):
        config = load_config(config)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DatasetError(f"bundle name {name!r} must use letters, digits, '.', '_' or '-'")
    if labels not in ("segmentation", "ground_truth", ANALYSIS_LABELS_DIR):
        raise DatasetError(
            f"labels must be segmentation, ground_truth or {ANALYSIS_LABELS_DIR}, got {labels!r}"
        )
    images = sorted(
        p.relative_to(root).as_posix()
        for p in (root / "images").glob("*")
        if p.is_file() and p.name.lower().endswith((".ome.tif", ".ome.tiff"))
    )
    if not images:
        raise DatasetError(f"{root}/images holds no .ome.tif images")
    first = read_image(root / images[0], axes=config.axes)
    names = [_image_name(r) for r in images]
    gt: dict[str, str] = {}
    if all((root / "labels" / f"{n}_cells.tif").is_file() for n in names):
        gt["cell_labels"] = "labels/{image}_cells.tif"
        if all((root / "labels" / f"{n}_nuclei.tif").is_file() for n in names):
            gt["nucleus_labels"] = "labels/{image}_nuclei.tif"
    for key, fname in (("spots", "truth_spots.csv"), ("cells", "truth_cells.csv")):
        if (root / fname).is_file():
            gt[key] = fname
    if labels == "ground_truth" and "cell_labels" not in gt:
        missing = [n for n in names if not (root / "labels" / f"{n}_cells.tif").is_file()]
        raise DatasetError(
            f"labels='ground_truth' but labels/<image>_cells.tif is missing for "
            f"{', '.join(missing[:5])}"
        )
    cfg_file = root / "config.yaml"
    if cfg_file.is_file():
        if config_hash(load_config(cfg_file)) != config_hash(config):
            raise DatasetError(f"{cfg_file} exists and differs from the given config")
    else:
        save_config(config, cfg_file)
    meta: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "title": title or name,
        "description": description,
        "licence": licence,
        "authors": list(authors),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "channels": _channels_meta(first.channel_names, config),
        "pixel_size_um": config.pixel_size_um or first.pixel_size_um,
        "images": images,
        "ground_truth": gt or None,
        "conditions": "conditions.csv" if (root / "conditions.csv").is_file() else None,
        "config_file": "config.yaml",
        "assay_config": config.to_dict(),
        "analysis": {"labels": labels},
        "reference": None,
        "tolerances": dict(tolerances)
        if tolerances is not None
        else dict(
            DEFAULT_TOLERANCES_SEGMENTATION if labels == "segmentation" else DEFAULT_TOLERANCES
        ),
    }
    if extra:
        meta.update(extra)
    problems = _schema_problems(meta)
    if problems:
        raise DatasetError("; ".join(problems))
    if with_results:
        bundle = Bundle(root=root, meta=meta, source=root)
        results = analyze_bundle(bundle, progress=progress)
        meta["reference"] = _write_reference(results, root, config, labels != "segmentation")
        from napari_exouptake import __version__

        meta["reference"]["software"].setdefault("napari-exouptake", __version__)
    out = root / METADATA_FILE
    out.write_text(
        "# napari-exouptake dataset bundle: see docs/datasets.md\n"
        + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    write_checksums(root)
    return out


# --------------------------------------------------------------------------------------------
# pack
# --------------------------------------------------------------------------------------------
def _find_images(src: Path) -> list[Path]:
    base = src / "images" if (src / "images").is_dir() else src
    found = []
    for p in sorted(base.rglob("*")):
        if not p.is_file() or p.is_symlink() or p.name.startswith("."):
            continue
        low = p.name.lower()
        if not low.endswith(IMAGE_SUFFIXES):
            continue
        if any(_image_name(p.name).endswith(s) for s in _LABEL_SUFFIXES):
            continue
        if base == src and (src / "labels") in p.parents:
            continue
        found.append(p)
    return found


def pack_bundle(
    src: str | Path,
    config,
    out: str | Path,
    *,
    with_results: bool = False,
    labels: str | Path | None = None,
    name: str | None = None,
    description: str | None = None,
    licence: str = "CC-BY-4.0",
    authors: Sequence[str] = (),
    tolerances: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Make a bundle (folder, or zip when ``out`` ends in ``.zip``) from a folder of images.

    Parameters
    ----------
    src : str or Path
        A folder of images (TIFF/OME-TIFF/PNG/JPEG; non-OME files are converted to OME-TIFF),
        or a folder in the simulator layout (``images/``, ``labels/<image>_cells.tif``,
        ``truth_spots.csv``, ``truth_cells.csv``, ``conditions.csv``), whose ground truth is
        copied along.
    config : AssayConfig or path
        The assay config.
    out : str or Path
        New bundle folder (must not exist or be empty) or ``.zip`` file.
    with_results : bool
        Run the analysis and store ``reference/`` results.
    labels : None, "ground_truth", or path
        What the analysis segments with: None runs the configured segmentation (Cellpose);
        ``"ground_truth"`` quantifies with the copied ``labels/<image>_cells.tif``; a path (a
        label image for a single image, or a folder of ``<image>_cells.tif`` [+ ``_nuclei.tif``])
        is copied into ``analysis_labels/`` and used.
    name : str, optional
        Bundle name (default: ``out``'s stem).
    description, licence, authors, tolerances
        See :func:`write_bundle_metadata`.

    Returns
    -------
    Path
        The bundle (folder or zip).
    """
    from .config import AssayConfig, load_config
    from .io import read_image, write_ome_tiff

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder of images")
    if not isinstance(config, AssayConfig):
        config = load_config(config)
    as_zip = out.suffix.lower() == ".zip"
    if out.exists() and (as_zip or not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists; choose a new bundle path")
    name = name or (out.stem if as_zip else out.name)
    paths = _find_images(src)
    if not paths:
        raise DatasetError(f"{src}: no images found (.tif, .tiff, .ome.tif, .png, .jpg)")
    names = [_image_name(p.name) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{src}: image names repeat across folders: {', '.join(dupes[:5])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (stage / "images").mkdir()
        for p, n in zip(paths, names, strict=True):  # one file copy per image
            target = stage / "images" / f"{n}.ome.tif"
            if p.name.lower().endswith((".ome.tif", ".ome.tiff")):
                shutil.copyfile(p, target)
            else:
                img = read_image(p, axes=config.axes)
                if img.axes != "CZYX":
                    raise DatasetError(
                        f"{p}: images with a time axis are not supported in "
                        "bundles; split the frames first"
                    )
                data = img.data[:, 0] if img.data.shape[1] == 1 else img.data
                write_ome_tiff(target, data, img.channel_names, img.pixel_size_um, img.z_step_um)
        lab_src = src / "labels"
        if lab_src.is_dir():
            for n in names:
                for kind in ("cells", "nuclei"):
                    f = lab_src / f"{n}_{kind}.tif"
                    if f.is_file() and not f.is_symlink():
                        (stage / "labels").mkdir(exist_ok=True)
                        shutil.copyfile(f, stage / "labels" / f.name)
        for extra in ("truth_spots.csv", "truth_cells.csv", *_EXTRA_FILES):
            f = src / extra
            if f.is_file() and not f.is_symlink():
                shutil.copyfile(f, stage / extra)
        mode = "segmentation"
        if labels is not None and str(labels) == "ground_truth":
            mode = "ground_truth"
        elif labels is not None:
            mode = ANALYSIS_LABELS_DIR
            _copy_given_labels(Path(labels), names, stage / ANALYSIS_LABELS_DIR)
        if description is None:
            description = f"{len(names)} images packed from {src.name} by napari-exouptake"
        write_bundle_metadata(
            stage,
            config,
            name=name,
            description=description,
            licence=licence,
            authors=authors,
            labels=mode,
            with_results=with_results,
            tolerances=tolerances,
            progress=progress,
        )
        problems = _verify_root(stage)
        if problems:  # pragma: no cover - a bug if it happens
            raise DatasetError("the new bundle failed verification: " + "; ".join(problems))
        if as_zip:
            _write_zip(stage, out)
            shutil.rmtree(stage)
        else:
            if out.exists():
                out.rmdir()
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _copy_given_labels(labels: Path, names: Sequence[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if labels.is_file():
        if len(names) != 1:
            raise DatasetError(
                f"--labels {labels} is one label image but there are "
                f"{len(names)} images; give a folder of <image>_cells.tif"
            )
        shutil.copyfile(labels, dest / f"{names[0]}_cells.tif")
        return
    if not labels.is_dir():
        raise DatasetError(f"--labels {labels}: no such file or folder")
    missing = [n for n in names if not (labels / f"{n}_cells.tif").is_file()]
    if missing:
        raise DatasetError(f"--labels {labels}: no <image>_cells.tif for {', '.join(missing[:5])}")
    for n in names:
        shutil.copyfile(labels / f"{n}_cells.tif", dest / f"{n}_cells.tif")
        nuc = labels / f"{n}_nuclei.tif"
        if nuc.is_file():
            shutil.copyfile(nuc, dest / nuc.name)


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------
@dataclass
class BundleValidation:
    """What :func:`validate_bundle` found.

    Attributes
    ----------
    comparisons : list of MetricComparison
        Agreement with the reference results, per metric (empty without reference).
    accuracy : dict
        :func:`napari_exouptake.validation.accuracy_against_truth` (empty without truth).
    has_reference : bool
    """

    comparisons: list
    accuracy: dict
    has_reference: bool

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    @property
    def failed_metrics(self) -> list[str]:
        return [c.metric for c in self.comparisons if not c.ok]

    def format(self) -> str:
        from .validation import format_accuracy, format_comparisons

        parts = []
        if self.accuracy:
            parts.append(format_accuracy(self.accuracy))
        if self.has_reference:
            parts.append("agreement with the reference results:")
            parts.append(format_comparisons(self.comparisons))
        else:
            parts.append("the bundle has no reference results to compare with")
        return "\n".join(parts)


def validate_bundle(
    path: str | Path | Bundle, *, progress: Progress | None = None
) -> BundleValidation:
    """Re-run the bundle's analysis and compare with its reference results and ground truth.

    Parameters
    ----------
    path : str, Path or Bundle
        Bundle folder or zip (verified first), or an opened bundle.
    progress : callable(str), optional
        Receives one line per analysed image.

    Returns
    -------
    BundleValidation
    """
    from .validation import RunTables, accuracy_against_truth, compare_results, read_results

    bundle = path if isinstance(path, Bundle) else open_bundle(path)
    try:
        results = analyze_bundle(bundle, progress=progress)
        given = bundle.analysis_labels_mode != "segmentation"
        labels = None if given else {r.image: _squeeze(r.cells_labels) for r in results}
        current = RunTables(
            cells=pd.concat([r.cells for r in results], ignore_index=True),
            images=pd.DataFrame([r.summary for r in results]),
            spots=pd.concat([r.spots for r in results], ignore_index=True),
            labels=labels,
        )
        comparisons = []
        ref_dir = bundle.reference_dir
        if ref_dir is not None:
            reference = read_results(ref_dir, with_labels=not given)
            comparisons = compare_results(current, reference, bundle.tolerances)
        accuracy: dict = {}
        if bundle.has_ground_truth:
            accuracy = accuracy_against_truth(
                current.cells,
                current.spots,
                truth_spots=bundle.truth_spots(),
                truth_cells=bundle.truth_cells(),
                pred_labels=labels,
                truth_labels=bundle.truth_cell_labels,
                labels_given=bundle.analysis_labels_mode == "ground_truth",
            )
        return BundleValidation(comparisons, accuracy, ref_dir is not None)
    finally:
        if not isinstance(path, Bundle):
            bundle.close()


def _squeeze(labels: np.ndarray) -> np.ndarray:
    return labels[0] if labels.ndim == 3 and labels.shape[0] == 1 else labels


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------
def _file_downloader(url: str, output_file: Any, pooch: Any = None) -> None:
    """pooch downloader for ``file://`` URLs (shared drives, tests): a plain copy."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(url)
    src = Path(url2pathname(parsed.path))
    if parsed.netloc not in ("", "localhost"):
        raise DatasetError(f"{url}: file:// URLs must name a local file (file:///path)")
    if not src.is_file():
        raise DatasetError(f"{url}: no such file {src}")
    limit = getattr(pooch, "max_bytes", MAX_DOWNLOAD_BYTES)
    if src.stat().st_size > limit:
        raise DatasetError(
            f"{url}: the file is {src.stat().st_size} bytes, more than the download limit of "
            f"{limit} bytes"
        )
    if hasattr(output_file, "write"):
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, output_file)
    else:
        shutil.copyfile(src, output_file)


class _Limits:
    """Passed as pooch's third downloader argument: carries the byte limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes


def _http_downloader(timeout_s: float, max_bytes: int) -> Callable[..., None]:
    """Stream an http(s) download, refusing more than ``max_bytes`` (header first, then count)."""

    def download(url: str, output_file: Any, pooch: Any = None) -> None:
        import requests

        with requests.get(url, stream=True, timeout=timeout_s) as r:
            r.raise_for_status()
            length = r.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise DatasetError(
                    f"{url}: the server announces {int(length)} bytes, more than the download "
                    f"limit of {max_bytes} bytes; nothing was downloaded"
                )
            with contextlib.ExitStack() as stack:
                fh = output_file
                if not hasattr(output_file, "write"):
                    fh = stack.enter_context(open(output_file, "wb"))
                n = 0
                for chunk in r.iter_content(1 << 20):
                    n += len(chunk)
                    if n > max_bytes:
                        raise DatasetError(
                            f"{url}: the download passed the limit of {max_bytes} bytes; "
                            "stopped and nothing was kept"
                        )
                    fh.write(chunk)

    return download


def _check_url_alive(url: str, timeout_s: float, cached: Path) -> None:
    """A cached download is used only while its URL still serves it (no false success)."""
    import requests

    hint = (
        f"; a copy with this SHA-256 is in the cache ({cached}) but is not used for a URL "
        "that does not answer: check the URL, or open the cached copy with "
        f"`exouptake dataset verify {cached}`"
    )
    if url.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        if not Path(url2pathname(urlparse(url).path)).is_file():
            raise DatasetError(f"{url}: no such file{hint}")
        return
    if not url.startswith(("http://", "https://")):
        return  # doi:, ftp://: pooch's own resolution; the hash still guards the content
    try:
        r = requests.head(url, allow_redirects=True, timeout=timeout_s)
        if r.status_code in (403, 405, 501):  # servers that refuse HEAD: ask for one byte
            r = requests.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=timeout_s)
            r.close()
    except requests.exceptions.RequestException as exc:
        raise DatasetError(f"{url}: cannot reach the URL ({type(exc).__name__}){hint}") from None
    if r.status_code >= 400:
        raise DatasetError(f"{url}: the server answered HTTP {r.status_code}{hint}")


def fetch_bundle(
    url: str,
    sha256: str,
    out: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    timeout_s: float = 60.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download a zip bundle through pooch (cached, hash-checked), extract and verify it.

    Parameters
    ----------
    url : str
        ``https://``, ``http://``, ``ftp://``, ``doi:`` (pooch) or ``file://`` URL of a bundle zip.
    sha256 : str
        Expected SHA-256 of the zip (64 hex digits, optionally ``sha256:``-prefixed).
    out : str or Path, optional
        Folder to extract into (must not exist or be empty). Default: the cache,
        ``<cache>/bundles/<sha256[:16]>``, reused when already there and intact.
    cache_dir : str or Path, optional
        Download cache (default ``$EXOUPTAKE_CACHE_DIR`` or pooch's OS cache folder).
    timeout_s : float
        Network timeout per request, seconds.
    max_bytes : int
        Largest download (default ``MAX_DOWNLOAD_BYTES``, 16 GiB); refused from the
        announced size, or stopped when passed.

    Returns
    -------
    Path
        The extracted, verified bundle folder.

    Notes
    -----
    A zip already in the cache is used only after the URL still answers (a dead URL is an
    error, not a success from the cache). A zip refused on extraction or verification is
    deleted from the cache, and a bundle that fails verification is removed from ``out``.

    Raises
    ------
    DatasetError
        Offline or unreachable host, HTTP error, hash mismatch, unsafe or invalid bundle.
    """
    import pooch

    digest = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(digest):
        raise DatasetError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    downloads = cache / "downloads"
    fname = f"{digest[:16]}.zip"
    downloader: Any = None
    if url.startswith("file:"):
        limits = _Limits(max_bytes)

        def downloader(url: str, output_file: Any, pooch: Any = None) -> None:
            _file_downloader(url, output_file, limits)

    elif url.startswith(("http://", "https://")):
        downloader = _http_downloader(timeout_s, max_bytes)
    cached = downloads / fname
    if cached.is_file():
        _check_url_alive(url, timeout_s, cached)
    zpath = _retrieve(pooch, url, digest, downloads, fname, downloader)
    target = Path(out) if out is not None else cache / "bundles" / digest[:16]
    if out is None and target.is_dir() and any(target.iterdir()):
        with contextlib.suppress(DatasetError):
            if not _verify_root(_find_root(target)):
                return _find_root(target)
        shutil.rmtree(target)
    existed = target.is_dir()
    try:
        safe_extract(zpath, target, listed_only=True)
    except DatasetError:
        zpath.unlink(missing_ok=True)  # a refused zip does not stay in the cache
        raise
    try:
        root = _find_root(target)
        problems = _verify_root(root)
    except DatasetError as exc:
        problems = [str(exc)]
    if problems:
        zpath.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # nothing unverified is left in --out
        if existed:
            target.mkdir()
        raise DatasetError(
            f"{url}: the downloaded bundle failed verification (removed): " + "; ".join(problems)
        )
    return root


def _retrieve(pooch: Any, url: str, digest: str, folder: Path, fname: str, downloader) -> Path:
    import requests

    try:
        return Path(
            pooch.retrieve(
                url,
                known_hash=f"sha256:{digest}",
                fname=fname,
                path=folder,
                downloader=downloader,
                progressbar=False,
            )
        )
    except DatasetError:
        raise
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise DatasetError(f"{url}: the server answered HTTP {code}; check the URL") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise DatasetError(
            f"{url}: cannot download: no network connection, or the host is unreachable "
            f"({type(exc).__name__}). Download the file another way and run "
            "`exouptake dataset verify FILE.zip`, or retry when online"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise DatasetError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if "hash" in str(exc).lower():
            raise DatasetError(
                f"{url}: the downloaded file's SHA-256 does not match the expected {digest} "
                "(wrong --sha256, or the file changed or was corrupted); nothing was kept"
            ) from None
        raise DatasetError(f"{url}: {exc}") from None


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr)


def main_dataset(args: Any) -> int:
    """``exouptake dataset pack|verify|validate|fetch`` (``args`` from the CLI's argparse).

    Returns
    -------
    int
        0 success; 1 verification or validation failed, or a download failed; 2 usage error.
    """
    action = args.dataset_command
    try:
        if action == "pack":
            authors = getattr(args, "author", None) or getattr(args, "authors", None) or ()
            if isinstance(authors, str):
                authors = [a.strip() for a in authors.split(",") if a.strip()]
            out = pack_bundle(
                args.src,
                args.config,
                args.out,
                with_results=bool(getattr(args, "with_results", False)),
                labels=getattr(args, "labels", None),
                name=getattr(args, "name", None),
                description=getattr(args, "description", None),
                licence=getattr(args, "licence", None)
                or getattr(args, "license", None)
                or "CC-BY-4.0",
                authors=list(authors),
                progress=print,
            )
            with open_bundle(out) as b:
                n = len(b.image_names)
                ref = "with reference results" if b.reference_dir else "no reference results"
            print(
                f"wrote bundle {out} ({n} images, {ref}); verify with "
                f"`exouptake dataset verify {out}`"
            )
            return 0
        if action == "verify":
            problems = verify_bundle(args.bundle)
            if problems:
                for line in problems:
                    _print_err(f"exouptake dataset verify: {line}")
                _print_err(
                    f"exouptake dataset verify: {args.bundle}: FAILED ({len(problems)} problem(s))"
                )
                return 1
            with open_bundle(args.bundle, verify=False) as b:
                n_files = len(compute_checksums(b.root))
            print(f"{args.bundle}: OK ({n_files} files, every SHA-256 and the schema check out)")
            return 0
        if action == "validate":
            try:
                bundle = open_bundle(args.bundle)
            except DatasetError as exc:
                _print_err(f"exouptake dataset validate: {exc}")
                return 1
            with bundle:
                print(
                    f"validating bundle {bundle.name!r}: {len(bundle.image_names)} images, "
                    f"labels: {bundle.analysis_labels_mode}"
                )
                report = validate_bundle(bundle, progress=lambda s: print("  " + s))
            print(report.format())
            if not report.ok:
                _print_err(
                    "exouptake dataset validate: disagrees with the reference in: "
                    + ", ".join(report.failed_metrics)
                )
                return 1
            if report.has_reference:
                print(f"all {len(report.comparisons)} metrics agree with the reference")
            return 0
        if action == "fetch":
            try:
                root = fetch_bundle(args.url, args.sha256, getattr(args, "out", None))
            except DatasetError as exc:
                _print_err(f"exouptake dataset fetch: {exc}")
                return 1
            print(f"fetched and verified: {root}")
            return 0
    except DatasetError as exc:
        _print_err(f"exouptake dataset {action}: error: {exc}")
        return 2
    _print_err(f"exouptake dataset: unknown action {action!r}")
    return 2
