"""One progress-and-cancel protocol for every long call of the core.

Every long function (analysis of an image, segmentation, training, a batch) takes two optional
keyword arguments and nothing else for this purpose:

``progress(fraction, message)``
    ``fraction`` in [0, 1] of *this call's* work, ``message`` a short human sentence
    ("segmenting cells", "image 3 of 12: well_B2.tif"). Called from the working thread; a face
    relays it to its own thread (the widget) or to a progress bar (the command line).
``cancel()``
    Returns True once the user asked to stop (``threading.Event().is_set`` is one). Polled
    between steps; the call then raises :class:`Cancelled` (a batch instead stops taking new
    images, merges what finished and reports ``cancelled``).

A call that runs sub-steps hands each one a slice of its own range with :func:`within`, so the
caller sees one monotone fraction. Nothing here imports a face.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "Cancel", "Cancelled", "report", "check", "within", "no_progress"]

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised by a long call when its ``cancel()`` returned True."""


def no_progress(fraction: float, message: str) -> None:
    """A :data:`Progress` that does nothing (the default where ``None`` is inconvenient)."""


def report(progress: Progress | None, fraction: float, message: str) -> None:
    """Call ``progress`` with ``fraction`` clamped to [0, 1]; nothing when it is None."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def check(cancel: Cancel | None, what: str = "work") -> None:
    """Raise :class:`Cancelled` (``"<what> cancelled"``) when ``cancel()`` returns True."""
    if cancel is not None and cancel():
        raise Cancelled(f"{what} cancelled")


def within(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A :data:`Progress` for a sub-step that maps its [0, 1] onto [start, stop] of ``progress``.

    >>> seen = []
    >>> sub = within(lambda f, m: seen.append((round(f, 2), m)), 0.5, 1.0)
    >>> sub(0.5, "half of the second half")
    >>> seen
    [(0.75, 'half of the second half')]
    """
    if progress is None:
        return None
    span = stop - start

    def sub(fraction: float, message: str) -> None:
        report(progress, start + span * min(1.0, max(0.0, float(fraction))), message)

    return sub
