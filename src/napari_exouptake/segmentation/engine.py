"""Inference: model cache, OOM fallback, :func:`segment` and :func:`estimate_diameter`.

torch and cellpose are imported inside functions, so importing this module stays light.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..config import AssayConfig
    from ..io import ImageData
from ..progress import Cancel, Cancelled, Progress, report
from .blocks import block_overlap_px, needs_blocks, segment_in_blocks
from .device import _empty_cuda_cache, _is_oom, _set_threads, resolve_device
from .labels import _expand, _median_diameter, map_nuclei_to_cells
from .models import (
    DEMO_MODELS,
    ModelNotAvailableError,
    ResolvedModel,
    cellpose_major_version,
    cellpose_version,
    require_cellpose,
    resolve_model,
)

logger = logging.getLogger("napari_exouptake.segmentation")


class SegmentationCancelled(Cancelled):
    """Raised when the ``cancel`` callback of :func:`segment` returns True (a
    :class:`napari_exouptake.progress.Cancelled`, which every long call raises)."""


# --------------------------------------------------------------------------------------
# model loading and running (the torch/cellpose boundary)
# --------------------------------------------------------------------------------------

_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_CACHE_MAX = 4


def clear_model_cache() -> None:
    """Forget every loaded network (frees GPU memory)."""
    _MODEL_CACHE.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _get_model(rm: ResolvedModel, device: str) -> Any:
    """Load (once per process, per weights file and device) a Cellpose model."""
    key = (str(rm.path), rm.sha256, device)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    import torch
    from cellpose import models

    _set_threads()
    dev = torch.device(device)
    t0 = time.perf_counter()
    if rm.major >= 4:
        model = models.CellposeModel(
            gpu=dev.type != "cpu",
            pretrained_model=str(rm.path),
            device=dev,
            use_bfloat16=dev.type == "cuda",
        )
    else:
        model = models.CellposeModel(
            gpu=dev.type != "cpu",
            pretrained_model=str(rm.path),
            device=dev,
            nchan=2,
        )
    logger.info(
        "loaded model %s (%s) on %s in %.2f s",
        rm.model_id,
        rm.path.name,
        device,
        time.perf_counter() - t0,
    )
    if len(_MODEL_CACHE) >= _MODEL_CACHE_MAX:
        _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    _MODEL_CACHE[key] = model
    return model


def _model_diam_mean(model: Any) -> float:
    return float(getattr(model, "diam_mean", 30.0) or 30.0)


def _eval_model(model: Any, x: np.ndarray, major: int, **kw: Any) -> np.ndarray:
    """Run ``model.eval`` on one input and return its integer mask array.

    ``x`` is ``(Y, X, C)`` or ``(Z, Y, X, C)`` with C = 2 (cell, nucleus) for Cellpose 3 and
    C = 3 (cell, nucleus, zeros) for Cellpose 4.
    """
    if x.ndim == 4:
        kw["z_axis"] = 0
    if major >= 4:
        out = model.eval(x, channel_axis=-1, **kw)
    else:
        has_helper = bool(np.ptp(x[..., 1]) > 0)
        out = model.eval(x, channels=[1, 2] if has_helper else [1, 0], channel_axis=-1, **kw)
    return np.asarray(out[0])


def _run(
    rm: ResolvedModel, device: str, x: np.ndarray, batch_size: int, kw: dict, info: dict
) -> np.ndarray:
    """Evaluate with GPU out-of-memory handling: halve the batch, then fall back to CPU."""
    bs = max(1, int(batch_size))
    dev = device
    while True:
        model = _get_model(rm, dev)
        try:
            return _eval_model(model, x, rm.major, batch_size=bs, **kw)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if dev == "cpu" or not _is_oom(exc):
                raise
            _empty_cuda_cache()
            if bs > 1:
                bs = max(1, bs // 2)
                logger.warning("out of GPU memory on %s: retrying with batch_size=%d", dev, bs)
                info["batch_size"] = bs
                continue
            logger.warning(
                "out of GPU memory on %s even with batch_size=1: falling back to CPU", dev
            )
            info["device"] = "cpu"
            info["fallback"] = f"cpu (out of memory on {dev})"
            dev = "cpu"
            bs = max(1, int(batch_size))


# --------------------------------------------------------------------------------------
# segment()
# --------------------------------------------------------------------------------------


@dataclass
class Segmentation:
    """Result of :func:`segment`.

    Attributes
    ----------
    cells : int ndarray
        Cell labels, (Y, X) for a 2D image, (Z, Y, X) for a z-stack, with a leading T axis
        for a time series (0 = background). In ``nuclei`` mode these are the nuclei.
    nuclei : int ndarray or None
        Nucleus labels of the same shape, when a nuclear channel was segmented.
    nucleus_to_cell : (n_nuclei + 1,) int64 ndarray or None
        ``nucleus_to_cell[nucleus_id] = cell_id`` (0 = in no cell). For a time series the
        map of each frame is in ``timings``-free list form: one array per frame.
    device : str
        Device actually used (``cpu``, ``cuda:0``, ``mps``; ``cpu`` after an OOM fallback).
    model_id, model_sha256 : str
        Model as requested and the SHA-256 of its weights file ("" for pure expansion).
    nuclei_model_id, nuclei_model_sha256 : str
        Same for the nuclei model ("" when not used).
    cellpose_version : str
    mode : str
    diameter_px : float or None
        Diameter passed to Cellpose for the main model.
    timings : dict[str, float]
        Seconds per stage (``load``, ``cells``, ``nuclei``, ``expand``, ``total``).
    warnings : list of str
    """

    cells: np.ndarray
    nuclei: np.ndarray | None = None
    nucleus_to_cell: np.ndarray | list | None = None
    device: str = "cpu"
    model_id: str = ""
    model_sha256: str = ""
    nuclei_model_id: str = ""
    nuclei_model_sha256: str = ""
    cellpose_version: str = ""
    mode: str = "cells"
    diameter_px: float | None = None
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return int(len(np.unique(self.cells)) - (1 if (self.cells == 0).any() else 0))

    def warn(self, msg: str, *, once: bool = False) -> None:
        """Log a warning and record it in ``warnings`` (with ``once``: only the first time)."""
        if once and msg in self.warnings:
            return
        self.warnings.append(msg)
        logger.warning(msg)

    def provenance(self) -> dict:
        """JSON-ready model identity, device and timings (for ``run.json``)."""
        return {
            "mode": self.mode,
            "model": self.model_id,
            "model_sha256": self.model_sha256,
            "nuclei_model": self.nuclei_model_id,
            "nuclei_model_sha256": self.nuclei_model_sha256,
            "cellpose_version": self.cellpose_version,
            "device": self.device,
            "diameter_px": self.diameter_px,
            "timings_s": {k: round(float(v), 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }

    def nucleus_table(self) -> pd.DataFrame:
        """``nucleus_id``, ``cell_id`` (and ``t`` for a time series) as a DataFrame."""
        import pandas as pd

        if self.nucleus_to_cell is None:
            return pd.DataFrame({"nucleus_id": [], "cell_id": []})
        maps = self.nucleus_to_cell
        if isinstance(maps, np.ndarray):
            ids = np.flatnonzero(np.bincount(self.nuclei.ravel())[1:]) + 1
            return pd.DataFrame({"nucleus_id": ids, "cell_id": maps[ids]})
        frames = []
        for t, m in enumerate(maps):
            ids = np.flatnonzero(np.bincount(self.nuclei[t].ravel())[1:]) + 1
            frames.append(pd.DataFrame({"t": t, "nucleus_id": ids, "cell_id": m[ids]}))
        return pd.concat(frames, ignore_index=True)


def _default_nuclei_model(main_model: str, major: int) -> str:
    if main_model in DEMO_MODELS and major < 4:
        return "demo-nuclei"
    return "cpsam" if major >= 4 else "nuclei"


def _check_finite(arr: np.ndarray, what: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"{what} contains {n} NaN/inf pixel(s); replace them (e.g. "
            "np.nan_to_num) before segmentation"
        )


def _stack_input(main: np.ndarray, helper: np.ndarray | None, major: int) -> np.ndarray:
    """(Z, Y, X) main [+ helper] -> (Z, Y, X, C) float32 with C = 2 (v3) or 3 (v4)."""
    nc = 3 if major >= 4 else 2
    x = np.zeros((*main.shape, nc), dtype=np.float32)
    x[..., 0] = main
    if helper is not None:
        x[..., 1] = helper
    return x


def eval_kwargs(sc: Any, diameter: float | None) -> dict[str, Any]:
    """Keyword arguments of Cellpose's ``eval`` that a ``SegmentationConfig`` sets.

    Parameters
    ----------
    sc : SegmentationConfig
    diameter : float or None
        Object diameter in pixels (None: Cellpose estimates it).
    """
    return {
        "diameter": diameter,
        "flow_threshold": sc.flow_threshold,
        "cellprob_threshold": sc.cellprob_threshold,
        "min_size": sc.min_size_px,
        "resample": sc.resample,
        "tile_overlap": sc.tile_overlap,
    }


def segment(
    image: ImageData,
    config: AssayConfig,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Segmentation:
    """Segment cells (and nuclei) of one image with Cellpose.

    Parameters
    ----------
    image : ImageData
        ``(C, Z, Y, X)``, or ``(T, C, Z, Y, X)`` when ``image.axes == "TCZYX"`` (each frame
        is segmented on its own).
    config : AssayConfig
        Uses ``config.channels`` (``cell``, ``nucleus``, ``exosome``),
        ``config.pixel_size_um`` (else ``image.pixel_size_um``) and ``config.segmentation``:

        * ``mode="cells"``: the main model on the cell channel with the nucleus channel as
          helper; when a nucleus channel is set the nuclei model (``nuclei_model``, default
          ``demo-nuclei`` for a demo main model, else ``nuclei`` / ``cpsam``) also runs at
          half the cell diameter and nuclei are mapped to cells by majority overlap.
        * ``mode="nuclei"``: the main model on the nucleus channel; cells = nuclei.
        * ``mode="expand"``: nuclei (``nuclei_model``, or the main model when it is a nuclei
          model) grown by ``expand_um`` (``expand_method`` distance or watershed on the cell,
          else exosome, channel).

        z-stacks: ``do_3d`` (3D flows) or 2D per plane stitched at ``stitch_threshold``
        (0.5 when neither is set).
    progress : callable(fraction, message), optional
        See :mod:`napari_exouptake.progress`.
    cancel : callable() -> bool, optional
        Polled between steps; when it returns True, :class:`SegmentationCancelled` (a
        :class:`~napari_exouptake.progress.Cancelled`) is raised.

    Returns
    -------
    Segmentation

    Raises
    ------
    ValueError
        A channel role points at a missing channel (the message lists the image's
        channels), a needed channel role is unset, NaN pixels, or unknown mode.
    ModelNotAvailableError
        The model is not on disk (fails fast, never downloads).
    """
    require_cellpose()
    t_all = time.perf_counter()
    sc = config.segmentation
    mode = sc.mode
    if mode not in ("cells", "nuclei", "expand"):
        raise ValueError(f"segmentation.mode must be cells, nuclei or expand, got {mode!r}")
    roles = config.channels.resolve(image.channel_names)
    cell_ch, nuc_ch = roles.cell, roles.nucleus
    _check_mode_channels(mode, cell_ch, nuc_ch, image.channel_names)

    major = cellpose_major_version()
    seg = Segmentation(cells=np.zeros(0, np.int32), mode=mode, cellpose_version=cellpose_version())
    timings: dict[str, float] = {"load": 0.0, "cells": 0.0, "nuclei": 0.0, "expand": 0.0}

    # models (resolved up front: a missing model fails before any work)
    rm_main, rm_nuc = _models_for(sc, nuc_ch is not None, major)
    if major == 0:
        raise ModelNotAvailableError("Cellpose is not installed: pip install 'cellpose>=3.1.1'")

    device = resolve_device(sc.device)
    logger.info(
        "segmentation on %s (cellpose %s, mode %s, model %s)",
        device,
        seg.cellpose_version,
        mode,
        sc.model,
    )
    info: dict[str, Any] = {"device": device}

    px = config.pixel_size_um or image.pixel_size_um
    frames = range(image.n_timepoints)
    cells_out, nuc_out, maps = [], [], []
    n_steps = len(frames) * (1 + (rm_nuc is not None and rm_main is not None))
    done = 0

    def tick(msg: str) -> None:
        nonlocal done
        done += 1
        report(progress, done / max(n_steps, 1), msg)

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise SegmentationCancelled("segmentation cancelled")

    spacing = None
    if image.is_3d and px and image.z_step_um:
        spacing = (image.z_step_um / px, 1.0, 1.0)

    for t in frames:
        check_cancel()
        fr = image.frame(t)
        main_ch = nuc_ch if mode in ("nuclei", "expand") else cell_ch
        main = np.asarray(fr.data[main_ch])
        _check_finite(main, f"channel {main_ch} ({image.channel_names[main_ch]})")
        nucimg = None
        if nuc_ch is not None:
            nucimg = np.asarray(fr.data[nuc_ch])
            _check_finite(nucimg, f"channel {nuc_ch} ({image.channel_names[nuc_ch]})")

        cells = nuclei = None
        if rm_main is not None:
            t0 = time.perf_counter()
            helper = nucimg if (mode == "cells") else None
            cells = _segment_array(
                rm_main, device, main, helper, sc.diameter_px, sc, spacing, info, seg
            )
            timings["cells"] += time.perf_counter() - t0
            tick(f"frame {t}: {mode}")
            check_cancel()
        if rm_nuc is not None:
            t0 = time.perf_counter()
            dn = sc.diameter_px
            if mode == "cells" and dn is not None:
                dn = dn / 2.0
            nuclei = _segment_array(rm_nuc, device, nucimg, None, dn, sc, spacing, info, seg)
            timings["nuclei"] += time.perf_counter() - t0
            tick(f"frame {t}: nuclei")
        if mode == "nuclei":
            nuclei, cells = cells, cells
        elif mode == "expand":
            t0 = time.perf_counter()
            sch = cell_ch if cell_ch is not None else roles.exosome
            cells = _expand_frame(fr, nuclei, sc, px, sch, spacing, seg)
            timings["expand"] += time.perf_counter() - t0
        cells_out.append(cells)
        nuc_out.append(nuclei)
        if nuclei is not None:
            maps.append(map_nuclei_to_cells(nuclei, cells))

    def squeeze(arrs: list) -> np.ndarray:
        a = np.stack(arrs)  # (T, Z, Y, X)
        if not image.is_3d:
            a = a[:, 0]
        return a if image.axes == "TCZYX" else a[0]

    seg.cells = squeeze(cells_out)
    if all(n is not None for n in nuc_out):
        seg.nuclei = squeeze(nuc_out)
        seg.nucleus_to_cell = maps if image.axes == "TCZYX" else maps[0]
    seg.device = info.get("device", device)
    if "fallback" in info:
        seg.warnings.append(info["fallback"])
    if rm_main is not None:
        seg.model_id, seg.model_sha256 = rm_main.model_id, rm_main.sha256
    if rm_nuc is not None:
        seg.nuclei_model_id, seg.nuclei_model_sha256 = rm_nuc.model_id, rm_nuc.sha256
    seg.diameter_px = sc.diameter_px
    timings["total"] = time.perf_counter() - t_all
    seg.timings = timings
    return seg


def _check_mode_channels(mode: str, cell_ch, nuc_ch, channel_names) -> None:
    """The channel roles ``mode`` needs are set (the message lists the image's channels)."""
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(channel_names))
    if mode == "cells" and cell_ch is None:
        raise ValueError(
            "segmentation.mode 'cells' needs channels.cell (the cytoplasm or "
            f"membrane channel); the image's channels are ({listing})"
        )
    if mode in ("nuclei", "expand") and nuc_ch is None:
        raise ValueError(
            f"segmentation.mode {mode!r} needs channels.nucleus; the image's "
            f"channels are ({listing})"
        )


def _models_for(sc, has_nucleus_channel: bool, major: int):
    """The main and the nuclei model a mode runs (each a resolved model or None)."""
    mode = sc.mode
    rm_main = rm_nuc = None
    if mode in ("cells", "nuclei"):
        rm_main = resolve_model(sc.model, major)
    nuc_model_name = sc.nuclei_model
    if mode == "expand" and nuc_model_name is None:
        nuc_model_name = (
            sc.model if "nucle" in sc.model.lower() else (_default_nuclei_model(sc.model, major))
        )
    elif mode == "cells" and has_nucleus_channel and nuc_model_name is None:
        nuc_model_name = _default_nuclei_model(sc.model, major)
    if (mode == "expand") or (mode == "cells" and has_nucleus_channel):
        rm_nuc = resolve_model(nuc_model_name, major)
    return rm_main, rm_nuc


def _expand_frame(fr, nuclei, sc, px, signal_ch, spacing, seg) -> np.ndarray:
    """Cells of one frame as its nuclei grown by ``expand_um`` (``expand_method``)."""
    if px:
        dist = sc.expand_um / px
    else:
        dist = sc.expand_um
        msg = "no pixel size (config.pixel_size_um or file metadata): expand_um taken as pixels"
        seg.warn(msg, once=True)
    signal = None
    if sc.expand_method == "watershed" and signal_ch is not None:
        signal = np.asarray(fr.data[signal_ch], dtype=np.float32)
    return _expand_stack(nuclei, dist, sc.expand_method, signal, spacing)


def _expand_stack(
    nuclei: np.ndarray, dist: float, method: str, signal: np.ndarray | None, spacing: tuple | None
) -> np.ndarray:
    """Expansion for a (Z, Y, X) stack: in 3D when Z > 1, else on the single plane."""
    if nuclei.shape[0] == 1:
        sig = None if signal is None else signal[0]
        return _expand(nuclei[0], dist, method, sig)[None]
    return _expand(nuclei, dist, method, signal, spacing)


def _segment_array(
    rm: ResolvedModel,
    device: str,
    main: np.ndarray,
    helper: np.ndarray | None,
    diameter: float | None,
    sc: Any,
    spacing: tuple | None,
    info: dict,
    seg: Segmentation,
) -> np.ndarray:
    """Segment one (Z, Y, X) channel (+ helper) and return (Z, Y, X) int32 labels."""
    z, h, w = main.shape
    empty = np.zeros(main.shape, dtype=np.int32)
    if min(h, w) < 8:
        msg = f"image of {h}x{w} pixels is too small to segment: returning no objects"
        seg.warn(msg)
        return empty
    if not np.ptp(main) > 0:
        msg = "segmentation channel is constant (e.g. all zero): returning no objects"
        seg.warn(msg)
        return empty
    kw = {
        **eval_kwargs(sc, diameter),
        "normalize": {"normalize": bool(sc.normalize), "norm3D": bool(sc.do_3d)},
    }
    if z == 1 and needs_blocks((h, w), sc.block_size_px):  # big image: blocks.py

        def region(sl: tuple[slice, slice]) -> np.ndarray:
            sl3 = (slice(0, 1), *sl)
            hb = None if helper is None else np.asarray(helper[sl3], dtype=np.float32)
            xb = _stack_input(np.asarray(main[sl3], dtype=np.float32), hb, rm.major)
            return _run(rm, device, xb[0], sc.batch_size, kw, info)

        ov = block_overlap_px(diameter)
        lab = segment_in_blocks(region, (h, w), block_size_px=sc.block_size_px, overlap_px=ov)
        return lab[None]
    x = _stack_input(
        main.astype(np.float32, copy=False),
        None if helper is None else helper.astype(np.float32, copy=False),
        rm.major,
    )
    if z == 1:
        lab = _run(rm, device, x[0], sc.batch_size, kw, info)
        lab = lab.reshape(1, h, w)
    else:
        if sc.do_3d:
            kw.update(do_3D=True, anisotropy=spacing[0] if spacing else None)
        else:
            st = sc.stitch_threshold
            if st <= 0:
                st = 0.5
                msg = (
                    "z-stack with do_3d=False and stitch_threshold=0: planes segmented "
                    "in 2D and stitched at IoU 0.5"
                )
                seg.warn(msg, once=True)
            kw.update(stitch_threshold=st)
        lab = _run(rm, device, x, sc.batch_size, kw, info).reshape(z, h, w)
    n = int(lab.max()) if lab.size else 0
    return lab.astype(np.int32 if n < 2**31 else np.int64, copy=False)


def _with_seg(config: AssayConfig, **updates: Any) -> AssayConfig:
    return config.model_copy(
        update={"segmentation": config.segmentation.model_copy(update=updates)}
    )


def estimate_diameter(image: ImageData, config: AssayConfig, *, max_size: int = 512) -> float:
    """Estimate the object diameter (pixels) for ``config.segmentation.mode``.

    Segments a central crop (at most ``max_size`` x ``max_size``, first frame, middle
    plane) at the model's native scale, then once more at the size found when that differs
    from the native scale by more than 1.5x, and returns the median equivalent-circle
    diameter ``sqrt(4 area / pi)`` of the objects (cells in ``cells`` mode, nuclei in
    ``nuclei``/``expand`` mode).

    Returns
    -------
    float
        Diameter in pixels; ``nan`` when nothing was found.
    """
    fr = image.frame(0)
    z = fr.data.shape[1] // 2
    h, w = fr.shape_yx
    y0, x0 = max(0, (h - max_size) // 2), max(0, (w - max_size) // 2)
    crop = fr.data[:, z : z + 1, y0 : y0 + max_size, x0 : x0 + max_size]
    from dataclasses import replace

    small = replace(fr, data=crop)
    mode = config.segmentation.mode
    cfg = _with_seg(config, diameter_px=None, mode="nuclei" if mode == "expand" else mode)
    major = cellpose_major_version()
    name = cfg.segmentation.model
    if mode == "expand":
        name = cfg.segmentation.nuclei_model or (
            name if "nucle" in name.lower() else _default_nuclei_model(name, major)
        )
        cfg = _with_seg(cfg, model=name)
    rm = resolve_model(name, major)
    native = _model_diam_mean(_get_model(rm, resolve_device(cfg.segmentation.device)))
    seg = segment(small, cfg)
    d = _median_diameter(seg.cells)
    if d > 0 and (d / native > 1.5 or native / d > 1.5):
        seg = segment(small, _with_seg(cfg, diameter_px=d))
        d2 = _median_diameter(seg.cells)
        d = d2 if d2 > 0 else d
    return float(d) if d > 0 else float("nan")
