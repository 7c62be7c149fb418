"""Image-level summary of a cells table and a spots table."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def summarize_image(
    cells_df: pd.DataFrame,
    spots_df: pd.DataFrame | None,
    marker_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Image-level summary of a cells table and a spots table.

    Returns
    -------
    dict
        ``n_cells``, ``n_spots`` (all puncta, extracellular included), ``n_spots_in_cells``,
        ``mean_spots_per_cell``, ``mean_spot_estimate_per_cell``,
        ``mean_exo_integrated_intensity``, ``exo_positive_fraction`` and per marker
        ``<name>_positive_fraction`` (NaN where the column is absent or there are no cells).
    """
    n_cells = int(len(cells_df))
    n_spots = 0 if spots_df is None else int(len(spots_df))
    if spots_df is not None and "cell_id" in spots_df.columns:
        in_cells = int((spots_df["cell_id"].to_numpy() > 0).sum())
    else:
        in_cells = int(cells_df["exo_spot_count"].sum()) if "exo_spot_count" in cells_df else 0

    def mean(col: str) -> float:
        if n_cells == 0 or col not in cells_df.columns:
            return float("nan")
        return float(cells_df[col].astype(float).mean())

    if marker_names is None:
        marker_names = [
            c[: -len("_positive")]
            for c in cells_df.columns
            if c.endswith("_positive") and c != "exo_positive"
        ]
    out: dict[str, float] = {
        "n_cells": n_cells,
        "n_spots": n_spots,
        "n_spots_in_cells": in_cells,
        "mean_spots_per_cell": mean("exo_spot_count"),
        "mean_spot_estimate_per_cell": mean("exo_spot_estimate"),
        "mean_exo_integrated_intensity": mean("exo_integrated_intensity"),
        "exo_positive_fraction": mean("exo_positive"),
    }
    for name in marker_names:
        out[f"{name}_positive_fraction"] = mean(f"{name}_positive")
    return out
