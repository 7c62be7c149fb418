"""Compute devices: CUDA > MPS > CPU, torch threads, out-of-memory detection.

torch is imported inside the functions only.
"""

from __future__ import annotations

import os


def _set_threads() -> None:
    import torch

    n = int(os.environ.get("EXOUPTAKE_TORCH_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def resolve_device(spec: str | None = "auto") -> str:
    """Resolve a device request to the torch device string that will be used.

    Parameters
    ----------
    spec : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or ``"mps"``.

    Returns
    -------
    str
        ``"cpu"``, ``"cuda:N"`` or ``"mps"``.

    Raises
    ------
    ValueError
        Unknown spec, or an explicitly requested accelerator that is not available.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available")
        return "mps"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        idx = 0 if spec == "cuda" else spec.split(":", 1)[1]
        try:
            idx = int(idx)
        except ValueError:
            raise ValueError(f"bad CUDA device {spec!r}: expected 'cuda:N'") from None
        n = torch.cuda.device_count()
        if not 0 <= idx < n:
            raise ValueError(f"device {spec!r} requested but only {n} CUDA device(s) exist")
        return f"cuda:{idx}"
    raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
