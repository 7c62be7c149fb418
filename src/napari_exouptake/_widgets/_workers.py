"""Run a core function off the Qt thread, with progress and cooperative cancellation.

Every long job of the widgets (segmentation, diameter estimate, puncta preview, measurement,
folder batch) goes through :func:`start_job`: the core function runs in a
``napari.qt.threading`` worker thread, reports ``(fraction, message)`` through a Qt signal
(queued to the GUI thread), and polls a :class:`threading.Event` to stop early. Nothing here
does analysis arithmetic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Job", "start_job"]

log = logging.getLogger(__name__)


class Job:
    """Handle of a running job: the napari worker plus its cancel flag.

    Attributes
    ----------
    worker : napari.qt.threading.FunctionWorker
    cancel_event : threading.Event
        Set by :meth:`cancel`; the core function sees it through its ``cancel`` callback.
    """

    def __init__(self, worker: Any, cancel_event: threading.Event, relay: Any) -> None:
        self.worker = worker
        self.cancel_event = cancel_event
        self._relay = relay  # keep the signal relay alive as long as the job

    def cancel(self) -> None:
        """Ask the job to stop at its next check point (the core's ``cancel`` callback)."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def is_running(self) -> bool:
        return bool(self.worker.is_running)


def _make_relay() -> Any:
    from qtpy.QtCore import QObject, Signal

    class _Relay(QObject):
        progress = Signal(float, str)

    return _Relay()


def _log_error(exc: BaseException) -> None:
    log.error("background job failed: %s", exc, exc_info=exc)


def start_job(
    fn: Callable[..., Any],
    *args: Any,
    on_progress: Callable[[float, str], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    **kwargs: Any,
) -> Job:
    """Start ``fn(*args, progress=report, cancel=is_cancelled, **kwargs)`` in a worker thread.

    Parameters
    ----------
    fn : callable
        Runs in the worker thread. It receives two keyword arguments: ``progress(fraction,
        message)`` (thread-safe; delivered to ``on_progress`` on the GUI thread) and
        ``cancel()`` (True once :meth:`Job.cancel` was called).
    on_progress : callable(float, str), optional
        Progress in [0, 1] and a message, called on the GUI thread.
    on_returned : callable(result), optional
        Called on the GUI thread with the return value of ``fn``.
    on_errored : callable(exception), optional
        Called on the GUI thread when ``fn`` raised (cancellation included).
    on_finished : callable(), optional
        Always called last on the GUI thread (success, error or cancel): re-enable buttons here.

    Returns
    -------
    Job
    """
    from napari.qt.threading import thread_worker

    cancel_event = threading.Event()
    relay = _make_relay()
    if on_progress is not None:
        relay.progress.connect(on_progress)

    def report(fraction: float, message: str = "") -> None:
        relay.progress.emit(float(fraction), str(message))

    def run() -> Any:
        return fn(*args, progress=report, cancel=cancel_event.is_set, **kwargs)

    # errors go to on_errored (or the log), never re-raised into the Qt event loop
    worker = thread_worker(run, start_thread=False, ignore_errors=True)()
    if on_returned is not None:
        worker.returned.connect(on_returned)
    worker.errored.connect(on_errored if on_errored is not None else _log_error)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    job = Job(worker, cancel_event, relay)
    worker.start()
    return job
