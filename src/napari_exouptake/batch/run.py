"""A batch: :func:`analyze_batch` and :func:`segment_batch`."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import AssayConfig, config_hash
from ..io import atomic_write
from ..logs import log_to_file
from ..progress import Cancel, Progress, report, within
from .checks import _check_model, _clean_stale, _pixel_limit, _preflight_channels, _prepare
from .errors import BatchUsageError, _output_errors, _under
from .executors import _execute
from .inputs import InputFile
from .layout import _LOG_NAME, _PUBLISHED, _RESULTS
from .lock import run_lock
from .manifest import (
    _append_manifest,
    _is_done,
    _jsonable,
    _key,
    _LabelsIndex,
    _read_manifest,
    _Task,
)
from .merge import _merge_into, refresh_report
from .publish import _clean_results, _new_generation, _publish
from .sheets import load_sample_sheet

__all__ = ["BatchResult", "analyze_batch", "segment_batch"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a batch did.

    Attributes
    ----------
    out : Path
    inputs : list of InputFile
    done : list of str
        Images analysed in this run.
    skipped : list of str
        Images whose finished part was reused.
    failed : dict of str to str
        Image -> error message (also in ``failures.csv``).
    wall_s : float
        Seconds for the whole batch, merge included.
    tables : dict of str to Path
    """

    out: Path
    inputs: list[InputFile]
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    wall_s: float = 0.0
    tables: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every input is in the tables, 1 when some failed (CONTRACT exit codes)."""
        return 1 if self.failed else 0


def _pending(tasks: Sequence[_Task], out: Path, force: bool, result: BatchResult) -> list[_Task]:
    """The tasks whose output is not yet there (a finished one is added to ``result.skipped``)."""
    manifest = {} if force else _read_manifest(out)
    todo = []
    for t in tasks:
        if not _is_done(t, manifest, out):
            todo.append(t)
            continue
        result.skipped.append(t.name)
        if _jsonable(t.key) != manifest.get(t.name, {}).get("key"):
            _append_manifest(
                out,
                {  # finished just before a kill: record it now
                    "image": t.name,
                    "path": t.path,
                    "status": "done",
                    "recovered": True,
                    "key": _jsonable(t.key),
                    "config_sha256": config_hash(t.config),
                },
            )
    if result.skipped:
        log.info(
            "%d image(s) already done with the same config and files: skipped", len(result.skipped)
        )
    return todo


def _record_done(out: Path, task: _Task, outcome: dict[str, Any]) -> None:
    _append_manifest(
        out,
        {
            "image": task.name,
            "path": task.path,
            "status": "done",
            "key": _jsonable(task.key),
            "config_sha256": config_hash(task.config),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(float(outcome["seconds"]), 3),
            "cpu_s": round(float(outcome.get("cpu_s", float("nan"))), 3),
            "worker": outcome.get("worker"),
            "units": outcome.get("units"),
            "files": outcome.get("files", []),
        },
    )


def _run_tasks(
    tasks: list[_Task],
    out: Path,
    workers: int,
    scheduler: str | None,
    result: BatchResult,
    force: bool,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> None:
    """Run the tasks not yet done; ``progress`` after each input file, ``cancel`` polled then."""
    todo = _pending(tasks, out, force, result)
    n = len(todo)
    kind = tasks[0].kind if tasks else "analyze"
    report(progress, 0.0 if n else 1.0, f"{kind}: {n} image file(s) to do")
    by_name = {t.name: t for t in todo}
    for outcome in _execute(todo, workers, scheduler):
        task = by_name[outcome["image"]]
        if outcome["ok"]:
            result.done.append(task.name)
            _record_done(out, task, outcome)
        else:
            result.failed[task.name] = outcome["error"]
        k = len(result.done) + len(result.failed)
        failed = f" ({len(result.failed)} failed)" if result.failed else ""
        report(progress, k / n, f"image file {k} of {n} done: {task.name}{failed}")
        if cancel is not None and cancel():
            # leaving the loop closes the executor generator: images not started are
            # dropped, finished parts are kept and merged (a rerun resumes from them)
            result.cancelled = True
            log.warning("cancelled after %d of %d image(s)", k, n)
            break


def _write_failures(folder: Path, result: BatchResult) -> None:
    path = folder / "failures.csv"
    if not result.failed:
        if path.exists():
            path.unlink()
        return
    paths = {f.name: str(f.path) for f in result.inputs}
    rows = [
        {"image": k, "path": paths.get(k, ""), "error": v} for k, v in sorted(result.failed.items())
    ]
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    log.error(
        "%d of %d image(s) failed; see %s", len(rows), len(result.inputs), result.out / path.name
    )


#: Share of a batch's progress given to the images; the merge takes the rest.
_IMAGES_SHARE = 0.95


def analyze_batch(
    inputs: Sequence[str | Path] | str | Path,
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    sample_sheet: str | Path | pd.DataFrame | None = None,
    z_mode: str = "auto",
    overlays: bool = True,
    force: bool = False,
    max_pixels: int | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> BatchResult:
    """Analyse many images into ``out``, resumably, then merge the run-level tables.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        Image files, folders (recursive) or glob patterns.
    config : AssayConfig or path of a YAML config
    out : str or Path
        Output folder (created). A rerun on the same folder skips finished images.
    labels : str or Path, optional
        A label image used for every image, or a folder of ``<image>_cells.tif`` (and
        ``<image>_nuclei.tif``); for stacks ``<image>_t003_cells.tif`` etc., or one file-level
        label array of shape (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X).
    workers : int
        Local worker processes (1: in this process); with ``scheduler="local"`` the number of
        Dask workers.
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``), or ``"local"`` for a LocalCluster on
        127.0.0.1. Workers must see ``out`` and the inputs at the same paths.
    sample_sheet : path or DataFrame, optional
        See :func:`load_sample_sheet`.
    z_mode : {"auto", "volume", "planes"}
        How z-stacks are analysed: as volumes, or plane by plane; ``auto``: per plane when the
        given labels are 2-D, else as volumes.
    overlays : bool
        Write QC overlay PNGs (``qc/<image>_overlay.png``).
    force : bool
        Redo every image even when its part is up to date.
    max_pixels : int, optional
        Largest image (pixels of one file's series: C x Z x Y x X x T) a worker may decode;
        larger files fail with a clear message before any pixel is read. Default: from the
        memory available when the batch starts (see :func:`default_max_pixels`).
    progress : callable(fraction: float, message: str), optional
        Called after each input file finishes (fraction of the files to do, up to 0.95;
        message ``"image file 3 of 12 done: <name>"``), before the merge and at the end (1.0).
        See :mod:`napari_exouptake.progress`.
    cancel : callable() -> bool, optional
        Polled after each input file; when True, images not started are dropped (with local
        worker processes, the ones in progress are stopped too), finished ones are kept and
        merged, and ``BatchResult.cancelled`` is set (a rerun resumes).

    Returns
    -------
    BatchResult

    Raises
    ------
    BatchUsageError
        Usage mistakes; :class:`RunLockedError` when another run uses ``out``;
        :class:`OutputError` when ``out`` cannot be written; :class:`MixedPartsError` when a
        part does not belong to this run.
    """
    t0 = time.perf_counter()
    if z_mode not in ("auto", "volume", "planes"):
        raise BatchUsageError(f"z_mode must be auto, volume or planes, got {z_mode!r}")
    with _output_errors(out):
        config, out, files = _prepare(inputs, config, out, labels, workers)
        sheet, index = _check_analysis(config, files, out, labels, scheduler, sample_sheet)
        limit = _pixel_limit(max_pixels, workers, scheduler)
        result = BatchResult(out=out, inputs=files)
        with run_lock(out, "analyze"), log_to_file(out / _LOG_NAME):
            executor = (
                f"dask:{scheduler}"
                if scheduler
                else f"processes:{workers}"
                if workers > 1
                else "serial"
            )
            log.info("exouptake analyze: %d input file(s) -> %s (%s)", len(files), out, executor)
            _clean_stale(out)
            _clean_results(out)
            lab = str(Path(labels).resolve()) if labels is not None else None
            tasks = _tasks("analyze", files, out, config, index, z_mode, lab, overlays, limit)
            images = within(progress, 0.0, _IMAGES_SHARE)
            _run_tasks(tasks, out, workers, scheduler, result, force, images, cancel)
            report(progress, _IMAGES_SHARE, "merging the tables")
            _merge_run(result, config, tasks, sheet, sample_sheet)
            result.wall_s = time.perf_counter() - t0
            log.info(
                "analyzed %d, reused %d, failed %d image file(s) in %.1f s -> %s",
                len(result.done),
                len(result.skipped),
                len(result.failed),
                result.wall_s,
                out,
            )
            report(progress, 1.0, _summary("analyzed", result))
    return result


def _tasks(
    kind: str,
    files: Sequence[InputFile],
    out: Path,
    config: AssayConfig,
    labels_index: _LabelsIndex,
    z_mode: str,
    labels: str | None = None,
    overlays: bool = True,
    max_pixels: int | None = None,
) -> list[_Task]:
    """One task per input file, with the key its part must carry."""
    key = [_key(kind, f, config, labels_index, z_mode) for f in files]
    where = str(out.resolve())
    return [
        _Task(kind, f.name, str(f.path), where, config, k, labels, z_mode, overlays, max_pixels)
        for f, k in zip(files, key, strict=True)
    ]


def _summary(verb: str, result: BatchResult) -> str:
    failed = f", {len(result.failed)} failed" if result.failed else ""
    return f"{verb} {len(result.done)}, reused {len(result.skipped)}{failed}"


def _check_analysis(
    config: AssayConfig,
    files: Sequence[InputFile],
    out: Path,
    labels: str | Path | None,
    scheduler: str | None,
    sample_sheet: str | Path | pd.DataFrame | None,
) -> tuple[pd.DataFrame | None, _LabelsIndex]:
    """Usage checks of an analysis before the run lock; the sample sheet and labels index."""
    config.check_roles("quantify" if labels is not None else "analyze")
    _preflight_channels(config, files)
    if labels is None and not config.image_level_only():
        _check_model(config, scheduler)
    sheet = sample_sheet
    if sample_sheet is not None and not isinstance(sample_sheet, pd.DataFrame):
        sheet = load_sample_sheet(sample_sheet)
    index = _LabelsIndex(labels)
    if labels is not None and any(
        _under(labels, out / name) for name in _PUBLISHED if (out / name).exists()
    ):
        raise BatchUsageError(
            f"--labels {str(labels)!r} lies in the results of --out {str(out)!r}, which "
            "this run replaces; use another --out"
        )
    return sheet, index


def _merge_run(
    result: BatchResult,
    config: AssayConfig,
    tasks: Sequence[_Task],
    sheet: pd.DataFrame | None,
    sample_sheet: str | Path | pd.DataFrame | None,
) -> None:
    """Merge the finished parts of this run into a new results generation and publish it."""
    out, files = result.out, result.inputs
    finished = set(result.done) | set(result.skipped)
    ok = [
        f.name
        for f in files
        if f.name not in result.failed and (not result.cancelled or f.name in finished)
    ]
    gen = _new_generation(out)
    try:
        _write_failures(gen, result)
        paths = (
            _merge_into(
                gen,
                out,
                ok,
                config,
                sample_sheet=sheet,
                keys={t.name: t.key for t in tasks},
                extra_run_info={
                    "batch": {
                        "inputs": len(files),
                        "failed": sorted(result.failed),
                        "sample_sheet": str(sample_sheet)
                        if isinstance(sample_sheet, (str, Path))
                        else None,
                    },
                },
            )
            if ok
            else {}
        )
        _publish(out, gen)
    finally:
        if gen.exists():
            shutil.rmtree(gen, ignore_errors=True)
    result.tables = {k: out / p.name for k, p in paths.items()}
    if paths:
        report_path = refresh_report(out)
        if report_path is not None:
            result.tables["report"] = report_path


def segment_batch(
    inputs: Sequence[str | Path] | str | Path,
    config: AssayConfig | str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    max_pixels: int | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> BatchResult:
    """Segment many images: ``out/labels/<image>_cells.tif`` (and ``_nuclei.tif``), resumable.

    Stacks are split as in :func:`analyze_batch` (series and time points; z-stacks are
    segmented as volumes). Parameters as in :func:`analyze_batch`; ``progress`` goes up to 1.0
    with the last input file.
    """
    t0 = time.perf_counter()
    with _output_errors(out):
        config, out, files = _prepare(inputs, config, out, None, workers)
        config.check_roles("segment")
        _check_model(config, scheduler)
        result = BatchResult(out=out, inputs=files)
        none = _LabelsIndex(None)
        limit = _pixel_limit(max_pixels, workers, scheduler)
        if (out / _RESULTS).exists():
            raise BatchUsageError(
                f"--out {str(out)!r} holds results of `exouptake analyze`; write the "
                "segmentation to another folder"
            )
        with run_lock(out, "segment"), log_to_file(out / _LOG_NAME):
            log.info("exouptake segment: %d input file(s) -> %s", len(files), out)
            tasks = _tasks("segment", files, out, config, none, "volume", max_pixels=limit)
            _run_tasks(tasks, out, workers, scheduler, result, force, progress, cancel)
            _write_failures(out, result)
            result.wall_s = time.perf_counter() - t0
            log.info(
                "segmented %d, reused %d, failed %d image file(s) in %.1f s",
                len(result.done),
                len(result.skipped),
                len(result.failed),
                result.wall_s,
            )
            report(progress, 1.0, _summary("segmented", result))
    return result
