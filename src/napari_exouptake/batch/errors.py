"""The batch's errors: each one is a user's mistake or a file-system problem (exit code 2)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigError

__all__ = ["BatchUsageError", "MixedPartsError", "OutputError", "RunLockedError"]


class BatchUsageError(ConfigError):
    """A mistake in the batch's arguments (inputs, sample sheet, workers): exit code 2."""


class RunLockedError(BatchUsageError):
    """Another exouptake run holds the ``--out`` folder (exit code 2)."""


class OutputError(BatchUsageError):
    """The output folder cannot be written (permissions, disk full, name too long): exit 2."""


class MixedPartsError(BatchUsageError):
    """A part was made with another config or input than the run merging it (exit code 2)."""


def _output_error(exc: OSError, out: Path | None = None) -> OutputError:
    """One line naming the path and the reason (permission, disk full, name too long ...)."""
    import errno

    where = exc.filename or out
    reason = {
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a file of that name is in the way",
        errno.EISDIR: "a folder of that name is in the way",
    }.get(exc.errno or -1, exc.strerror or str(exc))
    verb = "write the output" if out is None or _under(where, out) else "read"
    return OutputError(f"cannot {verb} {str(where)!r}: {reason}")


@contextlib.contextmanager
def _output_errors(out: str | Path) -> Iterator[None]:
    """Turn a file-system error into one line naming the path (exit code 2 in the CLI)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not _under(exc.filename, out):
            raise  # a missing input: its own message
        raise _output_error(exc, Path(out)) from None


def _under(path: Any, folder: str | Path) -> bool:
    if path is None:
        return False
    try:
        p = Path(os.path.abspath(os.fspath(path)))
        f = Path(os.path.abspath(os.fspath(folder)))
    except (TypeError, ValueError):
        return False
    return p == f or f in p.parents
