"""Checks before any image is read: arguments, memory limit, channels, model, stale parts."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..config import AssayConfig, ConfigError, load_config
from .errors import BatchUsageError
from .inputs import InputFile, collect_inputs

__all__ = ["BYTES_PER_PIXEL", "TILED_BYTES_PER_PIXEL", "default_max_pixels"]

log = logging.getLogger(__name__)


def _prepare(
    inputs: Sequence[str | Path] | str | Path,
    config: AssayConfig | str | Path,
    out: str | Path,
    labels: str | Path | None,
    workers: int,
) -> tuple[AssayConfig, Path, list[InputFile]]:
    if not isinstance(config, AssayConfig):
        config = load_config(config)
    if not isinstance(workers, int) or workers < 1:
        raise BatchUsageError(f"workers must be a whole number >= 1, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BatchUsageError(f"--out {str(out)!r} is a file, not a folder")
    exclude = [out] + ([Path(labels)] if labels is not None and Path(labels).is_dir() else [])
    files = collect_inputs(inputs, exclude=exclude)
    out.mkdir(parents=True, exist_ok=True)
    return config, out, files


#: Memory budgeted per image pixel (all channels, planes and time points) when the default
#: pixel limit is worked out. Measured peak for the analysis with given labels: 38-66 bytes
#: per pixel (5-channel simulated 2048 x 2048 and 1024 x 1024 images); Cellpose needs more.
BYTES_PER_PIXEL = 100
#: The same for a file whose planes take the tiled path (``big_image_px``): measured 3.5 bytes
#: per pixel of the file for the whole command on a 16,000 x 16,000 x 3 image with labels.
TILED_BYTES_PER_PIXEL = 8


def _available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable``), or None when unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def default_max_pixels(workers: int = 1) -> int | None:
    """Largest image a worker may decode by default: available memory / workers / 100 B.

    Returns None (no limit) when the available memory cannot be read.
    """
    avail = _available_memory()
    if avail is None:
        return None
    return max(int(avail / max(workers, 1) / BYTES_PER_PIXEL), 1 << 20)


def _pixel_limit(max_pixels: int | None, workers: int, scheduler: str | None) -> int | None:
    if max_pixels is None:
        if scheduler not in (None, "local"):
            return None  # a remote cluster's memory is not this machine's
        return default_max_pixels(workers)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise BatchUsageError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    return max_pixels


#: the pre-flight channel check reads (lazily) at most this many inputs
_PREFLIGHT_FILES = 5


def _preflight_channels(config: AssayConfig, files: Sequence[InputFile]) -> None:
    """Check the config's channel roles against the inputs' channels before any work: a role
    that none of the first few readable inputs has is a usage error (exit code 2), not one
    failure per image. One odd file among good ones fails on its own; unreadable files are
    left to the batch."""
    from ..io import ImageReadError, read_image
    from ..pipeline import check_channels

    first_error: ConfigError | None = None
    checked = None
    for f in files[:_PREFLIGHT_FILES]:
        try:
            image = read_image(f.path, axes=config.axes, lazy=True)
        except ImageReadError:
            continue
        try:
            check_channels(config, image.channel_names)
            return
        except ConfigError as exc:
            first_error = first_error or exc
            checked = checked or f.path.name
    if first_error is not None:
        raise BatchUsageError(f"{first_error} (checked on {checked}, the first input)") from None


def _check_model(config: AssayConfig, scheduler: str | None) -> None:
    """Fail fast (usage error) when the segmentation model is not available here.

    Skipped for a remote Dask scheduler: the workers may see other paths.
    """
    if scheduler not in (None, "local"):
        return
    from ..segmentation import ModelNotAvailableError, resolve_model

    sc = config.segmentation
    try:
        for name in dict.fromkeys(n for n in (sc.model, sc.nuclei_model) if n):
            resolve_model(name)
    except ModelNotAvailableError as exc:
        raise BatchUsageError(str(exc)) from None


def _clean_stale(out: Path) -> None:
    """Remove temporary part folders left by a killed run (one batch per OUT at a time)."""
    parts = out / "parts"
    if not parts.is_dir():
        return
    for p in parts.iterdir():
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name) and p.is_dir():
            log.info("removing %s left by an interrupted run", p.name)
            shutil.rmtree(p, ignore_errors=True)
