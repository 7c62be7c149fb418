"""The run's log file: our messages, Cellpose's and Python warnings (torch's) written to
``OUT/exouptake.log`` while the console shows only the progress bar and warnings."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOG_FORMAT", "log_to_file"]

LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Also log INFO and above of ours, Cellpose's and Python warnings to ``path`` while the
    block runs."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # ours, Cellpose's (">>>> loading model ...") and Python warnings (torch's) go to the file
    loggers = [logging.getLogger(n) for n in ("napari_exouptake", "cellpose", "py.warnings")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
