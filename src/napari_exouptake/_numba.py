"""Compiling the package's few numba kernels (numba is imported only when one is first used)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def njit_cached(func: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``numba.njit(cache=True, **options)(func)``, or without the on-disk cache where numba
    finds no writable cache location (read-only install and home directory): then the kernel
    is compiled once per process (~1 s) instead of loaded from disk."""
    import numba

    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
        logger.info("numba cannot cache %s (%s): compiling it in this process", func.__name__, exc)
        return numba.njit(cache=False, **options)(func)
