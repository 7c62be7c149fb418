"""One image through the whole assay: segment -> detect puncta -> measure -> readouts.

:func:`analyze_image` is the single entry every face calls (napari widgets, ``exouptake
analyze``, batch workers, dataset validation), so a setting tuned by clicking gives the very same
numbers headless. :func:`finalize` applies run-level positivity thresholds (automatic ones, and
those derived from a control condition such as dye-only cells) across all images of a run, and
:func:`write_outputs` writes the contract tables, label images, QC overlays and ``run.json``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import (
    CONTROL_EXO_RULE,
    AssayConfig,
    ConfigError,
    PositivityRule,
    config_hash,
    resolve_channel,
)
from .io import ImageData, read_image, read_labels, write_labels, write_table

__all__ = [
    "AnalysisResult",
    "analyze_image",
    "condition_for",
    "finalize",
    "images_table",
    "check_channels",
    "readout_overlays",
    "qc_overlay",
    "write_outputs",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


@dataclass
class AnalysisResult:
    """Everything one image gives; flows to every writer and every face.

    Attributes
    ----------
    image : str
        Image name (the file's stem), the ``image`` column of every table.
    cells_labels : (Y, X) or (Z, Y, X) ndarray of int
        Cell labels, 0 = background.
    nuclei_labels : ndarray of int or None
        Nucleus labels (same shape) when a nuclear channel was segmented.
    spots : pandas.DataFrame
        One row per punctum (``spot_id``, ``y``, ``x`` [, ``z``], ``intensity``, ``cell_id`` ...).
    cells : pandas.DataFrame
        One row per cell (contract columns of ``cells.csv``).
    summary : dict
        The image's row of ``images.csv`` (image-level readouts included).
    thresholds : dict
        Positivity thresholds used (``{"exosome": ..., "<marker>": ...}``).
    provenance : dict
        Device, model identity, timings, threshold of the punctum detector.
    condition : str or None
    extras : dict
        Image-level readout objects (``"tubes"``, ``"collagen"`` results) for overlays.
    """

    image: str
    cells_labels: np.ndarray
    nuclei_labels: np.ndarray | None
    spots: pd.DataFrame
    cells: pd.DataFrame
    summary: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    condition: str | None = None
    extras: dict[str, Any] = field(default_factory=dict, repr=False)
    exo_image: np.ndarray | None = field(default=None, repr=False)


def condition_for(name: str, config: AssayConfig) -> str | None:
    """Condition of an image from the config's ``conditions`` globs (first match wins)."""
    for pattern, condition in config.conditions.items():
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, f"*{pattern}*"):
            return condition
    return None


def _marker_names(config: AssayConfig) -> list[str]:
    return list(config.channels.markers)


def analyze_image(
    image: ImageData | str | Path,
    config: AssayConfig,
    labels: np.ndarray | str | Path | None = None,
    *,
    nuclei: np.ndarray | str | Path | None = None,
    condition: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    spots_table: pd.DataFrame | None = None,
) -> AnalysisResult:
    """Analyse one ``(C, Z, Y, X)`` image.

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
    progress : callable(stage: str, fraction: float), optional
    cancel : callable() -> bool, optional
        Checked between stages; when it returns True the analysis stops with
        :class:`InterruptedError`.
    spots_table : pandas.DataFrame, optional
        The puncta of this image's exosome channel, already detected with
        ``spots.detect_spots_from_config(exosome channel, config.spots)`` (the napari widget's
        preview cache); used instead of detecting again.

    Returns
    -------
    AnalysisResult
        Positivity here uses this image alone for ``auto``/``control`` rules; a run over several
        images calls :func:`finalize` to apply run-level thresholds.
    """
    from . import measure, spots
    from .big_image import is_big, lazy_labels, spots_and_cells

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(stage: str, frac: float) -> None:
        if cancel is not None and cancel():
            raise InterruptedError(f"analysis cancelled during {stage}")
        if progress is not None:
            progress(stage, frac)

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
    ch = config.channels.resolve(image.channel_names)
    pixel_size = config.pixel_size_um or image.pixel_size_um
    # a big plane: puncta and cells tile by tile from the lazy array (big_image.py)
    big = not image_level and spots_table is None and is_big(image, config, nuclei)
    exo = None if image_level or big else _channel_float(image, ch.exosome, "exosome")

    # -- segmentation ------------------------------------------------------------------------
    step("segmentation", 0.0)
    seg_info: dict[str, Any] = {}
    if image_level:
        cells_lab, nuc_lab = np.zeros((1, 1, 1), np.int32), None
        seg_info["source"] = "none (image-level readouts only)"
    elif labels is not None:
        cells_lab = lazy_labels(labels, image) if big else _as_labels(labels, image, "labels")
        nuc_lab = _as_labels(nuclei, image, "nuclei") if nuclei is not None else None
        seg_info["source"] = str(labels) if isinstance(labels, (str, Path)) else "given"
    else:
        from .segmentation import segment

        seg = segment(image, config)
        cells_lab = _as_labels(seg.cells, image, "segmentation labels")
        nuc_lab = None if seg.nuclei is None else _as_labels(seg.nuclei, image, "nuclei")
        seg_info.update(
            source="cellpose",
            device=seg.device,
            model=seg.model_id,
            model_sha256=seg.model_sha256,
            cellpose_version=seg.cellpose_version,
        )
        timings.update({f"segmentation_{k}": v for k, v in seg.timings.items()})
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
        exo_m = lab2 = None
    elif big:  # measured with the puncta; the lazy exosome plane for the writers
        exo_m, lab2 = image.data[ch.exosome, 0], cells_lab[0]
    else:
        marker_images = {m: _channel_float(image, i, f"markers.{m}") for m, i in ch.markers.items()}
        squeeze = exo.shape[0] == 1  # a single plane is measured in 2D (no z column)
        lab_m = cells_lab[0] if squeeze else cells_lab
        nuc_m = None if nuc_lab is None else (nuc_lab[0] if squeeze else nuc_lab)
        channels_m = {"exosome": exo[0] if squeeze else exo}
        channels_m.update({k: (v[0] if squeeze else v) for k, v in marker_images.items()})
        spots_df = measure.assign_spots(spots_df, lab_m)
        cells_df = measure.measure_cells(
            lab_m,
            channels_m,
            spots_df,
            nuclei=nuc_m,
            pixel_size_um=pixel_size,
            z_step_um=image.z_step_um,
            marker_names=list(ch.markers),
            spot_radius_px=float(spots_df.attrs.get("radius_px", 1.8)),
        )
        exo_m = channels_m["exosome"]
        lab2 = lab_m
    timings["measure"] = time.perf_counter() - t2

    # -- image-level readouts ----------------------------------------------------------------
    step("readouts", 0.85)
    extras: dict[str, Any] = {}
    readouts: dict[str, Any] = {}
    if config.tubes is not None:
        from .tubes import analyze_tubes

        idx = resolve_channel(config.tubes.channel, image.channel_names, "tubes.channel")
        params = config.tubes.model_dump(exclude={"channel"})
        res = analyze_tubes(_plane2d(image, idx), pixel_size_um=pixel_size, **params)
        extras["tubes"] = res
        readouts.update(res.metrics)
    if config.collagen is not None:
        from .collagen import analyze_collagen, collagen_per_cell

        idx = resolve_channel(config.collagen.channel, image.channel_names, "collagen.channel")
        params = config.collagen.model_dump(exclude={"channel", "ring_width_px"})
        col_img = _plane2d(image, idx)
        res = analyze_collagen(col_img, pixel_size_um=pixel_size, **params)
        extras["collagen"] = res
        readouts.update(res.metrics)
        if lab2 is not None and lab2.ndim == 2 and len(cells_df):
            per_cell = collagen_per_cell(lab2, col_img, ring_width_px=config.collagen.ring_width_px)
            cells_df = cells_df.merge(per_cell, on="cell_id", how="left")

    if extras:
        extras["qc"] = readout_overlays(image, extras, config)
    cells_df.insert(0, "image", name)
    spots_df = spots_df.reset_index(drop=True)
    if "spot_id" not in spots_df.columns:
        spots_df.insert(0, "spot_id", np.arange(1, len(spots_df) + 1, dtype=np.int64))
    spots_df.insert(0, "image", name)
    if condition is not None:
        cells_df.insert(1, "condition", condition)

    result = AnalysisResult(
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
    [result] = finalize([result], config, pending_control_ok=True)
    timings["total"] = time.perf_counter() - t0
    step("done", 1.0)
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


#: an ``auto`` threshold fitted on fewer images than this is reported with a warning
MIN_AUTO_IMAGES = 3


def finalize(
    results: Sequence[AnalysisResult],
    config: AssayConfig,
    control_cells: pd.DataFrame | None = None,
    *,
    pending_control_ok: bool = False,
) -> list[AnalysisResult]:
    """Apply positivity thresholds over a whole run and fill each image's summary.

    ``auto`` thresholds are computed from all cells of the run pooled; ``control`` thresholds
    from the cells of ``config.positivity.control_condition`` (or ``control_cells`` when given,
    e.g. from a separate control plate). The result is independent of the order of images.

    Parameters
    ----------
    results : sequence of AnalysisResult
    config : AssayConfig
    control_cells : pandas.DataFrame, optional

    Returns
    -------
    list of AnalysisResult
        New results with ``*_positive`` columns, ``thresholds`` and ``summary`` set.
    """
    from . import measure

    if not results:
        return []
    markers = _marker_names(config)
    frames = [r.cells for r in results]
    all_cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    control = config.positivity.control_condition
    if control_cells is None and control is not None and "condition" in all_cells.columns:
        sel = all_cells["condition"] == control
        control_cells = all_cells[sel] if sel.any() else None
    marker_rules = {
        k: m.positivity for k, m in config.channels.markers.items() if m.positivity is not None
    }
    positivity = config.positivity
    pending = False
    no_control = control_cells is None or len(control_cells) == 0
    implied_only = positivity.exosome == PositivityRule(**CONTROL_EXO_RULE) and not any(
        r.method == "control" for r in [positivity.markers, *marker_rules.values()]
    )
    run_warnings: list[str] = []
    if no_control and implied_only and not pending_control_ok:
        # the cut-off implied by control_condition, and no control image in this run: the
        # run still gets its tables, with the rule used and a warning on record
        found = sorted({str(r.condition) for r in results})
        run_warnings.append(
            f"no {control!r} (control_condition) cells in this run (conditions: "
            f"{', '.join(found)}): EV-positive = at least 1 punctum instead of the control's "
            "95th percentile; include the control's images to use it"
        )
        positivity = positivity.model_copy(
            update={"exosome": PositivityRule(method="fixed", value=1, metric="exo_spot_count")}
        )
    uses_control = positivity.exosome.method == "control" or any(
        r.method == "control" for r in [positivity.markers, *marker_rules.values()]
    )
    if uses_control and no_control:
        if not pending_control_ok:
            found = sorted({str(r.condition) for r in results})
            raise ConfigError(
                "positivity method 'control' needs cells of the control condition "
                f"{control!r} (positivity.control_condition); the images' conditions are "
                f"{', '.join(found)}. Add the control's images to the run, or remove "
                "control_condition, or give positivity.exosome a fixed rule"
            )
        pending = True
        log.info(
            "no %r control cells among these images: until the run-level thresholds are "
            "applied, 'control' uptake uses >= 1 punctum and 'control' markers use 'auto'",
            control,
        )

        def _auto(rule):
            return rule.model_copy(update={"method": "auto"}) if rule.method == "control" else rule

        exo_rule = positivity.exosome
        if exo_rule.method == "control":  # until the control is in: at least one punctum
            exo_rule = exo_rule.model_copy(
                update={"method": "fixed", "value": 1.0, "metric": "exo_spot_count"}
            )
        positivity = positivity.model_copy(
            update={"exosome": exo_rule, "markers": _auto(positivity.markers)}
        )
        marker_rules = {k: _auto(v) for k, v in marker_rules.items()}
    if config.image_level_only():  # no cells: nothing to call positive
        classified, thresholds, records = all_cells, {}, {}
    else:
        classified, thresholds, records = measure.positivity_calls(
            all_cells,
            positivity,
            markers,
            control_cells=control_cells,
            marker_rules=marker_rules,
        )
        conds = sorted({str(r.condition) for r in results if r.condition is not None})
        if run_warnings:
            records["exo"]["warnings"] = [*run_warnings, *records["exo"].get("warnings", [])]
            records["exo"]["fitted_on"] = f"fixed value (no {control!r} cells in the run)"
        for key, rec in records.items():
            if rec.get("method") == "auto":
                rec["fitted_on"] = f"{rec['fitted_on']} ({len(results)} image(s)" + (
                    f"; conditions {', '.join(conds)})" if conds else ")"
                )
                if len(results) < MIN_AUTO_IMAGES:
                    rec["warnings"].append(
                        f"fitted on {len(results)} image(s) only: 'auto' thresholds depend on "
                        "which images are in the run; compare runs with fixed or control "
                        "thresholds"
                    )
            if rec.get("method") == "control" and control is not None:
                rec["fitted_on"] = f"{rec['fitted_on']} of condition {control!r}"
                rec["control_condition"] = control
            for w in rec.get("warnings", []):  # one image of a run (pending_control_ok): quiet
                log.log(
                    logging.DEBUG if pending_control_ok else logging.WARNING,
                    "positivity %s (%s): %s",
                    key,
                    rec["metric"],
                    w,
                )
    out = []
    start = 0
    for r in results:
        n = len(r.cells)
        cells = classified.iloc[start : start + n].reset_index(drop=True)
        start += n
        summary = (
            {} if config.image_level_only() else measure.summarize_image(cells, r.spots, markers)
        )
        summary = {"image": r.image, **summary}
        if r.condition is not None:
            summary["condition"] = r.condition
        summary.update(r.extras.get("readouts", {}))
        prov = {**r.provenance, "positivity_pending": pending}
        extras = {**r.extras, "positivity": records}
        out.append(
            replace(
                r,
                cells=cells,
                thresholds=dict(thresholds),
                summary=summary,
                provenance=prov,
                extras=extras,
            )
        )
    return out


def readout_overlays(
    image: ImageData, result: AnalysisResult | dict, config: AssayConfig
) -> dict[str, np.ndarray]:
    """QC pictures of the image-level readouts of ``result`` (or of its ``extras`` dict).

    Returns
    -------
    dict of str to (Y, X, 3) uint8 ndarray
        ``"tubes"`` (skeleton, nodes, meshes) and/or ``"collagen"`` (orientation colour map and
        fibre centre lines), for the readouts the config enabled.
    """
    extras = result if isinstance(result, dict) else result.extras
    out: dict[str, np.ndarray] = {}
    if "tubes" in extras and config.tubes is not None:
        from .tubes import tube_overlay

        idx = resolve_channel(config.tubes.channel, image.channel_names, "tubes.channel")
        out["tubes"] = tube_overlay(_plane2d(image, idx), extras["tubes"])
    if "collagen" in extras and config.collagen is not None:
        from .collagen import collagen_overlay

        idx = resolve_channel(config.collagen.channel, image.channel_names, "collagen.channel")
        out["collagen"] = collagen_overlay(_plane2d(image, idx), extras["collagen"])
    return out


def write_readout_overlays(result: AnalysisResult, qc_dir: Path) -> list[Path]:
    """Write ``qc/<image>_tubes.png`` / ``qc/<image>_collagen.png`` (the readouts' QC pictures
    made by :func:`analyze_image`)."""
    import imageio.v3 as iio

    paths = []
    for kind, rgb in result.extras.get("qc", {}).items():
        qc_dir.mkdir(parents=True, exist_ok=True)
        path = qc_dir / f"{result.image}_{kind}.png"
        iio.imwrite(path, rgb)
        paths.append(path)
    return paths


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


def images_table(results: Sequence[AnalysisResult]) -> pd.DataFrame:
    """``images.csv``: one row per image."""
    return pd.DataFrame([r.summary for r in results])


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


def _plane2d(image: ImageData, index: int) -> np.ndarray:
    arr = np.asarray(image.channel(index), dtype=np.float32)
    return arr.max(axis=0) if arr.shape[0] > 1 else arr[0]


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


# -- outputs -----------------------------------------------------------------------------------


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
            write_labels(out / "labels" / f"{r.image}_cells.tif", _squeeze(r.cells_labels))
        if r.nuclei_labels is not None:
            write_labels(out / "labels" / f"{r.image}_nuclei.tif", _squeeze(r.nuclei_labels))
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
) -> Path:
    """``qc/<image>_overlay.png`` of a finalized result (see :mod:`napari_exouptake._qc`)."""
    from ._qc import draw_overlay, write_qc_png

    cells = result.cells
    nuclei_labels = result.nuclei_labels if nuclei_labels is None else nuclei_labels
    pos = (
        cells.loc[cells["exo_positive"].astype(bool), "cell_id"] if "exo_positive" in cells else []
    )
    rgb = draw_overlay(
        result.exo_image if exo is None else exo,
        result.cells_labels if cells_labels is None else cells_labels,
        nuclei_labels,
        result.spots,
        np.asarray(pos, dtype=np.int64),
        contrast,
    )
    return write_qc_png(
        path,
        rgb,
        title=qc_title(result.image, result.condition, cells),
        pixel_size_um=result.provenance.get("pixel_size_um"),
        contrast=contrast,
        with_nuclei=nuclei_labels is not None,
    )


def _squeeze(labels: np.ndarray) -> np.ndarray:
    return labels[0] if labels.ndim == 3 and labels.shape[0] == 1 else labels


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
    for m in _marker_names(config):
        agg[f"pct_{m}_positive"] = (f"{m}_positive", lambda s: 100.0 * s.mean())
    table = cells.groupby("condition", sort=False).agg(**agg)
    return table.round(2)
