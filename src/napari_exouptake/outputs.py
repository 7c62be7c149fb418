"""What a run writes: the contract tables, label images, QC pictures and ``run.json``
(:func:`write_outputs`), and the per-condition summary the demo prints."""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import AssayConfig, config_hash, resolve_channel
from .io import ImageData, is_lazy, write_labels, write_table
from .results import AnalysisResult, images_table, squeeze_plane

__all__ = [
    "draw_readout_overlays",
    "readout_overlays",
    "readout_plane",
    "condition_summary",
    "json_default",
    "package_versions",
    "qc_overlay",
    "qc_title",
    "run_info",
    "sample_data_dir",
    "write_outputs",
    "write_qc",
    "write_readout_overlays",
]


def readout_plane(image: ImageData, index: int) -> np.ndarray:
    """Channel ``index`` of ``image`` as the 2D float32 plane the image-level readouts (tubes,
    collagen) analyse: the plane of a 2D image, the maximum projection of a z-stack."""
    arr = image.channel(index)
    if is_lazy(arr):  # a big image stays lazy: the tube/collagen readouts bin it block-wise
        arr = arr.astype(np.float32)
    else:
        arr = np.asarray(arr, dtype=np.float32)
    return arr.max(axis=0) if arr.shape[0] > 1 else arr[0]


def readout_overlays(
    image: ImageData, result: AnalysisResult | dict, config: AssayConfig
) -> dict[str, np.ndarray]:
    """QC pictures of the image-level readouts of ``result`` (or of its ``extras`` dict).

    :func:`~napari_exouptake.pipeline.measure_image` keeps them in ``result.extras["qc"]``;
    this draws them again for a result whose pictures were not kept.

    Returns
    -------
    dict of str to (Y, X, 3) uint8 ndarray
        ``"tubes"`` (skeleton, nodes, meshes) and/or ``"collagen"`` (orientation colour map and
        fibre centre lines), for the readouts the config enabled.
    """
    extras = result if isinstance(result, dict) else result.extras
    planes = {
        key: readout_plane(
            image, resolve_channel(section.channel, image.channel_names, f"{key}.channel")
        )
        for key in ("tubes", "collagen")
        if key in extras and (section := getattr(config, key)) is not None
    }
    return draw_readout_overlays(planes, extras)


def draw_readout_overlays(
    planes: dict[str, np.ndarray], extras: dict[str, Any]
) -> dict[str, np.ndarray]:
    """The readouts' QC pictures drawn on their 2D planes (``planes``: readout -> plane)."""
    out: dict[str, np.ndarray] = {}
    if "tubes" in extras and "tubes" in planes:
        from .tubes import tube_overlay

        out["tubes"] = tube_overlay(planes["tubes"], extras["tubes"])
    if "collagen" in extras and "collagen" in planes:
        from .collagen import collagen_overlay

        out["collagen"] = collagen_overlay(planes["collagen"], extras["collagen"])
    return out


def write_readout_overlays(result: AnalysisResult, qc_dir: Path) -> list[Path]:
    """Write ``qc/<image>_tubes.png`` / ``qc/<image>_collagen.png`` (the readouts' QC pictures
    made by :func:`~napari_exouptake.pipeline.measure_image`)."""
    import imageio.v3 as iio

    paths = []
    for kind, rgb in result.extras.get("qc", {}).items():
        qc_dir.mkdir(parents=True, exist_ok=True)
        path = qc_dir / f"{result.image}_{kind}.png"
        iio.imwrite(path, rgb)
        paths.append(path)
    return paths


def qc_overlay(result: AnalysisResult, max_side: int = 1024) -> np.ndarray:
    """QC picture: exosome channel (gray), cell outlines (cyan), nuclei (blue), puncta (red
    inside cells, yellow outside). Images smaller than 768 px are enlarged by pixel repetition.

    Returns
    -------
    (Y, X, 3) uint8 ndarray
    """
    from skimage.segmentation import find_boundaries

    exo = result.exo_image
    labels = result.cells_labels
    if exo is None:
        raise ValueError("result carries no exosome image")
    if exo.ndim == 3:
        exo = exo.max(axis=0)
    lab = labels.max(axis=0) if labels.ndim == 3 else labels
    lo, hi = np.percentile(exo, [1.0, 99.8])
    gray = np.clip((exo - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    if result.nuclei_labels is not None:
        nuc = result.nuclei_labels
        nuc = nuc.max(axis=0) if nuc.ndim == 3 else nuc
        rgb[find_boundaries(nuc, mode="inner")] = (60, 90, 255)
    rgb[find_boundaries(lab, mode="inner")] = (0, 230, 230)
    s = result.spots
    if len(s):
        yy = np.clip(np.round(s["y"].to_numpy()).astype(int), 0, lab.shape[0] - 1)
        xx = np.clip(np.round(s["x"].to_numpy()).astype(int), 0, lab.shape[1] - 1)
        # a small ring of radius 3 around each punctum, vectorised over puncta
        ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        ry = np.clip(np.round(yy[:, None] + 3 * np.sin(ang)).astype(int), 0, lab.shape[0] - 1)
        rx = np.clip(np.round(xx[:, None] + 3 * np.cos(ang)).astype(int), 0, lab.shape[1] - 1)
        inside = s["cell_id"].to_numpy() > 0 if "cell_id" in s else np.ones(len(s), bool)
        colour = np.where(inside[:, None], np.array([[255, 40, 40]]), np.array([[255, 200, 0]]))
        rgb[ry, rx] = np.repeat(colour, ry.shape[1], axis=0).reshape(ry.shape + (3,))
    scale = max(1, min(4, 768 // max(rgb.shape[:2])))  # small images: enlarge for reading
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return rgb


def write_outputs(
    results: Sequence[AnalysisResult],
    out_dir: str | Path,
    config: AssayConfig,
    *,
    overlays: bool = True,
    extra_run_info: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``cells``, ``spots``, ``images`` tables, label TIFFs, QC PNGs and ``run.json``."""

    out = Path(out_dir)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    cells = pd.concat([r.cells for r in results], ignore_index=True) if results else pd.DataFrame()
    spots_df = (
        pd.concat([r.spots for r in results], ignore_index=True) if results else pd.DataFrame()
    )
    images = images_table(results)
    paths: dict[str, Path] = {}
    paths["cells"] = write_table(cells, out / "cells")[0]
    paths["spots"] = write_table(spots_df, out / "spots")[0]
    paths["images"] = write_table(images, out / "images")[0]
    from ._columns import write_columns_doc

    paths["columns"] = write_columns_doc(out, {"cells": cells, "spots": spots_df, "images": images})
    from ._qc import run_contrast

    contrast = run_contrast(r.exo_image for r in results if r.exo_image is not None)
    for r in results:
        if r.exo_image is not None:  # None: image-level readouts only, no cells
            write_labels(out / "labels" / f"{r.image}_cells.tif", squeeze_plane(r.cells_labels))
        if r.nuclei_labels is not None:
            write_labels(out / "labels" / f"{r.image}_nuclei.tif", squeeze_plane(r.nuclei_labels))
        if overlays and r.exo_image is not None:
            write_qc(out / "qc" / f"{r.image}_overlay.png", r, contrast)
        if overlays:
            write_readout_overlays(r, out / "qc")
    run = run_info(config, results)
    if extra_run_info:
        run.update(extra_run_info)
    (out / "run.json").write_text(json.dumps(run, indent=2, default=json_default))
    paths["run"] = out / "run.json"
    return paths


def qc_title(image: str, condition: str | None, cells: pd.DataFrame) -> str:
    """Title of a QC overlay: image, condition, cells and % EV-positive."""
    n = len(cells)
    pct = 100.0 * float(cells["exo_positive"].mean()) if n and "exo_positive" in cells else None
    return " · ".join(
        [image]
        + ([str(condition)] if condition else [])
        + [f"{n} cells"]
        + ([f"{pct:.0f} % EV-positive"] if pct is not None else [])
    )


def write_qc(
    path: Path,
    result: AnalysisResult,
    contrast: tuple[float, float] | None,
    *,
    exo: np.ndarray | None = None,
    cells_labels: np.ndarray | None = None,
    nuclei_labels: np.ndarray | None = None,
    ring_px: int | None = None,
) -> Path:
    """``qc/<image>_overlay.png`` of a finalized result (see :mod:`napari_exouptake._qc`).

    An image whose longer side is over ``_qc.QC_MAX_SIDE`` (a whole well, a mosaic; possibly a
    lazy array) is shown subsampled to that size: the EV plane and the labels every k-th pixel,
    the puncta at their scaled positions, the scale bar in the shown pixels' size.
    """
    from ._qc import draw_overlay, qc_step, write_qc_png

    cells = result.cells
    exo = result.exo_image if exo is None else exo
    cells_labels = result.cells_labels if cells_labels is None else cells_labels
    nuclei_labels = result.nuclei_labels if nuclei_labels is None else nuclei_labels
    spots, pixel_size = result.spots, result.provenance.get("pixel_size_um")
    k = qc_step(np.shape(exo))
    if k > 1:
        exo, cells_labels = exo[..., ::k, ::k], cells_labels[..., ::k, ::k]
        nuclei_labels = None if nuclei_labels is None else nuclei_labels[..., ::k, ::k]
        spots = spots.assign(y=spots["y"] / k, x=spots["x"] / k) if len(spots) else spots
        pixel_size = pixel_size * k if pixel_size else pixel_size
    pos = (
        cells.loc[cells["exo_positive"].astype(bool), "cell_id"] if "exo_positive" in cells else []
    )
    rgb = draw_overlay(
        np.asarray(exo),
        np.asarray(cells_labels),
        None if nuclei_labels is None else np.asarray(nuclei_labels),
        spots,
        np.asarray(pos, dtype=np.int64),
        contrast,
        ring_px=(3 if k == 1 else 0) if ring_px is None else ring_px,
    )
    return write_qc_png(
        path,
        rgb,
        title=qc_title(result.image, result.condition, cells),
        pixel_size_um=pixel_size,
        contrast=contrast,
        with_nuclei=nuclei_labels is not None,
    )


def json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "napari-exouptake",
        "numpy",
        "scipy",
        "scikit-image",
        "pandas",
        "cellpose",
        "torch",
        "tifffile",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def run_info(config: AssayConfig, results: Sequence[AnalysisResult]) -> dict[str, Any]:
    """Provenance for ``run.json``: config, versions, model identity, device, timings."""
    return {
        "config": config.to_dict(),
        "config_sha256": config_hash(config),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "thresholds": results[0].thresholds if results else {},
        # per readout: rule, metric, cut-off, which cells it was fitted on, warnings
        "positivity": results[0].extras.get("positivity", {}) if results else {},
        "images": {r.image: r.provenance for r in results},
    }


# -- demo --------------------------------------------------------------------------------------


def sample_data_dir() -> Path:
    """Folder of the bundled sample dataset (simulator output layout)."""
    return Path(__file__).parent / "sample_data"


def condition_summary(results: Sequence[AnalysisResult], config: AssayConfig) -> pd.DataFrame:
    """Per-condition summary: images, cells, mean puncta per cell, % EV- and marker-positive."""
    cells = pd.concat([r.cells for r in results], ignore_index=True)
    if "condition" not in cells.columns:
        cells["condition"] = "all"
    agg: dict[str, Any] = {
        "images": ("image", "nunique"),
        "cells": ("cell_id", "size"),
        "mean_puncta_per_cell": ("exo_spot_count", "mean"),
        "pct_ev_positive": ("exo_positive", lambda s: 100.0 * s.mean()),
    }
    for m in config.channels.markers:
        agg[f"pct_{m}_positive"] = (f"{m}_positive", lambda s: 100.0 * s.mean())
    table = cells.groupby("condition", sort=False).agg(**agg)
    return table.round(2)
