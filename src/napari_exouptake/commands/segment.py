"""``exouptake segment INPUTS --config C --out OUT``: label images only, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..batch import segment_batch
from .progress_bar import exit_code_with_bar

__all__ = ["run_segment"]


def run_segment(inputs: Sequence[str | Path], config: Any, out: str | Path, **kwargs: Any) -> int:
    """``exouptake segment`` body: :func:`~napari_exouptake.batch.segment_batch` with a
    progress bar on stderr; returns the exit code (0, or 1 when some inputs failed)."""
    return exit_code_with_bar("segment", segment_batch, inputs, config, out, **kwargs)
