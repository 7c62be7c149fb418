"""Label post-processing (numpy / scipy / scikit-image only): nucleus -> cell map, expansion."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("napari_exouptake.segmentation")


def _median_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter (pixels) of the objects in a label image."""
    counts = np.bincount(labels.ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.sqrt(np.median(counts) * 4.0 / np.pi))


def map_nuclei_to_cells(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Map every nucleus to the cell it overlaps most (vectorised majority overlap).

    Parameters
    ----------
    nuclei, cells : (Y, X) or (Z, Y, X) integer ndarray
        Label images of the same shape (0 = background).

    Returns
    -------
    (nuclei.max() + 1,) int64 ndarray
        ``m[nucleus_id] = cell_id`` (0 when the nucleus overlaps no cell; ``m[0] = 0``).
    """
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    if nuclei.shape != cells.shape:
        raise ValueError(f"nuclei shape {nuclei.shape} != cells shape {cells.shape}")
    n_nuc = int(nuclei.max()) if nuclei.size else 0
    out = np.zeros(n_nuc + 1, dtype=np.int64)
    sel = (nuclei > 0) & (cells > 0)
    if not sel.any():
        return out
    nv = nuclei[sel].astype(np.int64)
    cv = cells[sel].astype(np.int64)
    key = nv * (int(cv.max()) + 1) + cv
    uniq, counts = np.unique(key, return_counts=True)
    nu, cu = np.divmod(uniq, int(cv.max()) + 1)
    order = np.lexsort((counts, nu))  # by nucleus, then count ascending
    nu, cu = nu[order], cu[order]
    last = np.r_[nu[1:] != nu[:-1], True]  # last row of each nucleus = largest overlap
    out[nu[last]] = cu[last]
    return out


def _expand(
    nuclei: np.ndarray,
    distance_px: float,
    method: str,
    signal: np.ndarray | None,
    spacing: tuple | None = None,
) -> np.ndarray:
    """Grow cell labels from nucleus labels (CellProfiler IdentifySecondaryObjects style).

    ``distance``: every pixel within ``distance_px`` of a nucleus goes to the nearest one.
    ``watershed``: watershed on the inverted smoothed ``signal`` seeded by the nuclei,
    limited to ``distance_px`` from a nucleus and to pixels above an Otsu threshold of the
    signal (nuclei always kept).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels, watershed

    if nuclei.max() == 0 or distance_px <= 0:
        return nuclei.copy()
    if method == "distance" or signal is None:
        if method == "watershed":
            logger.warning(
                "expand_method 'watershed' needs a cell or exosome channel; using 'distance'"
            )
        if spacing is not None:
            return expand_labels(nuclei, distance=distance_px, spacing=spacing)
        return expand_labels(nuclei, distance=distance_px)
    if method != "watershed":
        raise ValueError(f"expand_method must be 'distance' or 'watershed', got {method!r}")
    from skimage.filters import threshold_otsu

    sig = ndi.gaussian_filter(np.asarray(signal, dtype=np.float32), 1.0)
    dist = ndi.distance_transform_edt(nuclei == 0, sampling=spacing)
    within = dist <= distance_px
    try:
        thr = threshold_otsu(sig[within]) if np.ptp(sig[within]) > 0 else -np.inf
    except ValueError:
        thr = -np.inf
    mask = (within & (sig >= thr)) | (nuclei > 0)
    return watershed(-sig, markers=nuclei, mask=mask).astype(nuclei.dtype)
