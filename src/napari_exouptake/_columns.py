"""``columns.md``: every column of the written tables, its unit and how it is computed.

Written next to the tables by :func:`napari_exouptake.pipeline.write_outputs` and the batch
merge, so a results folder explains itself. Exact names first, then ``<marker>_...`` and
readout patterns; a column without an entry is listed as undocumented (a test keeps the demo's
columns all documented).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

__all__ = ["describe_column", "write_columns_doc"]

AU = "a.u. (camera counts)"

#: name -> (unit, how it is computed)
EXACT: dict[str, tuple[str, str]] = {
    # identity
    "image": ("-", "input file stem (made unique with its folder when stems repeat)"),
    "condition": ("-", "experimental condition (sample sheet, else `conditions:` globs)"),
    "cell_id": ("-", "label of the cell in `labels/<image>_cells.tif` (0 = background)"),
    "spot_id": ("-", "punctum number within its image, from 1"),
    "source_image": ("-", "input file the row comes from (stacks split into series/t/z)"),
    "series": ("-", "series index inside a multi-series file"),
    "t": ("-", "time point index"),
    "z": ("-", "z plane (-1: the whole volume)"),
    "dose": ("sample sheet unit", "dose from the sample sheet / conditions table"),
    "dose_unit": ("-", "unit of `dose`"),
    # cell geometry
    "area_px": ("px (voxels in 3D)", "pixels of the cell's label"),
    "area_um2": ("um^2", "`area_px` x pixel size^2"),
    "volume_um3": ("um^3", "voxels x pixel size^2 x z step"),
    "centroid_y": ("px", "mean row of the cell's pixels (image coordinates)"),
    "centroid_x": ("px", "mean column of the cell's pixels"),
    "centroid_z": ("planes", "mean z plane of the cell's voxels"),
    # uptake
    "exo_spot_count": (
        "puncta",
        "detected EV puncta whose rounded position lies in the cell (puncta-based)",
    ),
    "exo_spot_estimate": (
        "EVs",
        "sum of the cell's puncta's `n_estimate`: bright aggregates counted as several EVs",
    ),
    "exo_integrated_intensity": (
        AU,
        "sum of the cell's puncta's background-corrected `intensity` (puncta only: 0 for a "
        "cell without puncta, whatever its diffuse signal)",
    ),
    "exo_mean_intensity": (
        AU,
        "mean raw EV-channel value over all the cell's pixels (whole cell, background "
        "included: not 0 for a cell without puncta)",
    ),
    "exo_excess_intensity": (
        AU,
        "sum over the cell of (EV channel - median EV channel outside cells): whole-cell "
        "uptake including dim, undetected material",
    ),
    "exo_area_fraction": (
        "0-1",
        "fraction of the cell's pixels within one punctum radius of a punctum",
    ),
    "exo_nuc_dist_px": ("px", "mean distance of the cell's puncta to its nucleus centroid"),
    "exo_nuc_dist_um": ("um", "`exo_nuc_dist_px` x pixel size"),
    "exo_perinuclear_index": (
        "ratio",
        "`exo_nuc_dist_px` / mean distance of all the cell's pixels to the nucleus centroid "
        "(< 1: puncta gather around the nucleus)",
    ),
    "exo_positive": (
        "yes/no",
        "EV-positive call: rule and cut-off in run.json `positivity.exo` (docs/positivity.md)",
    ),
    "collagen_cell_mean": (AU, "mean collagen-channel value over the cell"),
    "collagen_ring_mean": (
        AU,
        "mean collagen-channel value in a ring around the cell (`collagen.ring_width_px`); "
        "empty ring: blank",
    ),
    "collagen_ring_area_px": ("px", "pixels of that ring"),
    # spots
    "y": ("px", "sub-pixel row of the punctum centre (image coordinates)"),
    "x": ("px", "sub-pixel column of the punctum centre"),
    "intensity": (AU, "background-corrected sum over a disc around the punctum"),
    "amplitude": (AU, "fitted background-corrected peak height"),
    "background": (AU, "median raw value on an annulus around the punctum"),
    "sigma_px": ("px", "fitted Gaussian width of the punctum"),
    "snr": ("ratio", "amplitude over the local noise standard deviation"),
    "n_estimate": (
        "EVs",
        "EVs in this punctum: intensity / typical single-punctum intensity, >= 1",
    ),
    "detected": ("yes/no", "punctum passed the detector's threshold"),
    "cluster_id": ("-", "puncta split from one merged peak share an id (0 = single)"),
    # images
    "n_cells": ("cells", "cells in the image"),
    "n_spots": ("puncta", "all detected puncta, extracellular included"),
    "n_spots_in_cells": ("puncta", "puncta inside a cell"),
    "mean_spots_per_cell": ("puncta", "mean of `exo_spot_count` over the image's cells"),
    "mean_spot_estimate_per_cell": ("EVs", "mean of `exo_spot_estimate` over the image's cells"),
    "mean_exo_integrated_intensity": (AU, "mean of `exo_integrated_intensity` over the cells"),
    "exo_positive_fraction": ("0-1", "fraction of the image's cells with `exo_positive`"),
    "tube_length_unit": ("-", "`um` when the pixel size is known, else `px` (tube lengths)"),
    "tube_total_length_um": ("um (px without pixel size)", "total skeleton length of the network"),
    "tube_junctions": ("count", "junctions (branch points, close ones merged)"),
    "tube_meshes": ("count", "closed loops of the network larger than `min_mesh_area_px`"),
    "collagen_length_unit": ("-", "`um` when the pixel size is known, else `px`"),
    "collagen_area_fraction": ("0-1", "fraction of the image above the collagen threshold"),
    "collagen_coherency": (
        "0-1",
        "structure-tensor coherency over the collagen mask (1 = aligned)",
    ),
    "collagen_mean_angle_deg": ("deg, 0-180", "axial mean fibre orientation (structure tensor)"),
}

#: (regex, unit, how) for name patterns; ``{m}`` is the matched marker/prefix
PATTERNS: list[tuple[str, str, str]] = [
    (r"(?P<m>\w+)_mean_intensity", AU, "mean raw {m} value over the cell's pixels"),
    (r"(?P<m>\w+)_integrated_intensity", AU, "sum of raw {m} values over the cell's pixels"),
    (r"(?P<m>\w+)_nuclear_mean", AU, "mean raw {m} value over the cell's nucleus"),
    (r"(?P<m>\w+)_cytoplasmic_mean", AU, "mean raw {m} value over the cell outside its nucleus"),
    (r"(?P<m>\w+)_nc_ratio", "ratio", "`{m}_nuclear_mean` / `{m}_cytoplasmic_mean`"),
    (
        r"(?P<m>\w+)_positive",
        "yes/no",
        "{m}-positive call: rule and cut-off in run.json `positivity.{m}`",
    ),
    (r"(?P<m>\w+)_positive_fraction", "0-1", "fraction of the image's cells with `{m}_positive`"),
    (r"collagen_angle_frac_(?P<m>\d+_\d+)", "0-1", "fraction of collagen orientations in {m} deg"),
    (
        r"tube_(?P<m>\w+)_um\d?",
        "um (px without pixel size)",
        "tube network: {m} (docs/readouts.md)",
    ),
    (r"tube_(?P<m>\w+)", "see docs/readouts.md", "tube network: {m} (docs/readouts.md)"),
    (
        r"collagen_(?P<m>\w+)",
        "see docs/readouts.md",
        "collagen architecture: {m} (docs/readouts.md)",
    ),
]


def describe_column(name: str) -> tuple[str, str] | None:
    """(unit, how it is computed) of a table column, or None when undocumented."""
    if name in EXACT:
        return EXACT[name]
    for pattern, unit, how in PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            return unit, how.format(m=m.group("m"))
    return None


def write_columns_doc(out_dir: str | Path, tables: Mapping[str, pd.DataFrame]) -> Path:
    """Write ``out_dir/columns.md`` for ``tables`` (file stem -> DataFrame).

    Returns
    -------
    Path
        The file written.
    """
    from .io import atomic_write

    lines = [
        "# Columns of the tables in this folder",
        "",
        "Each table is written as CSV (10 significant digits) and Parquet (full precision). "
        "a.u. = arbitrary units (raw camera counts of that channel). Positivity rules and "
        "cut-offs: `run.json` -> `positivity`.",
        "",
    ]
    for stem, df in tables.items():
        lines += [f"## {stem}.csv / {stem}.parquet", "", "| column | unit | how it is computed |"]
        lines.append("| --- | --- | --- |")
        for col in df.columns:
            unit, how = describe_column(str(col)) or ("?", "undocumented")
            lines.append(f"| `{col}` | {unit} | {how} |")
        lines.append("")
    path = Path(out_dir) / "columns.md"
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
