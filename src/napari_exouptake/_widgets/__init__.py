"""napari dock widgets of napari-exouptake.

Qt is imported only when the widget itself is asked for, so the Qt-free helpers in
:mod:`._layers` (used by the reader) stay importable headless.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExoUptakeWidget"]


def __getattr__(name: str) -> Any:
    if name == "ExoUptakeWidget":
        from ._main import ExoUptakeWidget

        return ExoUptakeWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
