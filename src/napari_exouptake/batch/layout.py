"""Names of the files and folders a batch writes in its output folder (see the package's
docstring for the whole layout)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PART_VERSION"]

#: Version of the part folder layout; a change makes every part stale.
PART_VERSION = 1
_MANIFEST = "manifest.jsonl"
_LOG_NAME = "exouptake.log"
_LOCK_NAME = ".exouptake.lock"
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


def _part_dir(out: Path, name: str) -> Path:
    return out / "parts" / name
