"""Executors: run the tasks serially, on local worker processes or on a Dask cluster, and
yield each task's outcome as it completes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BatchUsageError
from .lock import _pid_alive
from .manifest import _Task
from .work import _run_task

log = logging.getLogger(__name__)


def _execute(
    tasks: Sequence[_Task], workers: int, scheduler: str | None
) -> Iterator[dict[str, Any]]:
    """Run ``_run_task`` over ``tasks``; yield outcomes as they complete."""
    if not tasks:
        return
    if scheduler:
        yield from _execute_dask(tasks, workers, scheduler)
    elif workers > 1 and len(tasks) > 1:
        yield from _execute_processes(tasks, workers)
    else:
        for t in tasks:
            yield _run_task(t)


def _mp_context():
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # imported once in the fork server, inherited by every worker
        ctx.set_forkserver_preload(["napari_exouptake.batch.work", "napari_exouptake.pipeline"])
        return ctx
    return mp.get_context("spawn")


def _die_with_parent(main_pid: int) -> None:
    """In a worker: end when the main process ends, however it ends (SIGKILL included).

    On Linux the kernel sends SIGKILL when the parent (the fork server, which itself exits when
    the main process is gone) dies (``PR_SET_PDEATHSIG``); everywhere a watchdog thread checks
    once a second that the main process still runs.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent or not _pid_alive(main_pid, None):
                os._exit(1)

    if not _pid_alive(main_pid, None):
        os._exit(1)
    threading.Thread(target=watch, name="exouptake-watchdog", daemon=True).start()


def _worker_main(conn: Any, main_pid: int) -> None:
    """A local worker process: run the tasks sent over ``conn`` one at a time."""
    _die_with_parent(main_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        outcome = _run_task(task)
        try:
            conn.send(outcome)
        except (OSError, EOFError):
            return  # the main process is gone
        except Exception as exc:  # an outcome that does not pickle: report, do not die
            conn.send(_crashed(task, f"cannot send the result back ({type(exc).__name__}: {exc})"))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the system may have run out of memory)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


@dataclass(eq=False)
class _Worker:
    proc: Any
    conn: Any
    task: _Task | None = None


class _Pool:
    """Local worker processes (see :func:`_worker_main`) and the task each one holds."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.workers: list[_Worker] = []

    def start(self) -> _Worker:
        parent_conn, child_conn = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=_worker_main, args=(child_conn, os.getpid()), name="exouptake-worker"
        )
        proc.start()
        child_conn.close()
        w = _Worker(proc, parent_conn)
        self.workers.append(w)
        return w

    def retire(self, w: _Worker) -> None:
        with contextlib.suppress(Exception):
            w.conn.close()
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        self.workers.remove(w)

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is not None]

    def hand_out(self, pending: Any) -> None:
        """Give each idle worker the next pending task."""
        for w in [w for w in self.workers if w.task is None]:
            if not pending:
                break
            task = pending.popleft()
            try:
                w.conn.send(task)
                w.task = task
            except (OSError, EOFError):  # died while idle: not this image's fault
                pending.appendleft(task)
                self.retire(w)
                self.start()

    def close(self) -> None:
        """Stop every worker: idle ones are asked to end, busy ones are killed."""
        for w in list(self.workers):
            if w.task is None:
                with contextlib.suppress(Exception):
                    w.conn.send(None)
        deadline = time.monotonic() + 5
        for w in list(self.workers):
            if w.task is None:
                w.proc.join(max(deadline - time.monotonic(), 0))
            self.retire(w)


def _execute_processes(tasks: Sequence[_Task], workers: int) -> Iterator[dict[str, Any]]:
    """Local worker processes, one image at a time each.

    A worker that dies (out of memory, a crash in a codec) fails only the image it held: that
    image is retried once in a fresh worker, then recorded as failed; the other images go on.
    Workers end with the main process (see :func:`_die_with_parent`); leaving the generator
    (cancel, Ctrl-C, SIGTERM) stops them.
    """
    from collections import deque
    from multiprocessing.connection import wait

    pool = _Pool(_mp_context())
    n = min(workers, len(tasks))
    log.info("running %d image(s) on %d local worker processes", len(tasks), n)
    pending = deque(tasks)
    deaths: dict[str, int] = {}
    try:
        for _ in range(n):
            pool.start()
        while pending or pool.busy():
            pool.hand_out(pending)
            busy = pool.busy()
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                outcome = None
                with contextlib.suppress(EOFError, OSError):
                    if w.conn.poll():
                        outcome = w.conn.recv()
                task, w.task = w.task, None
                if outcome is not None:
                    yield outcome
                    continue
                # no outcome: the process died while holding this image
                w.proc.join(5)
                why = _death(w.proc.exitcode)
                pool.retire(w)
                deaths[task.name] = deaths.get(task.name, 0) + 1
                if deaths[task.name] == 1:
                    log.warning(
                        "%s: the worker process died while analysing %s (%s); retrying it "
                        "once in a fresh worker",
                        task.name,
                        task.path,
                        why,
                    )
                    pending.appendleft(task)
                else:
                    yield _crashed(
                        task,
                        f"the worker process died twice while analysing {task.path} ({why}); "
                        "too large for the memory? see --max-pixels",
                    )
                if pending:
                    pool.start()
    finally:  # normal end, cancel, Ctrl-C or SIGTERM: stop every worker
        pool.close()


def _crashed(task: _Task, msg: str) -> dict[str, Any]:
    log.error("%s: failed: %s", task.name, msg)
    return {"image": task.name, "ok": False, "seconds": float("nan"), "error": msg}


def _dask_forkserver_preload() -> None:
    """Have local Dask workers forked from a server with numpy, pandas and the pipeline
    already imported (as the local process pool is), instead of fresh interpreters."""
    from distributed import utils

    ctx = utils.get_mp_context()  # sets Dask's own preload list once
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(
            [
                "distributed",
                "numpy",
                "pandas",
                "napari_exouptake.batch.work",
                "napari_exouptake.pipeline",
            ]
        )


def _execute_dask(tasks: Sequence[_Task], workers: int, scheduler: str) -> Iterator[dict[str, Any]]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchUsageError(
            "--scheduler needs Dask distributed: pip install 'napari-exouptake[distributed]'"
        ) from None
    cluster = None
    if scheduler == "local":
        import multiprocessing as mp

        import dask

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        settings = {
            "distributed.worker.multiprocessing-method": method,
            # the statistical profiler samples every 10 ms: CPU that analysis needs
            "distributed.worker.profile.enabled": False,
            # fewer event-loop wake-ups competing with the analysis thread for the GIL
            "distributed.admin.tick.interval": "500ms",
            "distributed.admin.system-monitor.interval": "2s",
            "distributed.worker.memory.monitor-interval": "1s",
            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which makes glibc
            # return memory after every large array: page faults on every image (measured:
            # ~25% more CPU per image than a plain worker process). Keep glibc's default.
            "distributed.nanny.pre-spawn-environ": {},
            # a task whose worker died is retried once, then fails alone (KilledWorker)
            "distributed.scheduler.allowed-failures": 1,
        }
        with dask.config.set(settings):
            _dask_forkserver_preload()
            cluster = LocalCluster(
                n_workers=max(workers, 1),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise BatchUsageError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
    log.info(
        "running %d image(s) on Dask %s (%d worker(s))",
        len(tasks),
        "local cluster" if cluster else scheduler,
        len(client.scheduler_info()["workers"]),
    )
    try:
        token = uuid.uuid4().hex[:8]
        futures = client.map(
            _run_task,
            list(tasks),
            pure=False,
            key=[f"exouptake-{t.kind}-{t.name}-{token}" for t in tasks],
        )
        by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as exc:  # KilledWorker, lost connection ...
                yield _crashed(by_key[fut.key], f"{type(exc).__name__}: {exc}")
            fut.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
