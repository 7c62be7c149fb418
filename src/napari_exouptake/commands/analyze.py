"""``exouptake analyze INPUTS --config C --out OUT``: many images -> tables, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..batch import analyze_batch
from ..config import AssayConfig
from .progress_bar import ProgressBar

__all__ = ["run_analyze"]


def run_analyze(
    inputs: Sequence[str | Path],
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    progress_bar: bool = True,
    **kwargs: Any,
) -> int:
    """``exouptake analyze`` body: :func:`~napari_exouptake.batch.analyze_batch` with a
    progress bar on stderr; returns the exit code (0, or 1 when some inputs failed).

    Usage mistakes raise :class:`~napari_exouptake.batch.BatchUsageError` /
    ``FileNotFoundError`` (exit code 2 in the CLI). Keyword arguments go to ``analyze_batch``.
    """
    with ProgressBar("analyze", enabled=progress_bar) as bar:
        return analyze_batch(inputs, config, out, progress=bar, **kwargs).exit_code
