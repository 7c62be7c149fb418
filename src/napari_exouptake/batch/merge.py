"""Merging the parts of a run into its tables, labels, QC overlays, run.json and report."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import AssayConfig
from .errors import MixedPartsError
from .layout import _part_dir
from .lock import run_lock
from .manifest import _jsonable, analysis_hash
from .publish import _clean_results, _current_generation, _new_generation, _place, _publish
from .sheets import _sheet_row

__all__ = ["merge_parts", "refresh_report"]

log = logging.getLogger(__name__)


def merge_parts(
    out: str | Path,
    names: Sequence[str],
    config: AssayConfig,
    *,
    sample_sheet: pd.DataFrame | None = None,
    extra_run_info: dict[str, Any] | None = None,
    keys: Mapping[str, dict] | None = None,
) -> dict[str, Path]:
    """Rebuild the run-level tables of ``out`` from its part folders.

    Loads the parts of ``names``, sorts every image by name, attaches conditions (sample sheet
    first, else ``config.conditions``) and sample-sheet columns, applies the run-level
    :func:`~napari_exouptake.pipeline.finalize` and writes ``cells.csv``/``.parquet``,
    ``spots.csv``, ``images.csv``, ``labels/``, ``qc/`` and ``run.json``.

    Parameters
    ----------
    out : str or Path
        The batch output folder.
    names : sequence of str
        Input names whose parts to merge (missing parts are skipped with a warning).
    config : AssayConfig
    sample_sheet : pandas.DataFrame, optional
        From :func:`load_sample_sheet`.
    extra_run_info : dict, optional
        Added to ``run.json``.
    keys : mapping of str to dict, optional
        The key every part must carry (config hash, input file fingerprint ...), by name;
        without it, every part must at least have been made with ``config``'s analysis hash.

    Returns
    -------
    dict of str to Path
        ``cells``, ``spots``, ``images``, ``run`` (in ``out``; empty when nothing was merged).

    Raises
    ------
    MixedPartsError
        A part was made with another config or another version of its input file: the
        tables are not written (the previous ones stay).

    Notes
    -----
    The tables are written into a new generation folder ``OUT/.results/gen-...`` and published
    in one atomic step (see :func:`_publish`): readers, and a kill at any moment, see the
    previous complete set or the new one.
    """
    out = Path(out)
    with run_lock(out, "merge"):
        _clean_results(out)
        gen = _new_generation(out)
        try:
            paths = _merge_into(
                gen,
                out,
                names,
                config,
                sample_sheet=sample_sheet,
                extra_run_info=extra_run_info,
                keys=keys,
            )
            if not paths:
                return {}
            _publish(out, gen)
        finally:
            if gen.exists():
                shutil.rmtree(gen, ignore_errors=True)
        published = {k: out / p.name for k, p in paths.items()}
        report = refresh_report(out)
        if report is not None:
            published["report"] = report
    return published


def _merge_into(
    gen: Path,
    out: Path,
    names: Sequence[str],
    config: AssayConfig,
    *,
    sample_sheet: pd.DataFrame | None = None,
    extra_run_info: dict[str, Any] | None = None,
    keys: Mapping[str, dict] | None = None,
) -> dict[str, Path]:
    """Write the merged tables of ``out``'s parts into the unpublished folder ``gen``."""
    from .._columns import write_columns_doc
    from ..io import write_table
    from ..pipeline import finalize, json_default, run_info

    results, meta_of, files_of = _load_parts(out, names, config, sample_sheet, keys)
    if not results:
        log.error("no finished image to merge in %s", out)
        return {}
    dupes = pd.Series([r.image for r in results]).duplicated()
    if dupes.any():
        log.warning(
            "image names repeat across inputs (%s); rename the files",
            results[int(np.flatnonzero(dupes.to_numpy())[0])].image,
        )
    results = finalize(results, config)
    cells, spots, images = _tables(results, meta_of, sample_sheet)

    paths: dict[str, Path] = {}
    paths["cells"] = write_table(cells, gen / "cells")[0]
    paths["spots"] = write_table(spots, gen / "spots")[0]
    paths["images"] = write_table(images, gen / "images")[0]
    paths["columns"] = write_columns_doc(gen, {"cells": cells, "spots": spots, "images": images})
    _place_images(gen, out, results, files_of)
    _write_merged_qc(gen, results, files_of)
    run = run_info(config, results)
    if extra_run_info:
        run.update(extra_run_info)
    (gen / "run.json").write_text(json.dumps(run, indent=2, default=json_default), encoding="utf-8")
    paths["run"] = gen / "run.json"
    return paths


def _load_parts(
    out: Path,
    names: Sequence[str],
    config: AssayConfig,
    sample_sheet: pd.DataFrame | None,
    keys: Mapping[str, dict] | None,
) -> tuple[list[Any], dict[str, dict[str, Any]], dict[str, Path]]:
    """Every unit of the finished parts of ``names`` as an AnalysisResult (sorted by image),
    with its run metadata (sample-sheet row, source file, series, t, z) and its part folder."""
    from ..pipeline import AnalysisResult, condition_for

    want_hash = analysis_hash(config)
    results: list[AnalysisResult] = []
    meta_of: dict[str, dict[str, Any]] = {}
    files_of: dict[str, Path] = {}
    for name in sorted(names):
        pdir = _part_dir(out, name)
        try:
            part = json.loads((pdir / "part.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("%s: no finished part in %s; left out of the tables", name, pdir)
            continue
        _check_part_key(name, pdir, part.get("key") or {}, keys, want_hash)
        cells_all = pd.read_parquet(pdir / "cells.parquet")
        spots_all = pd.read_parquet(pdir / "spots.parquet")
        cell_groups = dict(tuple(cells_all.groupby("image", sort=False))) if len(cells_all) else {}
        spot_groups = dict(tuple(spots_all.groupby("image", sort=False))) if len(spots_all) else {}
        rel = _relative(Path(part["path"]))
        for u in part["units"]:
            img = u["image"]
            cells = cell_groups.get(img, cells_all.iloc[:0]).reset_index(drop=True)
            spots = spot_groups.get(img, spots_all.iloc[:0]).reset_index(drop=True)
            row = _sheet_row(sample_sheet, (img, name, rel, Path(part["path"]).name))
            condition = row.pop("condition", None)
            if condition is None or (isinstance(condition, float) and math.isnan(condition)):
                condition = condition_for(img, config)
            if condition is not None:
                cells.insert(1, "condition", str(condition))
            meta = dict(row)
            meta.update(source_image=name, series=int(u["series"]), t=int(u["t"]), z=u["z"])
            meta_of[img] = meta
            files_of[img] = pdir
            results.append(
                AnalysisResult(
                    image=img,
                    cells_labels=np.zeros((0, 0), np.int32),  # labels stay on disk in the part
                    nuclei_labels=None,
                    spots=spots,
                    cells=cells,
                    summary={},
                    provenance=u["provenance"],
                    condition=None if condition is None else str(condition),
                    extras={"readouts": u.get("readouts", {}), "nuclei": u.get("nuclei", False)},
                )
            )
    results.sort(key=lambda r: r.image)
    return results, meta_of, files_of


def _tables(
    results: Sequence[Any],
    meta_of: dict[str, dict[str, Any]],
    sample_sheet: pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The run's cells, spots and images tables, with the sample-sheet columns and (where the
    run has stacks) ``source_image``, ``series``, ``t`` and ``z`` columns."""
    from ..pipeline import images_table

    # which stack columns this run needs (all images get them, with 0 where not split)
    metas = [meta_of[r.image] for r in results]
    sheet_cols = [
        c
        for c in (sample_sheet.columns if sample_sheet is not None else [])
        if c not in ("pattern", "condition")
    ]
    stack_cols = [
        c
        for c, pred in (
            ("series", lambda m: m["series"] > 0),
            ("t", lambda m: m["t"] > 0),
            ("z", lambda m: m["z"] is not None),
        )
        if any(pred(m) for m in metas)
    ]
    add_cols = sheet_cols + (["source_image", *stack_cols] if stack_cols else [])

    def with_meta(df: pd.DataFrame, meta: dict[str, Any], after: str) -> pd.DataFrame:
        pos = list(df.columns).index(after) + 1 if after in df.columns else 0
        for i, col in enumerate(add_cols):
            value = meta.get(col, np.nan)  # no sample-sheet row: missing (NaN)
            if col == "z":
                value = -1 if value is None else int(value)
            if col in df.columns and col == "z":  # 3-D spots: keep their own z coordinate
                continue
            df.insert(pos + i, col, pd.Series([value] * len(df), dtype=_dtype(value)))
        return df

    cells = pd.concat(
        [
            with_meta(r.cells.copy(), meta_of[r.image], "condition" if r.condition else "image")
            for r in results
        ],
        ignore_index=True,
    )
    spots = pd.concat(
        [with_meta(r.spots.copy(), meta_of[r.image], "image") for r in results],
        ignore_index=True,
    )
    images = images_table(results)
    image_rows = [
        with_meta(
            images.iloc[[i]].reset_index(drop=True),
            meta_of[r.image],
            "condition" if "condition" in images.columns else "image",
        )
        for i, r in enumerate(results)
    ]
    return cells, spots, pd.concat(image_rows, ignore_index=True)


def _place_images(gen: Path, out: Path, results: Sequence[Any], files_of: dict[str, Path]) -> None:
    """Label images and the image-level readouts' QC pictures of this run's images (only
    these: labels of removed inputs do not linger) into the generation ``gen``."""
    prev = _current_generation(out)
    for r in results:
        pdir = files_of[r.image]
        for sub, name in (
            ("labels", f"{r.image}_cells.tif"),
            ("labels", f"{r.image}_nuclei.tif"),
            ("qc", f"{r.image}_overlay.png"),
        ):
            src = pdir / sub / name
            if src.is_file():
                _place(src, gen / sub / name, prev / sub / name if prev else None)
        for kind in ("tubes", "collagen"):  # the image-level readouts' QC pictures
            src = pdir / "qc" / f"{r.image}_{kind}.png"
            if src.is_file():
                name = src.name
                _place(src, gen / "qc" / name, prev / "qc" / name if prev else None)


def _check_part_key(
    name: str, pdir: Path, key: dict, keys: Mapping[str, dict] | None, want_hash: str
) -> None:
    """Refuse a part made with another config or another version of its input."""
    if keys is not None and name in keys:
        want = _jsonable(keys[name])
        if key == want:
            return
        what = [k for k in sorted(set(want) | set(key)) if want.get(k) != key.get(k)]
    elif key.get("analysis_sha256") == want_hash:
        return
    else:
        what = ["analysis_sha256"]
    raise MixedPartsError(
        f"{pdir}: this part of {name!r} was made with another "
        + (
            "config"
            if "analysis_sha256" in what
            else "version of the input file"
            if "input" in what
            else "labels, settings or package version"
        )
        + f" than this run ({', '.join(what)} differ); refusing to mix results. Was another "
        "run writing to the same --out? Rerun to redo that image"
    )


def refresh_report(out: str | Path) -> Path | None:
    """Rewrite ``out/report.html`` from the tables just written; on failure remove the old
    one (a stale report must not outlive a rerun) and log a warning."""
    from ..report import write_report

    out = Path(out)
    try:
        return write_report(out)
    except Exception as exc:  # the tables are written: a report problem must not fail the run
        (out / "report.html").unlink(missing_ok=True)
        log.warning("report.html not written (%s); run `exouptake report %s` to retry", exc, out)
        return None


def _shown_labels(lazy_labels, k: int) -> np.ndarray:
    """Every k-th pixel of a lazily read label image, read in this thread (dask's synchronous
    scheduler: no thread pool, which a process forked later, e.g. by a caller, would inherit
    in a state it cannot use)."""
    part = lazy_labels[..., ::k, ::k]
    return np.asarray(part.compute(scheduler="synchronous") if hasattr(part, "compute") else part)


def _write_merged_qc(out: Path, results: Sequence[Any], files_of: dict[str, Path]) -> None:
    """``qc/<image>_overlay.png`` for every merged image: one contrast for the whole run,
    EV-positive cells marked (run-level calls), from each part's saved EV plane and labels."""
    from .._qc import qc_step, run_contrast
    from ..io import read_labels
    from ..pipeline import write_qc

    planes = {
        r.image: files_of[r.image] / "qc" / f"{r.image}_exo.npy"
        for r in results
        if (files_of[r.image] / "qc" / f"{r.image}_exo.npy").is_file()
    }
    if not planes:
        return
    contrast = run_contrast(np.load(p, mmap_mode="r") for p in planes.values())
    for r in results:
        if r.image not in planes:
            continue
        pdir = files_of[r.image]
        cells_lab = read_labels(pdir / "labels" / f"{r.image}_cells.tif", lazy=True)
        nuc_path = pdir / "labels" / f"{r.image}_nuclei.tif"
        nuclei = read_labels(nuc_path, lazy=True) if nuc_path.is_file() else None
        k = qc_step(cells_lab.shape)
        shown = r
        cells_lab = _shown_labels(cells_lab, k)
        nuclei = None if nuclei is None else _shown_labels(nuclei, k)
        if k > 1:  # the saved plane was subsampled: the labels are too; scale the puncta
            spots = r.spots.copy()
            spots[["y", "x"]] = spots[["y", "x"]] / k
            ps = r.provenance.get("pixel_size_um")
            prov = {**r.provenance, "pixel_size_um": ps * k if ps else ps}
            shown = replace(r, spots=spots, provenance=prov)
        try:
            write_qc(
                out / "qc" / f"{r.image}_overlay.png",
                shown,
                contrast,
                exo=np.load(planes[r.image]),
                cells_labels=cells_lab,
                nuclei_labels=nuclei,
                ring_px=3 if k == 1 else 0,  # a subsampled whole well: one pixel per punctum
            )
        except Exception as exc:  # a QC picture must not fail the run
            log.warning("%s: QC overlay not written: %s", r.image, exc)


def _dtype(value: Any) -> str | None:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int64"
    if isinstance(value, (float, np.floating)):
        return "float64"
    return "object"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
