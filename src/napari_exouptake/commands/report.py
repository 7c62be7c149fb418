"""``exouptake report RESULTS [--control NAME] [--out FILE]``: one HTML report of a run."""

from __future__ import annotations

from pathlib import Path

from ..report import write_report

__all__ = ["main_report"]


def main_report(
    results_dir: str | Path, control: str | None = None, out: str | Path | None = None
) -> int:
    """``exouptake report`` body; returns the exit code (0). Errors raise
    :class:`~napari_exouptake.report.ReportError` (exit code 2 in the CLI)."""
    path = write_report(results_dir, out=out, control=control)
    print(f"wrote {path}")
    return 0
