"""The bundle format: names, file layout constants, ``dataset.yaml`` loading and its schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

BUNDLE_FORMAT = "exouptake-dataset"
BUNDLE_FORMAT_VERSION = 1
METADATA_FILE = "dataset.yaml"
CHECKSUM_FILE = "checksums.sha256"
REFERENCE_DIR = "reference"
ANALYSIS_LABELS_DIR = "analysis_labels"


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


def _load_yaml(path: Path) -> Any:
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DatasetError(f"{path.name}: larger than {MAX_TEXT_BYTES} bytes")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path.name}: not valid YAML ({exc})") from None


def _schema_problems(meta: Any) -> list[str]:
    """Every problem with a parsed dataset.yaml (empty list: valid)."""
    from ..config import AssayConfig, ConfigError
    from ..validation import Tolerance

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
