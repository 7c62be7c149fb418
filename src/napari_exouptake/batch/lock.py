"""The exclusive run lock of an output folder: one batch writes to ``OUT`` at a time."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RunLockedError, _output_error
from .layout import _LOCK_NAME

__all__ = ["run_lock"]

log = logging.getLogger(__name__)

_HELD: set[tuple[str, int]] = set()


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux), to tell reused pids apart."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None) -> bool:
    """True when process ``pid`` of this host runs (and is the same process as at ``start``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a killed process not yet reaped by its parent is a zombie: dead for us
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start


def _describe_holder(rec: dict[str, Any]) -> str:
    return (
        f"`exouptake {rec.get('command', '?')}`, pid {rec.get('pid', '?')} on host "
        f"{rec.get('host', '?')}, started {rec.get('started', '?')}"
    )


@contextlib.contextmanager
def run_lock(out: str | Path, command: str = "analyze") -> Iterator[None]:
    """Hold the exclusive run lock of ``out`` (``OUT/.exouptake.lock``) for the block.

    The lock is an ``flock`` on the lock file, which the kernel releases whatever way the
    process ends (even SIGKILL); the file also records the holder's pid, host and start time.
    A lock left by a process that no longer runs (same host, pid gone or reused) is taken over
    with a warning; one held by a live run, or by a run on another host that did not release it,
    refuses the new run.

    Inside the block, SIGTERM (when this is the main thread) raises ``SystemExit(143)``, so a
    plain ``kill`` runs the clean-up (workers stopped, lock released) too.

    Raises
    ------
    RunLockedError
        Another run holds ``out``.
    OutputError
        The lock file cannot be created.
    """
    out = Path(out)
    path = out / _LOCK_NAME
    ident = (str(out.resolve()), threading.get_ident())
    if ident in _HELD:  # this thread holds it already (merge_parts inside analyze_batch)
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _output_error(exc, path) from None
    owned = False
    old_term = None
    try:
        _take(fd, out, path)
        rec = {
            "command": command,
            "pid": os.getpid(),
            "host": platform.node(),
            "proc_start": _proc_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "released": False,
        }
        _write_lock_fd(fd, rec)
        owned = True
        _HELD.add(ident)
        if threading.current_thread() is threading.main_thread():
            old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        yield
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if owned:
            _HELD.discard(ident)
            with contextlib.suppress(OSError):
                _write_lock_fd(fd, {**rec, "released": True})
        os.close(fd)  # releases the flock


def _take(fd: int, out: Path, path: Path) -> None:
    """Take the lock file ``fd``: its flock, and over a holder that no longer runs; refuse
    (:class:`RunLockedError`) a live holder or one on another host."""
    flocked = False
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
    except BlockingIOError:
        holder = _read_lock_fd(fd)
        raise RunLockedError(
            f"--out {str(out)!r} is in use by another run ({_describe_holder(holder)}); "
            "wait for it to finish, or choose another --out"
        ) from None
    except (ImportError, OSError):  # no flock here (Windows, some network file systems)
        pass
    prev = _read_lock_fd(fd)
    if not prev or prev.get("released"):
        return
    same_host = prev.get("host") == platform.node()
    pid = prev.get("pid")
    if same_host and isinstance(pid, int) and pid != os.getpid():
        if _pid_alive(pid, prev.get("proc_start")) and not flocked:
            raise RunLockedError(
                f"--out {str(out)!r} is in use by another run ({_describe_holder(prev)}); "
                "wait for it to finish, or choose another --out"
            )
    elif not same_host and not flocked:
        raise RunLockedError(
            f"--out {str(out)!r} is locked by a run on another host "
            f"({_describe_holder(prev)}); if that run is over, delete {path} and rerun"
        )
    log.warning(
        "%s: taking over the run lock left by a run that ended without releasing it (%s)",
        out,
        _describe_holder(prev),
    )


def _on_sigterm(signum: int, frame: Any) -> None:
    log.warning("terminated (SIGTERM): stopping the workers; finished images are kept")
    raise SystemExit(128 + signum)


def _read_lock_fd(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _write_lock_fd(fd: int, rec: dict[str, Any]) -> None:
    data = json.dumps(rec, sort_keys=True).encode("utf-8")
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)
