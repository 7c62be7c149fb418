"""One image through the whole assay: segment -> detect puncta -> measure -> readouts.

:func:`analyze_image` is the single entry every face calls for one image (napari widgets, the
Python API), so a setting tuned by clicking gives the very same numbers headless. It is
:func:`measure_image` (segmentation, puncta, per-cell table, image-level readouts; no
positivity) followed by :func:`finalize`, the one step that applies positivity thresholds
(automatic ones, and those derived from a control condition such as dye-only cells) across the
images of a run: a run of many images (batch workers, the demo, dataset validation) measures
each image with :func:`measure_image` and finalizes them together once. What a run writes
(tables, labels, QC, ``run.json``) lives in :mod:`napari_exouptake.outputs`, re-exported here.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import (
    DEFAULT_RADIUS_PX,
    AssayConfig,
    resolve_channel,
)
from .io import ImageData, read_image, read_labels
from .outputs import (
    condition_summary,
    draw_readout_overlays,
    json_default,
    package_versions,
    qc_overlay,
    qc_title,
    readout_overlays,
    readout_plane,
    run_info,
    sample_data_dir,
    write_outputs,
    write_qc,
    write_readout_overlays,
)
from .progress import Cancel, Progress, check, report, within
from .results import AnalysisResult, images_table, squeeze_plane
from .runlevel import MIN_AUTO_IMAGES, finalize

__all__ = [
    "AnalysisResult",
    "KEY_READOUTS",
    "MIN_AUTO_IMAGES",
    "analyze_image",
    "check_channels",
    "condition_for",
    "condition_summary",
    "finalize",
    "images_table",
    "json_default",
    "measure_image",
    "package_versions",
    "qc_overlay",
    "qc_title",
    "readout_overlays",
    "run_info",
    "sample_data_dir",
    "write_outputs",
    "write_qc",
    "write_readout_overlays",
]

log = logging.getLogger(__name__)


def condition_for(name: str, config: AssayConfig) -> str | None:
    """Condition of an image from the config's ``conditions`` globs (first match wins)."""
    for pattern, condition in config.conditions.items():
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, f"*{pattern}*"):
            return condition
    return None


def measure_image(
    image: ImageData | str | Path,
    config: AssayConfig,
    labels: np.ndarray | str | Path | None = None,
    *,
    nuclei: np.ndarray | str | Path | None = None,
    condition: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    spots_table: pd.DataFrame | None = None,
) -> AnalysisResult:
    """Measure one ``(C, Z, Y, X)`` image, without positivity (see :func:`analyze_image`).

    Segmentation (or the given labels), puncta, the per-cell table and the image-level
    readouts; no ``*_positive`` column, empty ``thresholds`` and ``summary``. A run hands its
    images' results to :func:`finalize` together, once.
    """
    from . import spots
    from .big_image import is_big, spots_and_cells

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(stage: str, fraction: float) -> None:
        check(cancel, f"analysis of {name}")
        report(progress, fraction, stage)

    if not isinstance(image, ImageData):
        image = read_image(image, axes=config.axes)
    if image.axes != "CZYX":
        raise ValueError(
            f"{image.name}: image has a time axis ({image.n_timepoints} frames); analyse each "
            "frame (ImageData.frame(t)) or use the batch runner, which does it per frame"
        )
    name = name or image.name
    if condition is None:
        condition = condition_for(name, config)
    # tube/collagen-only assay: no segmentation, no puncta, no cells (no Cellpose call)
    image_level = labels is None and config.image_level_only()
    config.check_roles("quantify" if labels is not None else "analyze")
    ch = config.channels.resolve(image.channel_names)  # every channel role, resolved once here
    readout_channels = {
        key: resolve_channel(section.channel, image.channel_names, f"{key}.channel")
        for key in ("tubes", "collagen")
        if (section := getattr(config, key)) is not None
    }
    pixel_size = config.pixel_size_um or image.pixel_size_um
    # a big plane: puncta and cells tile by tile from the lazy array (big_image.py)
    big = not image_level and spots_table is None and is_big(image, config, nuclei)
    exo = None if image_level or big else _channel_float(image, ch.exosome, "exosome")

    # -- segmentation ------------------------------------------------------------------------
    step("segmentation", 0.0)
    if image_level:
        cells_lab, nuc_lab = np.zeros((1, 1, 1), np.int32), None
        seg_info: dict[str, Any] = {"source": "none (image-level readouts only)"}
    else:
        cells_lab, nuc_lab, seg_info = _segmentation_step(
            image, config, labels, nuclei, big, timings, progress, cancel
        )
    timings["segmentation"] = time.perf_counter() - t0

    # -- puncta ------------------------------------------------------------------------------
    step("puncta", 0.5)
    t1 = time.perf_counter()
    if image_level:
        spots_df = pd.DataFrame({c: pd.Series(dtype=float) for c in ("y", "x", "intensity")})
    elif spots_table is not None:
        spots_df = spots_table.copy()
    elif big:
        spots_df, cells_df = spots_and_cells(
            image, config, cells_lab, ch.exosome, dict(ch.markers), pixel_size, cancel=cancel
        )
    else:
        spots_df = spots.detect_spots_from_config(exo, config.spots)
    timings["spots"] = time.perf_counter() - t1

    # -- measurement -------------------------------------------------------------------------
    step("measurement", 0.7)
    t2 = time.perf_counter()
    if image_level:
        cells_df = pd.DataFrame({"cell_id": pd.Series(dtype=np.int64)})
        exo_m = lab_m = None
    elif big:  # measured with the puncta; the lazy exosome plane for the writers
        exo_m, lab_m = image.data[ch.exosome, 0], cells_lab[0]
    else:
        spots_df, cells_df, exo_m, lab_m = _measure_step(
            image, ch, exo, cells_lab, nuc_lab, spots_df, pixel_size
        )
    timings["measure"] = time.perf_counter() - t2

    # -- image-level readouts ----------------------------------------------------------------
    step("readouts", 0.85)
    planes = {key: readout_plane(image, idx) for key, idx in readout_channels.items()}
    extras, readouts, cells_df = _readouts_step(config, planes, pixel_size, lab_m, cells_df)
    if extras:
        extras["qc"] = draw_readout_overlays(planes, extras)
    cells_df.insert(0, "image", name)
    spots_df = spots_df.reset_index(drop=True)
    if "spot_id" not in spots_df.columns:
        spots_df.insert(0, "spot_id", np.arange(1, len(spots_df) + 1, dtype=np.int64))
    spots_df.insert(0, "image", name)
    if condition is not None:
        cells_df.insert(1, "condition", condition)
    timings["total"] = time.perf_counter() - t0
    step("measured", 1.0)
    return AnalysisResult(
        image=name,
        cells_labels=cells_lab,
        nuclei_labels=nuc_lab,
        spots=spots_df,
        cells=cells_df,
        summary={},
        provenance={
            "segmentation": seg_info,
            "spots_threshold": spots_df.attrs.get("threshold"),
            "spots_detection": _detection_provenance(spots_df.attrs),
            "pixel_size_um": pixel_size,
            "channels": ch.model_dump(),
            "image_metadata": _image_metadata(image),
            "source": str(image.source) if image.source else None,
            "timings_s": timings,
        },
        condition=condition,
        extras={**extras, "readouts": readouts},
        exo_image=exo_m,
    )


def _segmentation_step(
    image: ImageData,
    config: AssayConfig,
    labels: Any,
    nuclei: Any,
    big: bool,
    timings: dict[str, float],
    progress: Progress | None,
    cancel: Cancel | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Cell and nucleus labels: given (lazy for a big plane) or segmented with Cellpose."""
    from .big_image import lazy_labels

    if labels is not None:
        cells_lab = lazy_labels(labels, image) if big else _as_labels(labels, image, "labels")
        nuc_lab = _as_labels(nuclei, image, "nuclei") if nuclei is not None else None
        source = str(labels) if isinstance(labels, (str, Path)) else "given"
        return cells_lab, nuc_lab, {"source": source}
    from .segmentation import segment

    seg = segment(image, config, progress=within(progress, 0.0, 0.5), cancel=cancel)
    cells_lab = _as_labels(seg.cells, image, "segmentation labels")
    nuc_lab = None if seg.nuclei is None else _as_labels(seg.nuclei, image, "nuclei")
    timings.update({f"segmentation_{k}": v for k, v in seg.timings.items()})
    info = {
        "source": "cellpose",
        "device": seg.device,
        "model": seg.model_id,
        "model_sha256": seg.model_sha256,
        "cellpose_version": seg.cellpose_version,
    }
    return cells_lab, nuc_lab, info


def _measure_step(image, ch, exo, cells_lab, nuc_lab, spots_df, pixel_size):
    """Puncta assigned to cells and the per-cell table of an image held in memory (a single
    plane is measured in 2D, without a z column); also the EV plane and labels measured."""
    from . import measure

    lab_m = squeeze_plane(cells_lab)
    channels_m = {"exosome": squeeze_plane(exo)}
    channels_m.update(
        {m: squeeze_plane(_channel_float(image, i, f"markers.{m}")) for m, i in ch.markers.items()}
    )
    spots_df = measure.assign_spots(spots_df, lab_m)
    cells_df = measure.measure_cells(
        lab_m,
        channels_m,
        spots_df,
        nuclei=None if nuc_lab is None else squeeze_plane(nuc_lab),
        pixel_size_um=pixel_size,
        z_step_um=image.z_step_um,
        marker_names=list(ch.markers),
        spot_radius_px=float(spots_df.attrs.get("radius_px", DEFAULT_RADIUS_PX)),
    )
    return spots_df, cells_df, channels_m["exosome"], lab_m


def _readouts_step(
    config: AssayConfig,
    planes: dict[str, Any],
    pixel_size: float | None,
    lab_m: Any,
    cells_df: pd.DataFrame,
) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """Tube-network and collagen readouts of their planes (result objects, image-level
    metrics); collagen per cell joins the cells table when there are 2D cell labels."""
    extras: dict[str, Any] = {}
    readouts: dict[str, Any] = {}
    if config.tubes is not None:
        from .tubes import analyze_tubes

        params = config.tubes.model_dump(exclude={"channel"})
        res = analyze_tubes(planes["tubes"], pixel_size_um=pixel_size, **params)
        extras["tubes"] = res
        readouts.update(res.metrics)
    if config.collagen is not None:
        from .collagen import analyze_collagen, collagen_per_cell

        params = config.collagen.model_dump(exclude={"channel", "ring_width_px"})
        res = analyze_collagen(planes["collagen"], pixel_size_um=pixel_size, **params)
        extras["collagen"] = res
        readouts.update(res.metrics)
        if lab_m is not None and lab_m.ndim == 2 and len(cells_df):
            per_cell = collagen_per_cell(
                lab_m, planes["collagen"], ring_width_px=config.collagen.ring_width_px
            )
            cells_df = cells_df.merge(per_cell, on="cell_id", how="left")
    return extras, readouts, cells_df


def analyze_image(
    image: ImageData | str | Path,
    config: AssayConfig,
    labels: np.ndarray | str | Path | None = None,
    *,
    nuclei: np.ndarray | str | Path | None = None,
    condition: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    spots_table: pd.DataFrame | None = None,
) -> AnalysisResult:
    """Analyse one ``(C, Z, Y, X)`` image: :func:`measure_image`, then :func:`finalize` on it
    alone (a run of one image).

    Parameters
    ----------
    image : ImageData or path
        The image (a path is read with :func:`napari_exouptake.io.read_image`).
    config : AssayConfig
    labels : (Y, X) or (Z, Y, X) int ndarray or path, optional
        Cell labels to use instead of segmenting (0 = background).
    nuclei : int ndarray or path, optional
        Nucleus labels to go with ``labels`` (enables nuclear/cytoplasmic readouts).
    condition : str, optional
        Experimental condition (else from ``config.conditions``).
    name : str, optional
        Image name for the tables (default: the file's stem).
    progress : callable(fraction, message), optional
        See :mod:`napari_exouptake.progress`; segmentation takes the first half.
    cancel : callable() -> bool, optional
        Checked between stages (and inside segmentation); when it returns True the analysis
        stops with :class:`napari_exouptake.progress.Cancelled`.
    spots_table : pandas.DataFrame, optional
        The puncta of this image's exosome channel, already detected with
        ``spots.detect_spots_from_config(exosome channel, config.spots)`` (the napari widget's
        preview cache); used instead of detecting again.

    Returns
    -------
    AnalysisResult
        Positivity here uses this image alone for ``auto``/``control`` rules (a ``control``
        rule without control cells records ``positivity_pending``); a run over several images
        measures each with :func:`measure_image` and calls :func:`finalize` once on them all.
    """
    result = measure_image(
        image,
        config,
        labels,
        nuclei=nuclei,
        condition=condition,
        name=name,
        progress=progress,
        cancel=cancel,
        spots_table=spots_table,
    )
    [result] = finalize([result], config, pending_control_ok=True)
    report(progress, 1.0, "done")
    return result


def _image_metadata(image: ImageData) -> dict:
    """What the file says about itself (run.json): channel names, pixel size and Z step in um
    (None = unknown), format, and for CZI/ND2/LIF/OME-Zarr the reader and the scene."""
    meta = {
        "channel_names": list(image.channel_names),
        "pixel_size_um": image.pixel_size_um,
        "z_step_um": image.z_step_um,
    }
    meta.update(
        {k: image.metadata[k] for k in ("format", "reader", "scene") if k in image.metadata}
    )
    return meta


def check_channels(config: AssayConfig, channel_names: Sequence[str]) -> dict[str, int]:
    """Resolve every channel role of ``config`` against an image's channel names.

    Parameters
    ----------
    config : AssayConfig
    channel_names : sequence of str
        One name per channel of the image (``ImageData.channel_names``).

    Returns
    -------
    dict of str to int
        Config key (``channels.exosome``, ``channels.markers.cd31``, ``tubes.channel`` ...)
        -> channel index, for the roles the config sets.

    Raises
    ------
    ConfigError
        One message naming the key and the image's channels, for the first role the image
        does not have.
    """
    ch = config.channels.resolve(channel_names)
    out = {
        f"channels.{role}": idx
        for role in ("nucleus", "cell", "exosome")
        if (idx := getattr(ch, role)) is not None
    }
    out.update({f"channels.markers.{k}": v for k, v in ch.markers.items()})
    for key in ("tubes", "collagen"):
        section = getattr(config, key)
        if section is not None:
            out[f"{key}.channel"] = resolve_channel(
                section.channel, channel_names, f"{key}.channel"
            )
    return out


def _detection_provenance(attrs: dict) -> dict:
    """What the punctum detector did on this image: ``detect_spots``' ``df.attrs`` (threshold,
    noise, reference punctum, punctum radius used and whether it was measured, hot pixels
    removed), JSON-safe (NaN -> None)."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif v is None or not np.isfinite(float(v)):
            out[k] = None
        else:
            out[k] = float(v)
    return out


#: image-level readouts shown first (napari widget, demo): key -> label
KEY_READOUTS = {
    "tube_total_length_um": "tube total length",
    "tube_junctions": "tube junctions",
    "tube_meshes": "tube meshes",
    "tube_vessel_area_percent": "vessel area (%)",
    "collagen_area_fraction": "collagen area fraction",
    "collagen_coherency": "collagen coherency",
    "collagen_mean_angle_deg": "collagen mean angle (deg)",
    "collagen_mean_fibre_length": "mean fibre length",
}


# -- helpers -----------------------------------------------------------------------------------


def _channel_float(image: ImageData, index: int | None, role: str) -> np.ndarray:
    if index is None:
        raise ValueError(f"channels.{role} is not set")
    arr = np.asarray(image.channel(index), dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{image.name}: channel {index} ({image.channel_names[index]}) contains NaN or "
            "infinite values; fix or crop the image"
        )
    return arr


def _as_labels(labels: np.ndarray | str | Path, image: ImageData, what: str) -> np.ndarray:
    arr = read_labels(labels) if isinstance(labels, (str, Path)) else np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an integer label image, got dtype {arr.dtype}")
    z, y, x = image.data.shape[1:]
    if arr.shape == (y, x) and z == 1:
        return arr.reshape(1, y, x)
    if arr.shape == (z, y, x):
        return arr
    raise ValueError(
        f"{what} have shape {arr.shape} but the image {image.name!r} is "
        f"{'(Z, Y, X) ' if z > 1 else ''}{(z, y, x) if z > 1 else (y, x)}"
    )
