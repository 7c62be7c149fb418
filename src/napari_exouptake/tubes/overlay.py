"""The QC picture of a tube analysis (:func:`tube_overlay`), in Angiogenesis Analyzer's colours."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._skeleton import at_analysed_scale, to_rgb_uint8
from .result import TubeResult

#: Colours used by :func:`tube_overlay` (RGB), after Angiogenesis Analyzer's result image:
#: segments magenta, master segments yellow, branches green, isolated elements blue,
#: junctions red, extremities cyan, meshes sky blue; plus ours: the tube mask (translucent
#: green, so kept dim tubes show), clumps (orange outline), outside the well (darkened).
OVERLAY_COLOURS = {
    "segment": (255, 0, 255),
    "master": (255, 255, 0),
    "branch": (0, 230, 0),
    "isolated": (40, 120, 255),
    "internal": (255, 0, 255),
    "junction": (255, 30, 30),
    "extremity": (0, 255, 255),
    "mesh": (110, 190, 255),
    "mask": (60, 255, 120),
    "clump": (255, 140, 0),
}


def tube_overlay(image: np.ndarray, result: TubeResult) -> np.ndarray:
    """QC picture of a tube analysis, in Angiogenesis Analyzer's colours.

    The image (percentile-stretched grey) with the tube mask tinted translucent green (dim
    tubes the ridge filter kept show as green over faint grey), meshes tinted sky blue, the
    skeleton drawn by path kind (segments magenta, master segments yellow, branches green,
    isolated elements blue), junctions as red disks, extremities as cyan disks, cell clumps
    outlined orange and everything outside the well (when the rim was excluded) darkened.
    See :data:`OVERLAY_COLOURS`.

    Parameters
    ----------
    image : (Y, X) ndarray
        The analysed image (any numeric dtype), at its input size; binned like the analysis
        when that was binned (``result.binning``).
    result : TubeResult
        Output of :func:`analyze_tubes` for that image.

    Returns
    -------
    (Y, X, 3) uint8 ndarray
        RGB picture at the analysed (binned) scale.
    """
    k = result.binning
    img = at_analysed_scale(image, k, result.full_shape, result.mask.shape)
    rgb = to_rgb_uint8(np.nan_to_num(img.astype(np.float64)), 0.5, 99.5).astype(np.float32)

    def tint(where, colour, alpha):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, np.float32)

    if result.roi is not None:
        rgb[~result.roi] *= 0.35
    tint(result.meshes > 0, OVERLAY_COLOURS["mesh"], 0.35)
    tint(result.mask, OVERLAY_COLOURS["mask"], 0.35)
    rgb = rgb.astype(np.uint8)
    if result.clumps is not None and result.clumps.any():
        from skimage.segmentation import find_boundaries

        edge = find_boundaries(result.clumps, mode="inner")
        rgb[ndimage.binary_dilation(edge)] = OVERLAY_COLOURS["clump"]
    line = max(1, int(round(max(rgb.shape[:2]) / 1000)))  # lines 1 px per 1000 px of side
    if result.skeleton.any():
        import skan

        sk = skan.Skeleton(result.skeleton)
        plab = np.asarray(sk.path_label_image())  # 1-based path ids, 0 = none
        seg = result.segments
        kinds = seg["kind"].to_numpy()
        if len(kinds) == sk.n_paths:
            kinds = np.where(seg["master"].to_numpy(), "master", kinds)
            table = np.zeros((len(kinds) + 1, 3), np.uint8)
            for name, c in OVERLAY_COLOURS.items():
                table[1:][kinds == name] = c
            if line > 1:
                plab = ndimage.grey_dilation(plab, size=(line, line))
            on = plab > 0
            rgb[on] = table[plab[on]]
        else:  # defensive: skeleton was edited after analysis
            rgb[result.skeleton] = OVERLAY_COLOURS["segment"]
    r_pt = 2 + line
    _paint_points(rgb, result.extremities / k, OVERLAY_COLOURS["extremity"], radius=r_pt - 1)
    _paint_points(rgb, result.junctions / k, OVERLAY_COLOURS["junction"], radius=r_pt)
    return rgb


def _paint_points(
    rgb: np.ndarray, points: np.ndarray, color: tuple[int, int, int], radius: int = 3
) -> None:
    """Draw filled disks at (y, x) ``points`` into ``rgb`` in place (vectorised)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return
    m = np.zeros(rgb.shape[:2], bool)
    iy = np.clip(np.round(pts[:, 0]).astype(int), 0, m.shape[0] - 1)
    ix = np.clip(np.round(pts[:, 1]).astype(int), 0, m.shape[1] - 1)
    m[iy, ix] = True
    if radius > 0:
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        m = ndimage.binary_dilation(m, structure=(yy**2 + xx**2) <= radius**2)
    rgb[m] = color
