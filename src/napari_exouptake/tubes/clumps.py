"""Cell clumps: round blobs labelled apart and cut out of the network they do not run through."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _split_clumps(mask, min_diameter, min_len):
    """Label round clumps (blobs at least ``min_diameter`` wide, not elongated); remove from the
    network mask the pieces that are a clump with nothing longer than ``min_len`` attached."""
    clumps = np.zeros(mask.shape, np.int32)
    if not min_diameter or not mask.any():
        return mask, clumps
    from skimage.measure import regionprops
    from skimage.morphology import disk

    r = int(np.ceil(min_diameter / 2))
    dist = ndimage.distance_transform_edt(mask)
    core = dist >= r  # centres of discs of radius r that fit in the mask
    if not core.any():
        return mask, clumps
    blob = np.zeros_like(mask)
    clab, _ = ndimage.label(core)
    for sl in ndimage.find_objects(clab):  # grow each core back by r, locally (few, small)
        box = tuple(slice(max(a.start - r, 0), a.stop + r) for a in sl)
        blob[box] |= ndimage.binary_dilation(core[box], structure=disk(r))
    blob &= mask
    lab, n = ndimage.label(blob)
    keep = np.zeros(n + 1, bool)
    for p in regionprops(lab):  # loop over candidate clumps (few)
        if p.axis_major_length > 0 and p.axis_minor_length / p.axis_major_length >= 0.5:
            keep[p.label] = True
    if not keep.any():
        return mask, clumps
    ids = np.cumsum(keep) * keep
    clumps = ids[lab].astype(np.int32)
    # a clump the network does not run through (at most one tube touches it: it lies against
    # a tube or ends one) is cut out of the network mask; with >= 2 tubes attached (cells
    # gathered at a junction) the network runs through it; a clump embedded in a wider mask
    # region (more than half of a 5-px ring around it is mask), or whose cut would leave a
    # hole (tubes wrapped around it), is left alone
    mask = mask.copy()
    for k, sl in enumerate(ndimage.find_objects(clumps), start=1):  # loop over clumps (few)
        if sl is None:
            continue
        box = tuple(slice(max(a.start - 6, 0), a.stop + 6) for a in sl)
        own = clumps[box] == k
        ring = ndimage.binary_dilation(own, iterations=5) & ~ndimage.binary_dilation(own)
        touching = ring & mask[box] & (clumps[box] == 0)
        thin = touching.sum() < 0.5 * ring.sum()
        if thin and ndimage.label(touching, structure=np.ones((3, 3)))[1] <= 1:
            cut = mask[box] & ~ndimage.binary_dilation(own)
            bg, _ = ndimage.label(~cut)
            edge = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
            if np.isin(np.unique(bg[own]), edge).all():  # the cut opens onto the outside
                mask[box] = cut
    # pieces that are a clump and no network: everything left after removing the clump
    # (grown by a few px) is shorter than min_len
    comp, nc = ndimage.label(mask, structure=np.ones((3, 3)))
    rest = mask & ~ndimage.binary_dilation(clumps > 0, iterations=3)
    rest_area = np.bincount(comp[rest].ravel(), minlength=nc + 1)
    with_clump = np.unique(comp[clumps > 0])
    drop = np.zeros(nc + 1, bool)
    width = 2.0 * float(np.median(dist[mask & (dist < r)])) if (mask & (dist < r)).any() else 2.0
    drop[with_clump] = rest_area[with_clump] < min_len * max(width, 1.0)
    drop[0] = False
    return mask & ~drop[comp], clumps
