"""Collagen readouts of one 2D image: area, orientation/alignment and fibre network.

Inputs: a channel in which collagen is bright (Collagen I immunofluorescence,
SHG, picrosirius red under polarisation, or a colour-deconvolved / inverted
bright-field picrosirius channel; ``bright_collagen=False`` inverts).

Angle convention
----------------
Every angle is in degrees **counter-clockwise from the image x-axis** (the
column axis, pointing right) as the image is displayed (row 0 at the top), in
``[0, 180)``: 0 = horizontal, 90 = vertical, 45 = running from bottom-left to
top-right on screen. Measured against CurveAlign's saved outputs, CurveAlign's
fibre angles use this same convention (see ``docs/readouts.md`` and
``benchmarks/collagen_curvealign.py``), so no conversion is needed.
Orientation is axial (0 == 180), so statistics use doubled angles.

Alignment
---------
``collagen_coherency`` is OrientationJ's coherency of the structure tensor summed
over the collagen mask: ``sqrt((Sxx - Syy)^2 + 4 Sxy^2) / (Sxx + Syy)``, i.e. the
resultant length of the doubled local angles weighted by local gradient energy
and local coherency (0 = isotropic, 1 = perfectly parallel).
``collagen_fibre_alignment`` is the unweighted resultant length of the doubled
angles sampled along fibre centre lines, the same statistic as CurveAlign's
"coefficient of alignment".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from ._skeleton import (
    at_analysed_scale,
    binned_plane,
    binning_for,
    check_image2d,
    check_params,
    check_pixel_size,
    check_thresholds,
    otsu_or_none,
    path_lengths_smoothed,
    prune_skeleton,
    to_rgb_uint8,
)

__all__ = [
    "CollagenResult",
    "analyze_collagen",
    "axial_mean_deg",
    "collagen_overlay",
    "collagen_per_cell",
    "structure_tensor_orientation",
]

log = logging.getLogger(__name__)


def _li(x):
    from skimage.filters import threshold_li

    return threshold_li(x)


def _triangle(x):
    from skimage.filters import threshold_triangle

    return threshold_triangle(x)


_AUTO_THRESHOLDS = {"otsu": None, "li": _li, "triangle": _triangle}


@dataclass(frozen=True)
class CollagenResult:
    """Result of :func:`analyze_collagen`.

    Attributes
    ----------
    mask : (Y, X) bool ndarray
        Collagen-positive pixels.
    fibre_mask : (Y, X) bool ndarray
        Ridge-filter fibre mask (within ``mask``).
    skeleton : (Y, X) bool ndarray
        Fibre centre lines.
    orientation_deg : (Y, X) float ndarray
        Local fibre orientation (degrees CCW from the x-axis, [0, 180)).
    coherency : (Y, X) float ndarray
        Local structure-tensor coherency in [0, 1].
    angle_hist : (n_bins,) float ndarray
        Fraction of orientation energy per angle bin (sums to 1; zeros when no collagen).
    angle_bin_edges : (n_bins + 1,) float ndarray
        Bin edges, degrees.
    metrics : dict[str, float | int | str]
        Image-level readouts, every key prefixed ``collagen_``.
    pixel_size_um : float or None
        Size of an input pixel (not of an analysed one when binned).
    binning : int
        The image was analysed binned ``binning`` x ``binning`` (``max_side_px``); the arrays
        above are at the binned scale. ``full_shape``: the input's shape.
    """

    mask: np.ndarray = field(repr=False)
    fibre_mask: np.ndarray = field(repr=False)
    skeleton: np.ndarray = field(repr=False)
    orientation_deg: np.ndarray = field(repr=False)
    coherency: np.ndarray = field(repr=False)
    angle_hist: np.ndarray
    angle_bin_edges: np.ndarray
    metrics: dict
    pixel_size_um: float | None = None
    binning: int = 1
    full_shape: tuple = ()


def structure_tensor_orientation(
    image2d: np.ndarray, tensor_sigma_px: float = 2.0, gradient_sigma_px: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local orientation by the structure tensor (OrientationJ-style).

    Parameters
    ----------
    image2d : (Y, X) ndarray
    tensor_sigma_px : float
        Gaussian window of the tensor average, pixels.
    gradient_sigma_px : float
        Gaussian derivative scale, pixels.

    Returns
    -------
    orientation_deg : (Y, X) float ndarray
        Fibre (ridge) direction, degrees CCW from the x-axis in [0, 180).
    coherency : (Y, X) float ndarray
        ``sqrt((Jxx - Jyy)^2 + 4 Jxy^2) / (Jxx + Jyy)`` in [0, 1] (0 where flat).
    tensor : (3, Y, X) float ndarray
        Smoothed tensor components (Jxx, Jyy, Jxy), x = columns, y = rows (down).
    """
    img = check_image2d(image2d)
    gx = ndimage.gaussian_filter(img, gradient_sigma_px, order=(0, 1))
    gy = ndimage.gaussian_filter(img, gradient_sigma_px, order=(1, 0))
    jxx = ndimage.gaussian_filter(gx * gx, tensor_sigma_px)
    jyy = ndimage.gaussian_filter(gy * gy, tensor_sigma_px)
    jxy = ndimage.gaussian_filter(gx * gy, tensor_sigma_px)
    orientation, coh = _tensor_angle_coherency(jxx, jyy, jxy)
    return orientation, coh, np.stack([jxx, jyy, jxy])


def _tensor_angle_coherency(jxx, jyy, jxy):
    """Fibre angle (deg CCW from x, [0, 180)) and coherency of (summed) tensors."""
    jxx, jyy, jxy = (np.asarray(a, dtype=np.float64) for a in (jxx, jyy, jxy))
    # dominant gradient direction in image coordinates (y down): 0.5 atan2(2Jxy, Jxx - Jyy);
    # the fibre runs perpendicular to it; flipping y makes the angle counter-clockwise.
    grad_img = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    angle = np.rad2deg(-(grad_img + np.pi / 2)) % 180.0
    trace = jxx + jyy
    aniso = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        coh = np.where(trace > 1e-12 * max(float(np.max(trace)), 1e-300), aniso / trace, 0.0)
    return angle, np.clip(coh, 0.0, 1.0)


def axial_mean_deg(
    angles_deg: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """Mean direction and resultant length of axial angles (period 180 deg).

    Parameters
    ----------
    angles_deg : (N,) array
        Angles in degrees (any range; 0 and 180 are the same orientation).
    weights : (N,) array, optional
        Non-negative weights.

    Returns
    -------
    mean_deg : float
        Mean orientation in [0, 180); NaN when undefined (no data or R = 0).
    resultant : float
        Resultant length of the doubled angles in [0, 1] (1 = all parallel);
        0.0 when there is no data.
    """
    a = np.deg2rad(2.0 * np.asarray(angles_deg, dtype=np.float64).ravel())
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    sw = w.sum()
    if a.size == 0 or sw <= 0:
        return float("nan"), 0.0
    z = (w * np.exp(1j * a)).sum() / sw
    r = float(abs(z))
    mean = float(np.rad2deg(np.angle(z)) / 2.0 % 180.0) if r > 1e-12 else float("nan")
    return mean, r


def _lacunarity(mask: np.ndarray, box_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)) -> float:
    """Mean gliding-box lacunarity (variance / mean^2 of box mass) over box sizes.

    Uses every box position (summed-area table); box sizes larger than half the
    short image side are skipped. Returns 0.0 for an empty or full mask.
    """
    m = np.asarray(mask, dtype=np.float64)
    if m.sum() == 0 or m.all():
        return 0.0
    sat = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    vals = []
    for r in box_sizes:
        if r > min(m.shape) // 2:
            break
        mass = sat[r:, r:] - sat[:-r, r:] - sat[r:, :-r] + sat[:-r, :-r]
        mu = mass.mean()
        vals.append(mass.var() / (mu * mu))
    return float(np.mean(vals)) if vals else 0.0


def analyze_collagen(
    image2d: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    threshold: Literal["auto"] | float = "auto",
    tensor_sigma_px: float = 2.0,
    ridge_sigma_px: float = 2.0,
    gradient_sigma_px: float = 1.0,
    smoothing_sigma_px: float = 1.0,
    bright_collagen: bool = True,
    ridge_threshold: Literal["auto"] | float = "auto",
    min_fibre_length_px: float = 10.0,
    n_angle_bins: int = 12,
    threshold_method: Literal["otsu", "li", "triangle"] = "otsu",
    max_side_px: int | None = 2048,
) -> CollagenResult:
    """Collagen area, orientation, alignment and fibre-network readouts.

    Parameters
    ----------
    image2d : (Y, X) ndarray
        Collagen channel (bright collagen). 3D input is rejected: project it first.
    pixel_size_um : float, optional
        Pixel size, micrometres; lengths/widths in um when given, else px
        (``metrics["collagen_length_unit"]``).
    threshold : "auto" or float
        Collagen mask threshold on the Gaussian-smoothed image (input intensity
        units); "auto" = computed with ``threshold_method``.
    tensor_sigma_px : float
        Structure-tensor window sigma, pixels (OrientationJ "local window").
    ridge_sigma_px : float
        Scale of the Sato ridge filter, pixels (about the fibre radius).
    gradient_sigma_px : float
        Gaussian-derivative sigma for the tensor, pixels.
    smoothing_sigma_px : float
        Gaussian smoothing before the mask threshold, pixels.
    bright_collagen : bool
        False inverts the image first (e.g. picrosirius red in bright field).
    ridge_threshold : "auto" or float
        Threshold on the Sato ridge response inside the collagen mask; "auto" = Otsu.
    min_fibre_length_px : float
        Fibre skeleton spurs and isolated pieces shorter than this are removed, pixels.
    n_angle_bins : int
        Number of bins of the orientation histogram over [0, 180).
    threshold_method : {"otsu", "li", "triangle"}
        Automatic threshold for ``threshold="auto"``. Otsu suits images with a
        real background level (immunofluorescence); on sparse SHG images it keeps
        only the brightest fibres (area 3 % vs 15 % with "li" on CurveAlign's
        2B_H9_SHG1), while the mean angle moves by about 2 deg.
    max_side_px : int or None
        Images whose longer side exceeds this are analysed binned by an integer factor (mean of
        k x k blocks; memory and time of a whole-slide image); the pixel parameters above are
        then in pixels of the binned image, lengths and widths are reported in input pixels
        (or um), and ``metrics["collagen_analysis_binning"]`` says the factor. None: never.

    Returns
    -------
    CollagenResult

    Raises
    ------
    ValueError
        If the image is not 2D, has NaN/inf, or a parameter is out of range.
    """
    full_shape = tuple(np.shape(image2d))
    binning = binning_for(full_shape, max_side_px) if len(full_shape) == 2 else 1
    if binning > 1:  # a big image: binned as float32 first (a lazy one chunk-wise)
        img = binned_plane(image2d, max_side_px)[0].astype(np.float64)
        log.info("collagen: %s image binned %dx -> %s", full_shape, binning, img.shape)
    else:
        img = check_image2d(np.asarray(image2d))
    ps = check_pixel_size(pixel_size_um)
    check_params(
        positive=True,
        tensor_sigma_px=tensor_sigma_px,
        ridge_sigma_px=ridge_sigma_px,
        gradient_sigma_px=gradient_sigma_px,
    )
    if int(n_angle_bins) < 2:
        raise ValueError(f"n_angle_bins must be >= 2, got {n_angle_bins!r}")
    check_thresholds(threshold=threshold, ridge_threshold=ridge_threshold)
    if not bright_collagen:
        img = img.max() - img

    sm = ndimage.gaussian_filter(img, smoothing_sigma_px) if smoothing_sigma_px > 0 else img
    if threshold_method not in _AUTO_THRESHOLDS:
        raise ValueError(
            f"threshold_method must be one of {sorted(_AUTO_THRESHOLDS)}, got {threshold_method!r}"
        )
    if threshold == "auto":
        thr = otsu_or_none(sm)  # None when the image is flat
        if thr is not None and threshold_method != "otsu":
            thr = float(_AUTO_THRESHOLDS[threshold_method](sm))
        mask = np.zeros(img.shape, bool) if thr is None else sm > thr
    else:
        mask = sm > float(threshold)

    orientation, coh, (jxx, jyy, jxy) = structure_tensor_orientation(
        img, tensor_sigma_px, gradient_sigma_px
    )
    # global (OrientationJ "dominant direction") tensor over the collagen mask
    sxx, syy, sxy = jxx[mask].sum(), jyy[mask].sum(), jxy[mask].sum()
    if mask.any() and sxx + syy > 0:
        mean_angle, coherency = _tensor_angle_coherency(sxx, syy, sxy)
        mean_angle, coherency = float(mean_angle), float(coherency)
    else:
        mean_angle, coherency = float("nan"), 0.0
    # orientation histogram weighted by anisotropic energy (trace x coherency)
    edges = np.linspace(0.0, 180.0, int(n_angle_bins) + 1)
    w = np.sqrt((jxx[mask] - jyy[mask]) ** 2 + 4 * jxy[mask] ** 2)  # mask pixels only (memory)
    hist, _ = np.histogram(orientation[mask], bins=edges, weights=w)
    hist = hist / hist.sum() if hist.sum() > 0 else np.zeros(len(edges) - 1)

    fibre_mask, skel = _fibre_network(
        img, mask, ridge_sigma_px, ridge_threshold, min_fibre_length_px
    )
    net = _network_metrics(skel, fibre_mask, ps, binning)
    fib_mean, fib_align = axial_mean_deg(orientation[skel])

    metrics: dict = {
        "collagen_area_fraction": float(mask.mean()),
        "collagen_coherency": coherency,
        "collagen_mean_angle_deg": mean_angle,
        "collagen_fibre_alignment": float(fib_align),
        "collagen_fibre_mean_angle_deg": float(fib_mean),
        "collagen_local_coherency_mean": float(coh[mask].mean()) if mask.any() else 0.0,
        "collagen_mean_intensity": float(img[mask].mean()) if mask.any() else 0.0,
        **net,
    }
    for k in range(len(edges) - 1):
        metrics[f"collagen_angle_frac_{edges[k]:03.0f}_{edges[k + 1]:03.0f}"] = float(hist[k])
    if binning > 1:
        metrics["collagen_analysis_binning"] = int(binning)
    return CollagenResult(
        mask=mask,
        fibre_mask=fibre_mask,
        skeleton=skel,
        orientation_deg=orientation,
        coherency=coh,
        angle_hist=hist,
        angle_bin_edges=edges,
        metrics=metrics,
        pixel_size_um=ps,
        binning=binning,
        full_shape=tuple(full_shape),
    )


def _fibre_network(img, mask, ridge_sigma_px, ridge_threshold, min_len):
    """Sato ridge filter -> threshold inside the collagen mask -> pruned skeleton."""
    from skimage.filters import sato
    from skimage.morphology import skeletonize

    if not mask.any():
        z = np.zeros(img.shape, bool)
        return z, z
    ridge = sato(img, sigmas=[ridge_sigma_px], black_ridges=False, mode="reflect")
    if ridge_threshold == "auto":
        thr = otsu_or_none(ridge[mask])
        fib = np.zeros(img.shape, bool) if thr is None else (ridge > thr) & mask
    else:
        fib = (ridge > float(ridge_threshold)) & mask
    # drop specks smaller than a minimal fibre (length x ~ 2 px)
    lab, n = ndimage.label(fib, structure=np.ones((3, 3)))
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= max(4.0, 2.0 * min_len)
        keep[0] = False
        fib = keep[lab]
    skel = skeletonize(fib) if fib.any() else np.zeros_like(fib)
    skel = prune_skeleton(skel, min_len)
    return fib, skel


def _network_metrics(skel: np.ndarray, fib: np.ndarray, ps: float | None, binning: int = 1) -> dict:
    """TWOMBLI-style fibre network readouts of a skeleton and its fibre mask (lengths in um,
    else in input pixels: an analysed pixel is ``binning`` input pixels)."""
    f = (ps if ps else 1.0) * binning
    out = {
        "collagen_length_unit": "um" if ps else "px",
        "collagen_fibre_area_fraction": float(fib.mean()),
        "collagen_total_fibre_length": 0.0,
        "collagen_fibre_count": 0,
        "collagen_mean_fibre_length": float("nan"),
        "collagen_mean_fibre_width": float("nan"),
        "collagen_branchpoints": 0,
        "collagen_endpoints": 0,
        "collagen_lacunarity": _lacunarity(fib),
    }
    if skel.sum() < 2:
        return out
    import skan

    sk = skan.Skeleton(skel)
    df = skan.summarize(sk, separator="_")
    lengths = path_lengths_smoothed(sk)
    src = df["node_id_src"].to_numpy()
    dst = df["node_id_dst"].to_numpy()
    deg = np.bincount(src, minlength=len(sk.coordinates)) + np.bincount(
        dst, minlength=len(sk.coordinates)
    )
    coords = np.asarray(sk.coordinates, dtype=int)
    bp = np.zeros(skel.shape, bool)
    bp[coords[deg >= 3, 0], coords[deg >= 3, 1]] = True
    # adjacent branch-point pixels form one branch point (as ImageJ AnalyzeSkeleton)
    n_bp = ndimage.label(bp, structure=np.ones((3, 3)))[1]
    dist = ndimage.distance_transform_edt(fib)
    out.update(
        {
            "collagen_total_fibre_length": float(lengths.sum() * f),
            "collagen_fibre_count": int(len(lengths)),
            "collagen_mean_fibre_length": float(lengths.mean() * f),
            "collagen_mean_fibre_width": float((2.0 * dist[skel].mean() - 1.0) * f),
            "collagen_branchpoints": int(n_bp),
            "collagen_endpoints": int((deg == 1).sum()),
        }
    )
    return out


def collagen_per_cell(
    cells_labels: np.ndarray, collagen_image: np.ndarray, ring_width_px: float = 10
) -> pd.DataFrame:
    """Collagen intensity inside each cell and in a ring around it (secreted matrix).

    The ring is the band of pixels within ``ring_width_px`` of the cell that is
    closer to it than to any other cell (``skimage.segmentation.expand_labels``)
    and belongs to no cell.

    Parameters
    ----------
    cells_labels : (Y, X) or (Z, Y, X) int ndarray
        Cell labels, 0 = background.
    collagen_image : ndarray
        Collagen channel, same shape as ``cells_labels``.
    ring_width_px : float
        Ring width, pixels (>= 0; 0 gives an empty ring, NaN ring means).

    Returns
    -------
    pandas.DataFrame
        One row per cell id present (ascending): ``cell_id``,
        ``collagen_cell_mean``, ``collagen_ring_mean`` (NaN when the ring is
        empty, e.g. a cell surrounded by other cells), ``collagen_ring_area_px``.

    Raises
    ------
    ValueError
        On shape mismatch, non-integer labels, negative labels, NaN in the
        image or a negative ring width.
    """
    from skimage.segmentation import expand_labels

    lab = np.asarray(cells_labels)
    img = np.asarray(collagen_image)
    if lab.shape != img.shape:
        raise ValueError(
            f"cells_labels shape {lab.shape} does not match collagen_image shape {img.shape}"
        )
    if lab.ndim not in (2, 3):
        raise ValueError(f"cells_labels must be 2D or 3D, got {lab.ndim}D")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"cells_labels must be an integer label image, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError("cells_labels contains negative labels")
    if not np.isfinite(ring_width_px) or ring_width_px < 0:
        raise ValueError(f"ring_width_px must be >= 0, got {ring_width_px!r}")
    img = img.astype(np.float64, copy=False)
    if not np.isfinite(img).all():
        raise ValueError("collagen_image contains NaN/inf pixels")
    ids = np.unique(lab)
    ids = ids[ids > 0]
    cols = ["cell_id", "collagen_cell_mean", "collagen_ring_mean", "collagen_ring_area_px"]
    if ids.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=float if c != "cell_id" else int) for c in cols})
    n = int(ids.max()) + 1
    lab_i = lab.astype(np.int64, copy=False)
    cell_sum = np.bincount(lab_i.ravel(), img.ravel(), n)
    cell_n = np.bincount(lab_i.ravel(), minlength=n)
    ring = expand_labels(lab_i, distance=ring_width_px) if ring_width_px > 0 else lab_i.copy()
    ring[lab_i > 0] = 0
    ring_sum = np.bincount(ring.ravel(), img.ravel(), n)
    ring_n = np.bincount(ring.ravel(), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        ring_mean = np.where(ring_n[ids] > 0, ring_sum[ids] / ring_n[ids], np.nan)
    return pd.DataFrame(
        {
            "cell_id": ids,
            "collagen_cell_mean": cell_sum[ids] / cell_n[ids],
            "collagen_ring_mean": ring_mean,
            "collagen_ring_area_px": ring_n[ids],
        }
    )


def collagen_overlay(image: np.ndarray, result: CollagenResult) -> np.ndarray:
    """QC picture: orientation colour map on the collagen mask plus fibre centre lines.

    Inside the collagen mask the hue encodes the local fibre angle (0 deg red,
    60 deg green, 120 deg blue, back to red at 180), saturation the local
    coherency, brightness the image intensity (as OrientationJ's colour survey);
    outside it the image is grey. Fibre centre lines are white.

    Parameters
    ----------
    image : (Y, X) ndarray
        The analysed image (binned like the result when the result was binned).
    result : CollagenResult
        Output of :func:`analyze_collagen` for that image.

    Returns
    -------
    (Y, X, 3) uint8 ndarray
    """
    from skimage.color import hsv2rgb

    img = at_analysed_scale(image, result.binning, result.full_shape, result.mask.shape)
    grey = to_rgb_uint8(np.nan_to_num(img.astype(np.float64)))
    v = grey[..., 0].astype(np.float64) / 255.0
    hsv = np.stack(
        [result.orientation_deg / 180.0, np.clip(result.coherency * 1.5, 0, 1), 0.25 + 0.75 * v],
        axis=-1,
    )
    col = (hsv2rgb(hsv) * 255).astype(np.uint8)
    rgb = grey.copy()
    rgb[result.mask] = col[result.mask]
    rgb[result.skeleton] = 255
    return rgb
