"""``exouptake analyze INPUTS --config C --out OUT``: many images -> tables, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..batch import analyze_batch
from .progress_bar import exit_code_with_bar

__all__ = ["run_analyze"]


def run_analyze(inputs: Sequence[str | Path], config: Any, out: str | Path, **kwargs: Any) -> int:
    """``exouptake analyze`` body: :func:`~napari_exouptake.batch.analyze_batch` with a
    progress bar on stderr; returns the exit code (0, or 1 when some inputs failed).

    Usage mistakes raise :class:`~napari_exouptake.batch.BatchUsageError` /
    ``FileNotFoundError`` (exit code 2 in the CLI). Keyword arguments go to ``analyze_batch``.
    """
    return exit_code_with_bar("analyze", analyze_batch, inputs, config, out, **kwargs)
