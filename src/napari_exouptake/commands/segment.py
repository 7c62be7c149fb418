"""``exouptake segment INPUTS --config C --out OUT``: label images only, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..batch import segment_batch
from ..config import AssayConfig
from .progress_bar import ProgressBar

__all__ = ["run_segment"]


def run_segment(
    inputs: Sequence[str | Path],
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    progress_bar: bool = True,
    **kwargs: Any,
) -> int:
    """``exouptake segment`` body: :func:`~napari_exouptake.batch.segment_batch` with a
    progress bar on stderr; returns the exit code (0, or 1 when some inputs failed)."""
    with ProgressBar("segment", enabled=progress_bar) as bar:
        return segment_batch(inputs, config, out, progress=bar, **kwargs).exit_code
