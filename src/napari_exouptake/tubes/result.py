"""The result of a tube analysis (:class:`TubeResult`) and its image-level metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TubeResult:
    """Result of :func:`analyze_tubes`.

    Attributes
    ----------
    mask : (Y, X) bool ndarray
        Tube (vessel) mask after clean-up.
    skeleton : (Y, X) bool ndarray
        One-pixel-wide centre lines after spur pruning.
    junctions : (J, 2) float ndarray
        Junction centres (y, x), pixels; a junction is a cluster of skeleton
        branch points closer than about one tube width, with >= 3 arms.
    nodes : (N, 2) float ndarray
        Skeleton branch points (pixels with >= 3 skeleton neighbours after skan's
        graph construction), (y, x) pixels.
    extremities : (E, 2) float ndarray
        Free ends (y, x), pixels.
    segments : pandas.DataFrame
        One row per skeleton path: ``path_id``, ``kind`` ("segment": junction to
        junction, "branch": junction to extremity, "isolated": extremity to
        extremity or a closed loop without junction, "internal": a short link
        inside one junction cluster), ``junction_src``, ``junction_dst`` (-1 = an
        extremity), ``length_px``, ``length`` (in ``length_unit``),
        ``mean_width_px``, ``master`` (bool: part of the master tree).
    meshes : (Y, X) int32 ndarray
        Mesh labels (regions fully enclosed by tubes, area >= min_mesh_area_px), 0 elsewhere.
    metrics : dict[str, float | int | str]
        Image-level readouts, every key prefixed ``tube_`` (see ``docs/readouts.md``).
    pixel_size_um : float or None
        Pixel size used for physical units.
    clumps : (Y, X) int32 ndarray or None
        Round cell clumps (labels), kept out of the network length when not part of it.
    roi : (Y, X) bool ndarray or None
        The well's inside when the rim was excluded, else None.
    binning : int
        Binning factor of the analysed image: ``mask``, ``skeleton``, ``meshes``, ``clumps`` and
        ``roi`` are at the binned scale; coordinates, lengths and metrics are in input pixels.
    full_shape : (int, int) or None
        Shape of the input image.
    """

    mask: np.ndarray = field(repr=False)
    skeleton: np.ndarray = field(repr=False)
    junctions: np.ndarray
    nodes: np.ndarray
    extremities: np.ndarray
    segments: pd.DataFrame = field(repr=False)
    meshes: np.ndarray = field(repr=False)
    metrics: dict
    pixel_size_um: float | None = None
    clumps: np.ndarray | None = field(default=None, repr=False)
    roi: np.ndarray | None = field(default=None, repr=False)
    binning: int = 1
    full_shape: tuple[int, int] | None = None


def _mesh_and_area_metrics(ps, mesh_areas_px, mask, n_vessels, roi=None) -> dict:
    a = ps * ps
    n_mesh = len(mesh_areas_px)
    frac = float(mask[roi].mean()) if roi is not None and roi.any() else float(mask.mean())
    return {
        "tube_meshes": int(n_mesh),
        "tube_mesh_total_area_um2": float(mesh_areas_px.sum() * a),
        "tube_mesh_mean_area_um2": float(mesh_areas_px.mean() * a) if n_mesh else np.nan,
        "tube_vessel_area_fraction": frac,
        "tube_vessel_area_percent": 100.0 * frac,
        "tube_vessel_count": int(n_vessels),
    }


def _metrics_dict(
    ps,
    *,
    n_junctions,
    n_nodes,
    n_ext,
    seg,
    n_master_j,
    n_master_seg,
    master_len_px,
    mesh_areas_px,
    mask,
    n_vessels,
    width_px,
    unit,
    roi=None,
) -> dict:
    f = ps
    kinds = seg["kind"].to_numpy()
    lens = seg["length"].to_numpy()  # in the reported unit (binning included)

    def total(*ks):
        return float(lens[np.isin(kinds, ks)].sum())

    n_branches = int((kinds == "branch").sum())
    seg_len = total("segment", "internal")
    br_len = total("branch")
    iso_len = total("isolated")
    m = {
        "tube_length_unit": unit,
        "tube_total_length_um": seg_len + br_len + iso_len,
        "tube_junctions": int(n_junctions),
        "tube_nodes": int(n_nodes),
        "tube_extremities": int(n_ext),
        "tube_segments": int((kinds == "segment").sum()),
        "tube_branches": n_branches,
        "tube_isolated_segments": int((kinds == "isolated").sum()),
        "tube_master_junctions": int(n_master_j),
        "tube_master_segments": int(n_master_seg),
        "tube_master_segment_length_um": float(master_len_px * f),
        "tube_total_branching_length_um": seg_len + br_len,
        "tube_total_segment_length_um": seg_len,
        "tube_total_branch_length_um": br_len,
        "tube_total_isolated_length_um": iso_len,
        "tube_branching_interval_um": (
            float(master_len_px * f / n_branches) if n_branches and master_len_px else np.nan
        ),
        "tube_mean_width_um": float(width_px * f) if np.isfinite(width_px) else np.nan,
    }
    m.update(_mesh_and_area_metrics(ps, mesh_areas_px, mask, n_vessels, roi))
    return m


def _empty_result(mask: np.ndarray, ps: float, unit: str) -> TubeResult:
    empty = np.zeros((0, 2))
    seg = pd.DataFrame(
        {
            "path_id": pd.Series(dtype=int),
            "kind": pd.Series(dtype=str),
            "junction_src": pd.Series(dtype=int),
            "junction_dst": pd.Series(dtype=int),
            "length_px": pd.Series(dtype=float),
            "length": pd.Series(dtype=float),
            "mean_width_px": pd.Series(dtype=float),
            "master": pd.Series(dtype=bool),
        }
    )
    metrics = _metrics_dict(
        ps,
        n_junctions=0,
        n_nodes=0,
        n_ext=0,
        seg=seg,
        n_master_j=0,
        n_master_seg=0,
        master_len_px=0.0,
        mesh_areas_px=np.zeros(0),
        mask=mask,
        n_vessels=0,
        width_px=np.nan,
        unit=unit,
    )
    return TubeResult(
        mask=mask,
        skeleton=np.zeros_like(mask, bool),
        junctions=empty,
        nodes=empty,
        extremities=empty,
        segments=seg,
        meshes=np.zeros(mask.shape, np.int32),
        metrics=metrics,
        pixel_size_um=ps if unit == "um" else None,
    )
