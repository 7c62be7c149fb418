"""A folder of simulated images with truth and a matching assay config (:func:`write_dataset`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._cells import _marker_kind
from ._params import _CONDITION_PARAMS, _Z_STEP_UM, CONDITIONS, image_seed
from .image import simulate_image

logger = logging.getLogger(__name__)


def _config_yaml(
    channel_names: Sequence[str],
    markers: Sequence[str],
    pixel_size_um: float,
    diameter: float,
    conditions: Sequence[str],
) -> str:
    from ..config import DEFAULT_RADIUS_PX

    lines = [
        "# Assay config for a simulated napari-exouptake dataset (exouptake simulate).",
        "channels:",
        f"  nucleus: {channel_names[0]}",
        f"  cell: {channel_names[1]}",
        f"  exosome: {channel_names[2]}",
    ]
    if markers:
        lines.append("  markers:")
        for m in markers:
            kind = (
                {"angio": "angiogenesis", "collagen": "collagen"}[_marker_kind(m)]
                if _marker_kind(m) != "other"
                else "other"
            )
            lines.append(f"    {m.lower()}: {{channel: {m}, kind: {kind}}}")
    lines += [
        f"pixel_size_um: {pixel_size_um:g}",
        "segmentation:",
        "  mode: cells",
        "  model: demo-cells",
        f"  diameter_px: {diameter:g}",
        "spots:",
        f"  radius_px: {DEFAULT_RADIUS_PX:g}",
        "  threshold: auto",
        "positivity:",
        "  control_condition: dye_only",
    ]
    collagen = [m for m in markers if _marker_kind(m) == "collagen"]
    if collagen:
        lines.append(f"collagen: {{channel: {collagen[0]}}}")
    lines.append("conditions:")
    for c in conditions:
        lines.append(f'  "{c}_*": {c}')
    return "\n".join(lines) + "\n"


def _write_image(path: Path, data: np.ndarray, channel_names, pixel_size_um: float) -> None:
    from ..io import write_ome_tiff

    z_step = _Z_STEP_UM if data.ndim == 4 else None
    write_ome_tiff(path, data, channel_names, pixel_size_um, z_step_um=z_step)


def _write_labels(path: Path, labels: np.ndarray) -> None:
    from ..io import write_labels

    write_labels(path, labels)


def write_dataset(
    out_dir: str | Path,
    n_images: int = 8,
    seed: int = 0,
    *,
    difficulty: str | float = "normal",
    shape: tuple[int, int] = (512, 512),
    conditions: Sequence[str] | None = None,
    pixel_size_um: float = 0.325,
    cell_diameter_px: float = 36.0,
    markers: Sequence[str] = ("CD31", "COL1"),
    n_z: int = 1,
) -> Path:
    """Write a simulated assay dataset in the contract layout.

    Layout under ``out_dir``::

        images/<name>.ome.tif           (C, Y, X) or (C, Z, Y, X) uint16, channel names, pixel size
        labels/<name>_cells.tif         cell labels
        labels/<name>_nuclei.tif        nucleus labels (same id as the containing cell)
        truth_spots.csv                 image, y, x[, z], cell_id, amplitude, sigma_px, snr, ...
        truth_cells.csv                 image, cell_id, area_px, n_spots, <marker>_level, ...
        conditions.csv                  image, condition, dose (ug/mL)
        config.yaml                     an assay config that fits the images

    Image ``i`` is named ``<condition>_<iii>`` with the condition cycling over ``conditions``,
    and is simulated from :func:`image_seed` ``(seed, i)``, so it does not depend on
    ``n_images``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    n_images : int
        Number of images (>= 1).
    seed : int
        Dataset seed.
    difficulty : str or float
        See :func:`simulate_image`.
    shape : (int, int)
        Image size (Y, X) in pixels.
    conditions : sequence of str, optional
        Conditions to cycle through; default :data:`CONDITIONS`.
    pixel_size_um, cell_diameter_px, markers, n_z
        See :func:`simulate_image`.

    Returns
    -------
    Path
        ``out_dir``.
    """
    n_images = int(n_images)
    if n_images < 1:
        raise ValueError(f"n_images {n_images!r} must be >= 1")
    conditions = tuple(CONDITIONS if conditions is None else conditions)
    if not conditions:
        raise ValueError("conditions must name at least one condition")
    for c in conditions:
        if c not in _CONDITION_PARAMS:
            raise ValueError(f"condition {c!r} is not one of {list(CONDITIONS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    spot_tables, cell_tables, cond_rows = [], [], []
    channel_names: tuple[str, ...] = ()
    for i in range(n_images):  # one image per iteration: I/O bound, not a per-spot loop
        cond = conditions[i % len(conditions)]
        name = f"{cond}_{i:03d}"
        sim = simulate_image(
            image_seed(seed, i),
            condition=cond,
            difficulty=difficulty,
            shape=shape,
            pixel_size_um=pixel_size_um,
            cell_diameter_px=cell_diameter_px,
            markers=markers,
            n_z=n_z,
        )
        channel_names = sim.channel_names
        _write_image(
            out / "images" / f"{name}.ome.tif", sim.image, sim.channel_names, sim.pixel_size_um
        )
        _write_labels(out / "labels" / f"{name}_cells.tif", sim.cells)
        _write_labels(out / "labels" / f"{name}_nuclei.tif", sim.nuclei)
        spot_tables.append(sim.spots.assign(image=name))
        cell_tables.append(sim.truth_cells.assign(image=name))
        cond_rows.append(
            {
                "image": name,
                "condition": cond,
                "dose": _CONDITION_PARAMS[cond]["dose"],
                "dose_unit": "ug/mL",
                "seed": image_seed(seed, i),
            }
        )
        logger.info("wrote %s: %d cells, %d puncta", name, len(sim.truth_cells), len(sim.spots))

    spots = pd.concat(spot_tables, ignore_index=True)
    cells = pd.concat(cell_tables, ignore_index=True)
    spots = spots[["image", *[c for c in spots.columns if c != "image"]]]
    cells = cells[["image", *[c for c in cells.columns if c != "image"]]]
    spots.to_csv(out / "truth_spots.csv", index=False, float_format="%.4f")
    cells.to_csv(out / "truth_cells.csv", index=False, float_format="%.5g")
    pd.DataFrame(cond_rows).to_csv(out / "conditions.csv", index=False)
    (out / "config.yaml").write_text(
        _config_yaml(
            channel_names, markers, pixel_size_um, cell_diameter_px, list(dict.fromkeys(conditions))
        )
    )
    return out
