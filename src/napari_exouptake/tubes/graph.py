"""The network graph of a binary tube mask: skeleton, junctions (clusters of branch points),
path kinds, master tree, meshes, lengths and widths (:func:`_analyze_mask`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage

from .._skeleton import path_lengths_smoothed, prune_skeleton
from .result import TubeResult, _empty_result, _mesh_and_area_metrics, _metrics_dict


class _Junctions(NamedTuple):
    """Skeleton graph nodes and the junctions their branch points form."""

    deg: np.ndarray  # degree of every graph node (a self-loop counted twice)
    is_branch_pt: np.ndarray  # node has >= 3 path ends
    short: np.ndarray  # per path: an internal link inside one junction cluster
    jid: np.ndarray  # junction id of every node (-1 = none)
    bp_nodes: np.ndarray  # ids of the branch-point nodes
    n_junctions: int


def _analyze_mask(
    mask: np.ndarray,
    *,
    pixel_size_um: float | None,
    min_segment_length_px: float,
    min_mesh_area_px: float,
    junction_merge_px: float | None,
    binning: int = 1,
    roi: np.ndarray | None = None,
) -> TubeResult:
    """Graph analysis of a binary tube mask (see :func:`analyze_tubes`); ``binning`` scales
    coordinates and lengths back to input pixels, ``roi`` (the well) bounds meshes and area."""
    import skan

    ps = pixel_size_um
    mask = np.asarray(mask, bool)
    skel, dist = _pruned_skeleton(mask, min_segment_length_px)
    _, n_vessels = ndimage.label(mask, structure=np.ones((3, 3)))
    meshes, mesh_areas = _meshes(mask, min_mesh_area_px, roi)
    unit = "um" if ps else "px"
    ps = (ps if ps else 1.0) * binning  # size of an analysed pixel, in the reported unit
    if skel.sum() < 2:
        res = _empty_result(mask, ps, unit)
        m = dict(res.metrics)
        m.update(_mesh_and_area_metrics(ps, mesh_areas, mask, n_vessels, roi))
        return TubeResult(**{**res.__dict__, "metrics": m, "meshes": meshes})

    sk = skan.Skeleton(skel)
    df = skan.summarize(sk, separator="_")
    src = df["node_id_src"].to_numpy()
    dst = df["node_id_dst"].to_numpy()
    length_px = path_lengths_smoothed(sk)
    # width in pixels across = 2 x (distance to the background) - 1 on the centre line
    width_px = np.maximum(2.0 * _path_means(sk, dist) - 1.0, 1.0)
    median_width = float(np.median(width_px)) if len(df) else 0.0
    merge_px = (
        junction_merge_px if junction_merge_px is not None else max(3.0, 2.0 * (median_width + 1.0))
    )
    g = _junction_graph(src, dst, length_px, merge_px)
    coords = np.asarray(sk.coordinates, dtype=np.float64)
    coords_out = coords * binning + (binning - 1) / 2.0  # centre of the binned block
    junctions = _junction_centres(g, coords_out)
    ext_nodes = np.flatnonzero(g.deg == 1)
    js, jd = g.jid[src], g.jid[dst]
    kind = _path_kinds(g.short, js, jd, g.is_branch_pt[src], g.is_branch_pt[dst])
    master = _master_tree(js, jd, kind, g.n_junctions)
    n_master_j, n_master_seg = _master_counts(js[master], jd[master], g.n_junctions)
    seg = _segments_table(kind, js, jd, length_px, width_px, master, binning, ps)
    metrics = _metrics_dict(
        ps,
        n_junctions=g.n_junctions,
        n_nodes=len(g.bp_nodes),
        n_ext=len(ext_nodes),
        seg=seg,
        n_master_j=n_master_j,
        n_master_seg=n_master_seg,
        master_len_px=float(length_px[master].sum()),
        mesh_areas_px=mesh_areas,
        mask=mask,
        n_vessels=n_vessels,
        width_px=float(np.average(width_px, weights=length_px)) if length_px.sum() else np.nan,
        unit=unit,
        roi=roi,
    )
    return TubeResult(
        mask=mask,
        skeleton=skel,
        junctions=junctions,
        nodes=coords_out[g.bp_nodes],
        extremities=coords_out[ext_nodes],
        segments=seg,
        meshes=meshes,
        metrics=metrics,
        pixel_size_um=None if unit == "px" else ps / binning,
    )


def _pruned_skeleton(mask: np.ndarray, min_segment_length_px: float):
    """(skeleton with spurs pruned, distance of every mask pixel to the background)."""
    from skimage.morphology import skeletonize

    skel = skeletonize(mask) if mask.any() else np.zeros_like(mask)
    # spurs from corners of thick tubes are up to about one tube width long
    dist = ndimage.distance_transform_edt(mask)
    spur_px = min_segment_length_px
    if skel.any():
        spur_px = max(spur_px, 1.5 * (2.0 * float(np.median(dist[skel])) - 1.0))
    return prune_skeleton(skel, spur_px), dist


def _junction_graph(
    src: np.ndarray, dst: np.ndarray, length_px: np.ndarray, merge_px: float
) -> _Junctions:
    """Branch points of the skan graph (paths ``src`` -> ``dst``) clustered into junctions:
    branch points joined by a path shorter than ``merge_px`` form one; a cluster with >= 3 arms
    is a junction."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # graph node degrees (counting a self-loop twice)
    n_graph = int(max(src.max(), dst.max())) + 1
    deg = np.bincount(src, minlength=n_graph) + np.bincount(dst, minlength=n_graph)
    is_branch_pt = deg >= 3
    # cluster branch points joined by short paths into junctions
    short = is_branch_pt[src] & is_branch_pt[dst] & (length_px < merge_px) & (src != dst)
    g = coo_matrix((np.ones(int(short.sum())), (src[short], dst[short])), shape=(n_graph, n_graph))
    _, comp = connected_components(g, directed=False)
    # external degree of each cluster: path ends that are not internal links
    ext = ~short
    cdeg = np.bincount(comp[src[ext]], minlength=n_graph) + np.bincount(
        comp[dst[ext]], minlength=n_graph
    )
    bp_nodes = np.flatnonzero(is_branch_pt)
    junction_comp = np.unique(comp[bp_nodes])
    junction_comp = junction_comp[cdeg[junction_comp] >= 3]
    jid = np.full(n_graph, -1)
    jid_of_comp = np.full(n_graph, -1)
    jid_of_comp[junction_comp] = np.arange(len(junction_comp))
    jid[bp_nodes] = jid_of_comp[comp[bp_nodes]]
    return _Junctions(deg, is_branch_pt, short, jid, bp_nodes, len(junction_comp))


def _junction_centres(g: _Junctions, coords_out: np.ndarray) -> np.ndarray:
    """(J, 2) mean (y, x) of each junction's branch points."""
    if not g.n_junctions:
        return np.zeros((0, 2))
    jid, bp_nodes = g.jid, g.bp_nodes
    sel = bp_nodes[jid[bp_nodes] >= 0]
    cnt = np.bincount(jid[sel], minlength=g.n_junctions)
    return np.stack(
        [np.bincount(jid[sel], coords_out[sel, k], g.n_junctions) / cnt for k in (0, 1)],
        1,
    )


def _path_kinds(
    short: np.ndarray, js: np.ndarray, jd: np.ndarray, bp_src: np.ndarray, bp_dst: np.ndarray
) -> np.ndarray:
    """Kind of every path from its ends' junctions ``js``, ``jd`` (-1 = none) and whether its
    ends are branch points: "internal", "segment", "branch" or "isolated"."""
    kind = np.where(
        short,
        "internal",
        np.where(
            (js >= 0) & (jd >= 0),
            "segment",
            np.where((js >= 0) | (jd >= 0), "branch", "isolated"),
        ),
    )
    # a path between two branch points that did not form a junction (cluster with
    # < 3 arms) counts as a segment if both ends are branch points, else by its ends
    return np.where(
        (kind == "isolated") & (bp_src | bp_dst),
        np.where(bp_src & bp_dst, "segment", "branch"),
        kind,
    )


def _segments_table(kind, js, jd, length_px, width_px, master, binning, ps) -> pd.DataFrame:
    """``TubeResult.segments``: one row per path, lengths and widths in input pixels and in the
    reported unit (``ps``: size of an analysed pixel in it)."""
    return pd.DataFrame(
        {
            "path_id": np.arange(len(kind)),
            "kind": kind,
            "junction_src": js,
            "junction_dst": jd,
            "length_px": length_px * binning,
            "length": length_px * ps,
            "mean_width_px": width_px * binning,
            "master": master,
        }
    )


def _master_tree(js: np.ndarray, jd: np.ndarray, kind: np.ndarray, n_j: int) -> np.ndarray:
    """Boolean mask of paths in the master tree.

    Angiogenesis Analyzer's master tree: repeatedly delete branches (paths with
    a free end) until none is left; what remains are loops of segments joined at
    junctions. Internal links and isolated elements never belong to it.
    """
    alive = kind == "segment"
    for _ in range(10_000):
        if not alive.any():
            break
        d = np.bincount(js[alive], minlength=n_j) + np.bincount(jd[alive], minlength=n_j)
        dead_end = alive & ((d[js] == 1) | (d[jd] == 1))
        if not dead_end.any():
            break
        alive &= ~dead_end
    return alive


def _master_counts(js: np.ndarray, jd: np.ndarray, n_j: int) -> tuple[int, int]:
    """(master junctions, master segments) of the master tree.

    Master junctions are junctions with >= 3 master paths; master segments are
    the chains of master paths between master junctions (junctions left with
    two master paths are passed through), plus one per closed loop that has no
    master junction.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(js) == 0:
        return 0, 0
    d = np.bincount(js, minlength=n_j) + np.bincount(jd, minlength=n_j)
    mj = d >= 3
    n_seg_ends = int(d[mj].sum())
    g = coo_matrix((np.ones(len(js)), (js, jd)), shape=(n_j, n_j))
    _, comp = connected_components(g, directed=False)
    used = d > 0
    comps_with_mj = np.unique(comp[mj])
    comps_used = np.unique(comp[used])
    pure_loops = len(np.setdiff1d(comps_used, comps_with_mj))
    return int(mj.sum()), n_seg_ends // 2 + pure_loops


def _meshes(
    mask: np.ndarray, min_area: float, roi: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label enclosed background regions (not touching the border or leaving ``roi``, area >=
    min_area)."""
    lab, n = ndimage.label(~mask)
    if n == 0:
        return np.zeros(mask.shape, np.int32), np.zeros(0)
    areas = np.bincount(lab.ravel()).astype(float)
    ok = areas >= min_area
    ok[0] = False
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    ok[border] = False
    if roi is not None:
        ok[np.unique(lab[~roi])] = False
    new = np.zeros(n + 1, np.int32)
    new[ok] = np.arange(1, int(ok.sum()) + 1)
    return new[lab], areas[ok]


def _path_means(skel_obj, values: np.ndarray) -> np.ndarray:
    """Mean of a (Y, X) ``values`` image over the pixels of every skan path."""
    n = skel_obj.n_paths
    idx = [np.asarray(skel_obj.path_coordinates(i), dtype=int) for i in range(n)]
    if n == 0:
        return np.zeros(0)
    counts = np.array([len(c) for c in idx])
    allc = np.concatenate(idx)
    sums = np.bincount(np.repeat(np.arange(n), counts), values[allc[:, 0], allc[:, 1]], n)
    return sums / np.maximum(counts, 1)
