"""The work of one input file, run in a worker: analyse (or segment) every unit of it and
write its part folder (or label images)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._qc import qc_step
from ..io import replace_dir
from ..logs import LOG_FORMAT
from ..results import squeeze_plane
from .layout import _LOG_NAME, PART_VERSION, _part_dir
from .manifest import _jsonable, _Task
from .stacks import _LabelSource, _units

log = logging.getLogger(__name__)


_WORKER_LOGS: set[str] = set()


def _worker_logging(out: str) -> None:
    """In a worker process: log to ``OUT/exouptake.log`` as well (once per process)."""
    if out in _WORKER_LOGS:
        return
    _WORKER_LOGS.add(out)
    pkg = logging.getLogger("napari_exouptake")
    if any(
        isinstance(h, logging.FileHandler) and h.baseFilename == str(Path(out) / _LOG_NAME)
        for h in pkg.handlers
    ):
        return  # the parent process itself (serial run) already logs there
    handler = logging.FileHandler(Path(out) / _LOG_NAME, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.captureWarnings(True)  # torch's warnings into the log, not the console
    for lg in (pkg, logging.getLogger("cellpose"), logging.getLogger("py.warnings")):
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    for lg in (logging.getLogger("cellpose"), logging.getLogger("py.warnings")):
        lg.propagate = False  # worker processes have no console filter


def _run_task(task: _Task) -> dict[str, Any]:
    """Analyse (or segment) every unit of one file; never raises (errors go in the outcome)."""
    _worker_logging(task.out)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if task.kind == "analyze":
            info = _analyze_file(task)
        else:
            info = _segment_file(task)
        seconds = time.perf_counter() - t0
        log.info(
            "%s: done in %.2f s (%s)",
            task.name,
            seconds,
            ", ".join(f"{k} {v}" for k, v in info.items() if k != "files"),
        )
        return {
            "image": task.name,
            "ok": True,
            "seconds": seconds,
            "cpu_s": time.process_time() - c0,
            "worker": f"{platform.node()}:{os.getpid()}",
            **info,
        }
    except Exception as exc:  # a broken image must not stop the batch
        seconds = time.perf_counter() - t0
        msg = f"{type(exc).__name__}: {exc}"
        log.error("%s: failed after %.2f s: %s", task.name, seconds, msg)
        log.debug("%s: traceback", task.name, exc_info=True)
        return {"image": task.name, "ok": False, "seconds": seconds, "error": msg}


def _analyze_file(task: _Task) -> dict[str, Any]:
    from ..io import write_labels
    from ..pipeline import measure_image, write_readout_overlays

    out = Path(task.out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tmp = parts / f".{task.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        source = _LabelSource(task.labels, task.name)
        cells_frames, spots_frames, units_meta = [], [], []
        for unit in _units(task, source.is_2d):
            base = unit.name if unit.z is None else unit.name.rsplit("_z", 1)[0]
            lab = source.get(unit, base, "cells")
            nuc = source.get(unit, base, "nuclei") if lab is not None else None
            res = measure_image(unit.image, task.config, labels=lab, nuclei=nuc, name=unit.name)
            cells = res.cells.drop(columns=["condition"], errors="ignore")
            cells_frames.append(cells)
            spots_frames.append(res.spots)
            labels_dir = tmp / "labels"
            if res.exo_image is not None:  # None: image-level readouts only, no cells
                write_labels(labels_dir / f"{unit.name}_cells.tif", squeeze_plane(res.cells_labels))
            if res.nuclei_labels is not None:
                write_labels(
                    labels_dir / f"{unit.name}_nuclei.tif", squeeze_plane(res.nuclei_labels)
                )
            if task.overlays and res.exo_image is not None:
                # the overlay is drawn at merge time (run-wide contrast, positive cells)
                (tmp / "qc").mkdir(exist_ok=True)
                np.save(tmp / "qc" / f"{unit.name}_exo.npy", _qc_plane(res.exo_image))
            if task.overlays:
                write_readout_overlays(res, tmp / "qc")
            units_meta.append(
                {
                    "image": unit.name,
                    "series": unit.series,
                    "t": unit.t,
                    "z": unit.z,
                    "readouts": res.extras.get("readouts", {}),
                    "provenance": res.provenance,
                    "nuclei": res.nuclei_labels is not None,
                }
            )
        if not units_meta:
            raise ValueError(f"{task.path}: the file holds no image")
        cells = pd.concat(cells_frames, ignore_index=True)
        spots = pd.concat(spots_frames, ignore_index=True)
        cells.to_parquet(tmp / "cells.parquet", index=False)
        spots.to_parquet(tmp / "spots.parquet", index=False)
        meta = {
            "part_version": PART_VERSION,
            "image": task.name,
            "path": task.path,
            "key": _jsonable(task.key),
            "units": units_meta,
        }
        (tmp / "part.json").write_text(
            json.dumps(_jsonable(meta), indent=1, sort_keys=True), encoding="utf-8"
        )
        replace_dir(tmp, _part_dir(out, task.name))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"units": len(units_meta), "cells": int(len(cells)), "spots": int(len(spots))}


def _segment_file(task: _Task) -> dict[str, Any]:
    from ..io import write_labels
    from ..segmentation import segment

    task.config.check_roles("segment")
    labels_dir = Path(task.out) / "labels"
    files: list[str] = []
    n_cells = 0
    for unit in _units(task, lambda name, t, n_t: False):
        seg = segment(unit.image, task.config)
        write_labels(labels_dir / f"{unit.name}_cells.tif", squeeze_plane(seg.cells))
        files.append(f"{unit.name}_cells.tif")
        if seg.nuclei is not None and task.config.segmentation.mode != "nuclei":
            write_labels(labels_dir / f"{unit.name}_nuclei.tif", squeeze_plane(seg.nuclei))
            files.append(f"{unit.name}_nuclei.tif")
        n_cells += seg.n_cells
    return {"units": len(files), "cells": n_cells, "files": files}


def _qc_plane(exo: np.ndarray) -> np.ndarray:
    """The EV channel as the QC overlay shows it: 2D (maximum projection), float32."""
    exo = np.asarray(exo)
    plane = exo.max(axis=0) if exo.ndim == 3 else exo
    k = qc_step(plane.shape)
    return np.ascontiguousarray(plane[::k, ::k], dtype=np.float32)
