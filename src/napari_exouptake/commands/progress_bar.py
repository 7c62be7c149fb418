"""A progress bar with ETA on stderr, driven by the core's ``progress(fraction, message)``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["ProgressBar", "exit_code_with_bar"]


class ProgressBar:
    """A tqdm bar (percent, elapsed and remaining time, the last message) for one long call.

    Use as a context manager and pass the object as the call's ``progress`` argument. Log
    records reach the console through the CLI's tqdm-safe handler (``cli._TqdmSafeHandler``),
    so they never break the bar; tqdm's own logging redirect would add an unfiltered handler.
    """

    def __init__(self, desc: str, *, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=100,
            desc=desc,
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.5,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
        )

    def __call__(self, fraction: float, message: str) -> None:
        self._bar.set_postfix_str(message, refresh=False)
        step = 100.0 * fraction - self._bar.n
        if step > 0:
            self._bar.update(step)
        else:
            self._bar.refresh()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()


def exit_code_with_bar(desc: str, batch: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """``batch(*args, progress=<a ProgressBar>, **kwargs).exit_code``, the bar on stderr."""
    with ProgressBar(desc) as bar:
        return int(batch(*args, progress=bar, **kwargs).exit_code)
