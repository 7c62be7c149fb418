"""Block-wise segmentation of big 2-D images: segment overlapping blocks, stitch the labels.

Cellpose keeps flows and probabilities of the whole image in memory (several float32 arrays of
the image's size, plus the network's tiles), so a whole-well mosaic does not fit. Like Cellpose's
own distributed module (``cellpose.contrib.distributed_segmentation``), an image larger than
``segmentation.block_size_px`` on a side is cut into a grid of blocks; each block is segmented
with ``overlap`` extra pixels of context on every side (twice the cell diameter, so a cell that
straddles a seam is whole in both blocks that see it), the context is trimmed off, every block's
labels get their own range of ids, and labels that belong to one cell across a seam are merged:

* for two neighbouring blocks A and B, both were segmented on the strip where their padded
  regions overlap (``2 * overlap`` wide around the seam). A label of A and a label of B that both
  kept pixels in their own block (the cell straddles the seam) are one cell when they share at
  least half of the smaller one's pixels in that strip. Cellpose's module instead merges labels
  that touch across the face; comparing the two segmentations of the strip does not merge two
  neighbouring cells that merely touch at the seam.
* merges are closed transitively (a cell on a corner of four blocks), and the result is
  relabelled 1..N.

Memory: one block's Cellpose run (its padded region), the output label image (int32, 4 bytes
per pixel), and two strips per block. Measured numbers: ``docs/segmentation.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..progress import Cancel, Progress, check, report

__all__ = [
    "Block",
    "block_grid",
    "block_overlap_px",
    "needs_blocks",
    "segment_in_blocks",
    "MERGE_OVERLAP",
]

#: two labels seen by neighbouring blocks are one cell when they share this fraction of the
#: smaller label's pixels in the strip both blocks segmented
MERGE_OVERLAP = 0.5


@dataclass(frozen=True)
class Block:
    """One block of the grid: ``index`` (row, col), ``core`` (its own pixels) and ``padded``
    (core + overlap, clipped at the image border), each a ``(slice_y, slice_x)`` pair."""

    index: tuple[int, int]
    core: tuple[slice, slice]
    padded: tuple[slice, slice]


def block_overlap_px(diameter_px: float | None) -> int:
    """Context added on each side of a block: twice the cell diameter, as in Cellpose's
    distributed module (twice 30 px, Cellpose's default diameter, when it is unknown)."""
    return int(np.ceil(2 * (diameter_px or 30.0)))


def needs_blocks(shape_yx: tuple[int, int], block_size_px: int | None) -> bool:
    """True when an image of ``shape_yx`` is larger than ``block_size_px`` on a side."""
    return block_size_px is not None and max(shape_yx) > int(block_size_px)


def _edges(n: int, block: int) -> np.ndarray:
    """Block boundaries along one axis: ``ceil(n / block)`` blocks of (nearly) equal size."""
    k = max(1, -(-n // block))
    return np.linspace(0, n, k + 1).round().astype(int)


def block_grid(shape_yx: tuple[int, int], block_size_px: int, overlap_px: int) -> list[Block]:
    """The blocks of an image of ``shape_yx``: at most ``block_size_px`` on a side, all of
    nearly equal size, each padded by ``overlap_px`` (clipped at the image border), row-major."""
    h, w = (int(s) for s in shape_yx)
    ey, ex = _edges(h, int(block_size_px)), _edges(w, int(block_size_px))
    ov = int(overlap_px)
    out = []
    for i in range(len(ey) - 1):
        for j in range(len(ex) - 1):
            core = (slice(ey[i], ey[i + 1]), slice(ex[j], ex[j + 1]))
            padded = (
                slice(max(0, ey[i] - ov), min(h, ey[i + 1] + ov)),
                slice(max(0, ex[j] - ov), min(w, ex[j + 1] + ov)),
            )
            out.append(Block((i, j), core, padded))
    return out


def _intersect(a: tuple[slice, slice], b: tuple[slice, slice]) -> tuple[slice, slice]:
    return tuple(
        slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )


def _local(region: tuple[slice, slice], frame: tuple[slice, slice]) -> tuple[slice, slice]:
    """``region`` (image coordinates) in the coordinates of an array cut at ``frame``."""
    return tuple(
        slice(r.start - f.start, r.stop - f.start) for r, f in zip(region, frame, strict=True)
    )


def _pairs_to_merge(
    strip_a: np.ndarray, gid_a: np.ndarray, strip_b: np.ndarray, gid_b: np.ndarray
) -> np.ndarray:
    """Global-id pairs (k, 2) of labels that are one cell, from two segmentations of a strip.

    ``strip_a``/``strip_b``: local labels of blocks A and B on the same pixels; ``gid_*``: local
    id -> global id (0 = the label kept no pixel in its own block)."""
    a = strip_a.ravel().astype(np.int64)
    b = strip_b.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    area_a = np.bincount(a, minlength=len(gid_a))
    area_b = np.bincount(b, minlength=len(gid_b))
    key = a[both] * (len(gid_b) + 1) + b[both]
    uniq, inter = np.unique(key, return_counts=True)
    la, lb = np.divmod(uniq, len(gid_b) + 1)
    ga, gb = gid_a[la], gid_b[lb]
    smaller = np.minimum(area_a[la], area_b[lb])
    keep = (ga > 0) & (gb > 0) & (inter >= MERGE_OVERLAP * smaller)
    return np.stack([ga[keep], gb[keep]], axis=1)


def segment_in_blocks(
    segment_region: Callable[[tuple[slice, slice]], np.ndarray],
    shape_yx: tuple[int, int],
    *,
    block_size_px: int,
    overlap_px: int,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> np.ndarray:
    """Segment a big 2-D image block by block and stitch the labels.

    Parameters
    ----------
    segment_region : callable
        ``segment_region((slice_y, slice_x)) -> (h, w) int ndarray``: labels (0 = background) of
        that region of the image, segmented on its own. Called once per block, on the block's
        padded region; it reads the pixels itself, so a lazy image is read one block at a time.
    shape_yx : (int, int)
        Image shape in pixels.
    block_size_px : int
        Largest block side, without the overlap.
    overlap_px : int
        Context added on each side of a block (Cellpose's module uses twice the diameter).
    progress, cancel
        The package's progress-and-cancel protocol (:mod:`napari_exouptake.progress`);
        ``cancel`` is polled between blocks (raises :class:`~napari_exouptake.progress.Cancelled`).

    Returns
    -------
    (Y, X) int32 ndarray
        Labels 1..N, numbered in order of their first block (row-major).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = (int(s) for s in shape_yx)
    blocks = block_grid((h, w), block_size_px, overlap_px)
    out = np.zeros((h, w), dtype=np.int32)
    next_id = 1
    # per block: its padded labels on the strips shared with its right and lower neighbours,
    # and its local -> global id map; dropped once the lower neighbour has used them
    kept: dict[tuple[int, int], dict] = {}
    by_index = {b.index: b for b in blocks}
    pairs = []
    for n, blk in enumerate(blocks):
        check(cancel, "segmentation")
        report(progress, n / len(blocks), f"segmenting block {n + 1} of {len(blocks)}")
        lab = np.asarray(segment_region(blk.padded))
        ph = blk.padded[0].stop - blk.padded[0].start
        pw = blk.padded[1].stop - blk.padded[1].start
        if lab.shape != (ph, pw):
            raise ValueError(f"block labels of shape {lab.shape}, expected {(ph, pw)}")
        core = lab[_local(blk.core, blk.padded)]
        ids = np.unique(core)
        ids = ids[ids > 0]
        gid = np.zeros(int(lab.max()) + 1 if lab.size else 1, dtype=np.int64)
        gid[ids] = np.arange(next_id, next_id + len(ids))
        next_id += len(ids)
        if next_id >= 2**31:
            raise ValueError("more than 2**31 - 1 labels in one image")
        out[blk.core] = gid[core]
        i, j = blk.index
        for nb_index, side in (((i - 1, j), "down"), ((i, j - 1), "right")):
            if nb_index in kept:  # the upper and left neighbours are done already
                region, strip_nb = kept[nb_index][side]
                strip_me = lab[_local(region, blk.padded)]
                pairs.append(_pairs_to_merge(strip_nb, kept[nb_index]["gid"], strip_me, gid))
        mine = {"gid": gid}
        for nb_index, side in (((i + 1, j), "down"), ((i, j + 1), "right")):
            if nb_index in by_index:
                region = _intersect(blk.padded, by_index[nb_index].padded)
                mine[side] = (region, lab[_local(region, blk.padded)].copy())
        kept[blk.index] = mine
        kept.pop((i - 1, j), None)  # both its neighbours (right, lower) are done now
        del lab, core
    report(progress, 1.0, "stitching blocks")
    del kept
    n = next_id
    pairs = [p for p in pairs if len(p)]
    if pairs:
        p = np.concatenate(pairs)
        graph = coo_matrix((np.ones(len(p), np.int8), (p[:, 0], p[:, 1])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        # components numbered by their smallest member, then 1..N in that order (0 stays 0)
        first = np.full(comp.max() + 1, n, dtype=np.int64)
        np.minimum.at(first, comp, np.arange(n))
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        lut = rank[comp].astype(np.int32)  # label 0 is its own component, ranked first
        for blk in blocks:  # in place, one block at a time (no second full-size array)
            out[blk.core] = lut[out[blk.core]]
    return out
