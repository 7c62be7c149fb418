"""Publishing the merged tables as one unit: results generations and an atomic switch."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from .layout import _CURRENT, _PUBLISHED, _RESULTS

log = logging.getLogger(__name__)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` (so a power cut cannot tear the set)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_generation(out: Path) -> Path:
    """A fresh, empty results folder ``OUT/.results/.gen-<time>-<id>.tmp`` (not yet published)."""
    root = out / _RESULTS
    root.mkdir(exist_ok=True)
    gen = root / f".gen-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.tmp"
    gen.mkdir()
    return gen


def _place(src: Path, dst: Path, prev: Path | None) -> None:
    """Put a part's file ``src`` into a generation as ``dst``.

    The previous generation's copy ``prev`` is hard-linked when it is still that file (same
    size, not older); otherwise ``src`` is copied, never linked, so an edit of a published
    label image in place can never change the part it came from.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if prev is not None:
        with contextlib.suppress(OSError):
            s, d = src.stat(), prev.stat()
            if s.st_size == d.st_size and d.st_mtime_ns >= s.st_mtime_ns:
                os.link(prev, dst)
                return
    shutil.copyfile(src, dst)


def _publish(out: Path, gen: Path) -> None:
    """Make the finished generation ``gen`` the results of ``out`` in one atomic step.

    ``gen`` is fsync'ed, renamed to its final name, then ``OUT/.results/current`` (a relative
    symbolic link) is replaced by one pointing to it: ``rename`` is atomic, so a reader (or a
    kill) sees the old complete set or the new one. ``OUT/cells.csv`` etc. are fixed links
    through ``current``. Where symbolic links cannot be made, the files are renamed into ``OUT``
    one by one (each atomic, the set not) and a warning says so.
    """
    _fsync_tree(gen)
    final = gen.with_name(gen.name.removeprefix(".").removesuffix(".tmp"))
    os.replace(gen, final)
    root = out / _RESULTS
    cur = root / _CURRENT
    tmp_link = root / f".{_CURRENT}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.symlink(final.name, tmp_link, target_is_directory=True)
    except (OSError, NotImplementedError):
        _publish_by_renames(out, final)
        return
    old = _current_generation(out)
    if cur.exists() and not cur.is_symlink():  # a copy of a results folder made it a folder
        os.replace(cur, root / f".{_CURRENT}-copied-{uuid.uuid4().hex[:8]}.old")
    os.replace(tmp_link, cur)
    _fsync_dir(root)
    for name in _PUBLISHED:
        link = out / name
        want = f"{_RESULTS}/{_CURRENT}/{name}"
        if not (final / name).exists():  # e.g. failures.csv of an earlier run
            if link.is_symlink() or link.is_file():
                link.unlink()
            continue
        if link.is_symlink() and os.readlink(link) == want:
            continue
        if link.is_dir() and not link.is_symlink():  # a folder of an older version or of
            # `exouptake segment`: kept beside, never deleted
            aside = out / f"{name}.old-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(link, aside)
            log.warning("%s: the earlier folder %s/ was moved to %s/", out, name, aside.name)
        elif link.exists() or link.is_symlink():  # a table of an older version: replaced
            aside = root / f".legacy-{name}-{uuid.uuid4().hex[:8]}.old"
            os.replace(link, aside)
        tmp = out / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(want, tmp, target_is_directory=(final / name).is_dir())
        os.replace(tmp, link)
    _fsync_dir(out)
    if old is not None and old != final:
        shutil.rmtree(old, ignore_errors=True)
    _clean_results(out)


def _publish_by_renames(out: Path, final: Path) -> None:
    log.warning(
        "%s: symbolic links are not available here; the result files are replaced one by one "
        "(a kill during this step can leave tables of two runs side by side)",
        out,
    )
    for name in _PUBLISHED:
        src, dst = final / name, out / name
        if dst.is_dir() and not dst.is_symlink():
            aside = out / _RESULTS / f".old-{name}-{uuid.uuid4().hex[:8]}.old"
            os.replace(dst, aside)
        elif dst.exists() and not src.exists():
            dst.unlink()
        if src.exists():
            os.replace(src, dst)
    shutil.rmtree(final, ignore_errors=True)
    _clean_results(out)


def _current_generation(out: Path) -> Path | None:
    cur = out / _RESULTS / _CURRENT
    if not cur.is_symlink():
        return None
    return out / _RESULTS / os.readlink(cur)


def _clean_results(out: Path) -> None:
    """Remove unfinished or replaced generations and temporary files (run under the lock)."""
    root = out / _RESULTS
    current = _current_generation(out)
    if root.is_dir():
        for p in root.iterdir():
            if p.name == _CURRENT or (current is not None and p == current):
                continue
            log.info("removing %s (unfinished or replaced results)", p.name)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
    for p in out.glob(".*.tmp"):  # atomic_write / link temporaries of a killed run
        if p.is_file() or p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
