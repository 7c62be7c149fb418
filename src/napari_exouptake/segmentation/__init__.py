"""Cellpose segmentation (Cellpose 3.1 and 4 behind one interface).

The only package of napari-exouptake that imports ``torch`` or ``cellpose``, and it does so
inside functions, so ``import napari_exouptake`` stays light.

Modules
-------
engine
    :func:`segment` (cell labels + nucleus labels + nucleus -> cell map for one image),
    :func:`estimate_diameter`, the loaded-network cache and the CUDA out-of-memory fallback.
models
    :func:`resolve_model` (built-in name / file path / bundled demo model -> file on disk,
    failing fast offline), the Cellpose version, the "install the extra" error.
device
    :func:`resolve_device` ("auto" | "cpu" | "cuda" | "cuda:N" | "mps" -> the device used).
labels
    :func:`map_nuclei_to_cells` and the nucleus -> cell expansion (numpy / scikit-image).
training
    :func:`train_model` (train or fine-tune on image + label folders; weights saved fp16),
    :func:`holdout_split`.

Every public name is importable from ``napari_exouptake.segmentation``.
"""

from __future__ import annotations

from .device import resolve_device
from .engine import (
    Segmentation,
    SegmentationCancelled,
    clear_model_cache,
    estimate_diameter,
    eval_kwargs,
    segment,
)
from .labels import map_nuclei_to_cells
from .models import (
    DEMO_MODELS,
    CellposeMissingError,
    ModelNotAvailableError,
    ResolvedModel,
    cellpose_major_version,
    cellpose_version,
    require_cellpose,
    resolve_model,
)
from .training import holdout_split, train_model

# isort: split
# Private names that tests, scripts/ and benchmarks/ read through the package. To replace
# one in a test, patch the module that defines it (``segment`` looks its helpers up in
# ``segmentation.engine``), not this package.
from .engine import _MODEL_CACHE as _MODEL_CACHE
from .engine import _get_model as _get_model
from .labels import _expand as _expand
from .labels import _median_diameter as _median_diameter
from .models import _MODELS_DIR as _MODELS_DIR

__all__ = [
    "DEMO_MODELS",
    "CellposeMissingError",
    "ModelNotAvailableError",
    "ResolvedModel",
    "Segmentation",
    "SegmentationCancelled",
    "cellpose_major_version",
    "cellpose_version",
    "clear_model_cache",
    "eval_kwargs",
    "estimate_diameter",
    "holdout_split",
    "require_cellpose",
    "map_nuclei_to_cells",
    "resolve_device",
    "resolve_model",
    "segment",
    "train_model",
]
