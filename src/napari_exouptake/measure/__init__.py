"""Per-cell measurement, spot-to-cell assignment, thresholds and positivity calls.

Everything here is vectorised over cells and spots, for 2D ``(Y, X)`` and 3D ``(Z, Y, X)``
label images alike. Per-cell sums use a run-length view of the labels (``runs.py``): one
pass finds the runs of equal label along each row, then every channel costs one sequential
pass over the cell runs (a small numba kernel), and areas and centroids are closed-form sums
over runs; ``np.bincount`` gathers runs into cells. 12.0-13.6x faster than
``regionprops_table`` for the same columns on a 2048 x 2048, 4-channel, 923-cell image
(benchmarks/quantify.py, best of 5; 8.2x with ``np.add.reduceat`` before).

Column definitions (see ``docs/quantification.md``):

``cell_id``, ``area_px`` (pixels; voxels in 3D), ``area_um2`` (2D, pixel size known),
``volume_um3`` (3D, pixel size and z step known), ``centroid_y``, ``centroid_x`` (``centroid_z``),
``exo_spot_count`` (detected puncta whose rounded position lies in the cell),
``exo_spot_estimate`` (sum of their cluster-aware ``n_estimate``),
``exo_integrated_intensity`` (sum of the puncta's background-corrected ``intensity``),
``exo_mean_intensity`` (mean raw exosome-channel value over the cell),
``exo_excess_intensity`` (sum over the cell of exosome channel minus ``exo_background``: uptake
including dim, undetected material), ``exo_area_fraction`` (fraction of the cell's pixels within
``spot_radius_px`` of a punctum) and, with nuclei, ``exo_nuc_dist_px`` / ``exo_nuc_dist_um``
(mean distance of the cell's puncta to its nuclear centroid) and ``exo_perinuclear_index``
(that distance over the mean distance of all the cell's pixels: < 1 = perinuclear enrichment).
Per marker ``<name>_mean_intensity``, ``<name>_integrated_intensity`` (raw sum) and, with
nuclei, ``<name>_nuclear_mean``, ``<name>_cytoplasmic_mean``, ``<name>_nc_ratio``.

Modules: ``assign.py`` (spots -> cells), ``cells.py`` (:func:`measure_cells`, in named steps),
``runs.py`` (the run-length view and its numba kernel), ``tiled.py`` (the same table and
assignment over bands of rows of a big image), ``thresholds.py`` (automatic and control
thresholds), ``positivity.py`` (positivity rules and their records), ``summary.py``
(per-image summary), ``_inputs.py`` (input checks shared by the steps).
"""

from __future__ import annotations

from .assign import assign_spots
from .cells import measure_cells
from .positivity import apply_positivity, positivity_calls
from .summary import summarize_image
from .thresholds import (
    FALLBACK_ROBUST_SD,
    MIN_AUTO_CELLS,
    MIN_MINOR_FRACTION,
    MIN_SEPARATION_D,
    auto_threshold,
    control_threshold,
    mixture_threshold,
)
from .tiled import TILED_BAND_ROWS, assign_spots_tiled, measure_cells_tiled

__all__ = [
    "FALLBACK_ROBUST_SD",
    "MIN_AUTO_CELLS",
    "MIN_MINOR_FRACTION",
    "MIN_SEPARATION_D",
    "TILED_BAND_ROWS",
    "apply_positivity",
    "assign_spots",
    "assign_spots_tiled",
    "auto_threshold",
    "control_threshold",
    "measure_cells",
    "measure_cells_tiled",
    "mixture_threshold",
    "positivity_calls",
    "summarize_image",
]
