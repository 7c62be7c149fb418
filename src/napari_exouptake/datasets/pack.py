"""Making a bundle: ``pack_bundle`` (images -> OME-TIFF, config, labels, reference results)
and ``write_bundle_metadata`` (``dataset.yaml`` + checksums).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .bundle import Bundle, Progress, _verify_root, analyze_bundle
from .safety import _write_zip, write_checksums
from .schema import (
    _EXTRA_FILES,
    _LABEL_SUFFIXES,
    _NAME_RE,
    ANALYSIS_LABELS_DIR,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    IMAGE_SUFFIXES,
    METADATA_FILE,
    REFERENCE_DIR,
    DatasetError,
    _image_name,
    _schema_problems,
)


def _relativise(obj: Any, roots: Sequence[str]) -> Any:
    """Replace absolute paths under ``roots`` by bundle-relative ones (no local paths leak)."""
    if isinstance(obj, dict):
        return {k: _relativise(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relativise(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            if obj.startswith(r + os.sep) or obj.startswith(r + "/"):
                return obj[len(r) + 1 :].replace(os.sep, "/")
    return obj


def _write_reference(results: Sequence, root: Path, config, labels_given: bool) -> dict:
    from ..pipeline import write_outputs

    ref = root / REFERENCE_DIR
    if ref.exists():
        shutil.rmtree(ref)
    write_outputs(results, ref, config, overlays=False)
    for stem in ("cells", "spots", "images"):  # the reference keeps the CSV tables only
        with contextlib.suppress(FileNotFoundError):
            (ref / f"{stem}.parquet").unlink()
    if labels_given:  # the labels are the given ones: no need to store them twice
        shutil.rmtree(ref / "labels", ignore_errors=True)
    run = json.loads((ref / "run.json").read_text())
    roots = sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    run = _relativise(run, roots)
    for key in ("platform",):
        run.pop(key, None)
    (ref / "run.json").write_text(json.dumps(run, indent=2, sort_keys=False))
    devices = sorted(
        {str(r.provenance.get("segmentation", {}).get("device", "none")) for r in results}
    )
    return {
        "folder": REFERENCE_DIR,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": run.get("versions", {}),
        "python": run.get("python"),
        "config_sha256": run.get("config_sha256"),
        "device": ", ".join(devices) if not labels_given else "none (labels given)",
        "models": sorted(
            {
                str(r.provenance.get("segmentation", {}).get("model"))
                for r in results
                if not labels_given
            }
        ),
    }


def _channels_meta(names: Sequence[str], config) -> list[dict[str, Any]]:
    try:
        res = config.channels.resolve(names)
    except ValueError:
        res = None
    roles: dict[int, str] = {}
    if res is not None:
        for role in ("nucleus", "cell", "exosome"):
            idx = getattr(res, role)
            if idx is not None:
                roles[idx] = role
        for m, idx in res.markers.items():
            roles.setdefault(idx, m)
    return [{"index": i, "name": str(n), "role": roles.get(i)} for i, n in enumerate(names)]


def write_bundle_metadata(
    root: str | Path,
    config,
    *,
    name: str,
    description: str,
    licence: str,
    authors: Sequence[str] = (),
    title: str | None = None,
    labels: str = "segmentation",
    with_results: bool = False,
    tolerances: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Turn a folder in the bundle layout into a bundle: reference, ``dataset.yaml``, checksums.

    The folder must already hold ``images/*.ome.tif`` and, as present, ground truth
    (``labels/<image>_cells.tif``, ``_nuclei.tif``, ``truth_spots.csv``, ``truth_cells.csv``)
    and ``analysis_labels/``. Existing images and ground truth are never modified.

    Parameters
    ----------
    root : str or Path
        The bundle folder.
    config : AssayConfig or path
        Assay config (written into ``dataset.yaml`` and as ``config.yaml`` unless one exists).
    name, description, licence, authors, title
        Descriptive metadata (``name``: letters, digits, ``.``, ``_``, ``-``).
    labels : {"segmentation", "ground_truth", "analysis_labels"}
        What the analysis (reference and ``validate``) segments with.
    with_results : bool
        Run the analysis now and store ``reference/``.
    tolerances : mapping, optional
        Per-metric tolerances (default: by ``labels``, see :mod:`napari_exouptake.validation`).
    extra : mapping, optional
        More keys for ``dataset.yaml`` (e.g. ``source``, ``citation``).

    Returns
    -------
    Path
        ``root / "dataset.yaml"``.
    """
    from ..config import AssayConfig, config_hash, load_config, save_config
    from ..io import read_image
    from ..validation import DEFAULT_TOLERANCES, DEFAULT_TOLERANCES_SEGMENTATION

    root = Path(root)
    if not isinstance(config, AssayConfig):
        config = load_config(config)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DatasetError(f"bundle name {name!r} must use letters, digits, '.', '_' or '-'")
    if labels not in ("segmentation", "ground_truth", ANALYSIS_LABELS_DIR):
        raise DatasetError(
            f"labels must be segmentation, ground_truth or {ANALYSIS_LABELS_DIR}, got {labels!r}"
        )
    images = sorted(
        p.relative_to(root).as_posix()
        for p in (root / "images").glob("*")
        if p.is_file() and p.name.lower().endswith((".ome.tif", ".ome.tiff"))
    )
    if not images:
        raise DatasetError(f"{root}/images holds no .ome.tif images")
    first = read_image(root / images[0], axes=config.axes)
    names = [_image_name(r) for r in images]
    gt: dict[str, str] = {}
    if all((root / "labels" / f"{n}_cells.tif").is_file() for n in names):
        gt["cell_labels"] = "labels/{image}_cells.tif"
        if all((root / "labels" / f"{n}_nuclei.tif").is_file() for n in names):
            gt["nucleus_labels"] = "labels/{image}_nuclei.tif"
    for key, fname in (("spots", "truth_spots.csv"), ("cells", "truth_cells.csv")):
        if (root / fname).is_file():
            gt[key] = fname
    if labels == "ground_truth" and "cell_labels" not in gt:
        missing = [n for n in names if not (root / "labels" / f"{n}_cells.tif").is_file()]
        raise DatasetError(
            f"labels='ground_truth' but labels/<image>_cells.tif is missing for "
            f"{', '.join(missing[:5])}"
        )
    cfg_file = root / "config.yaml"
    if cfg_file.is_file():
        if config_hash(load_config(cfg_file)) != config_hash(config):
            raise DatasetError(f"{cfg_file} exists and differs from the given config")
    else:
        save_config(config, cfg_file)
    meta: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "title": title or name,
        "description": description,
        "licence": licence,
        "authors": list(authors),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "channels": _channels_meta(first.channel_names, config),
        "pixel_size_um": config.pixel_size_um or first.pixel_size_um,
        "images": images,
        "ground_truth": gt or None,
        "conditions": "conditions.csv" if (root / "conditions.csv").is_file() else None,
        "config_file": "config.yaml",
        "assay_config": config.to_dict(),
        "analysis": {"labels": labels},
        "reference": None,
        "tolerances": dict(tolerances)
        if tolerances is not None
        else dict(
            DEFAULT_TOLERANCES_SEGMENTATION if labels == "segmentation" else DEFAULT_TOLERANCES
        ),
    }
    if extra:
        meta.update(extra)
    problems = _schema_problems(meta)
    if problems:
        raise DatasetError("; ".join(problems))
    if with_results:
        bundle = Bundle(root=root, meta=meta, source=root)
        results = analyze_bundle(bundle, progress=progress)
        meta["reference"] = _write_reference(results, root, config, labels != "segmentation")
        from napari_exouptake import __version__

        meta["reference"]["software"].setdefault("napari-exouptake", __version__)
    out = root / METADATA_FILE
    out.write_text(
        "# napari-exouptake dataset bundle: see docs/datasets.md\n"
        + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    write_checksums(root)
    return out


def _find_images(src: Path) -> list[Path]:
    base = src / "images" if (src / "images").is_dir() else src
    found = []
    for p in sorted(base.rglob("*")):
        if not p.is_file() or p.is_symlink() or p.name.startswith("."):
            continue
        low = p.name.lower()
        if not low.endswith(IMAGE_SUFFIXES):
            continue
        if any(_image_name(p.name).endswith(s) for s in _LABEL_SUFFIXES):
            continue
        if base == src and (src / "labels") in p.parents:
            continue
        found.append(p)
    return found


def pack_bundle(
    src: str | Path,
    config,
    out: str | Path,
    *,
    with_results: bool = False,
    labels: str | Path | None = None,
    name: str | None = None,
    description: str | None = None,
    licence: str = "CC-BY-4.0",
    authors: Sequence[str] = (),
    tolerances: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Make a bundle (folder, or zip when ``out`` ends in ``.zip``) from a folder of images.

    Parameters
    ----------
    src : str or Path
        A folder of images (TIFF/OME-TIFF/PNG/JPEG; non-OME files are converted to OME-TIFF),
        or a folder in the simulator layout (``images/``, ``labels/<image>_cells.tif``,
        ``truth_spots.csv``, ``truth_cells.csv``, ``conditions.csv``), whose ground truth is
        copied along.
    config : AssayConfig or path
        The assay config.
    out : str or Path
        New bundle folder (must not exist or be empty) or ``.zip`` file.
    with_results : bool
        Run the analysis and store ``reference/`` results.
    labels : None, "ground_truth", or path
        What the analysis segments with: None runs the configured segmentation (Cellpose);
        ``"ground_truth"`` quantifies with the copied ``labels/<image>_cells.tif``; a path (a
        label image for a single image, or a folder of ``<image>_cells.tif`` [+ ``_nuclei.tif``])
        is copied into ``analysis_labels/`` and used.
    name : str, optional
        Bundle name (default: ``out``'s stem).
    description, licence, authors, tolerances
        See :func:`write_bundle_metadata`.

    Returns
    -------
    Path
        The bundle (folder or zip).
    """
    from ..config import AssayConfig, load_config
    from ..io import read_image, write_ome_tiff

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder of images")
    if not isinstance(config, AssayConfig):
        config = load_config(config)
    as_zip = out.suffix.lower() == ".zip"
    if out.exists() and (as_zip or not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists; choose a new bundle path")
    name = name or (out.stem if as_zip else out.name)
    paths = _find_images(src)
    if not paths:
        raise DatasetError(f"{src}: no images found (.tif, .tiff, .ome.tif, .png, .jpg)")
    names = [_image_name(p.name) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{src}: image names repeat across folders: {', '.join(dupes[:5])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (stage / "images").mkdir()
        for p, n in zip(paths, names, strict=True):  # one file copy per image
            target = stage / "images" / f"{n}.ome.tif"
            if p.name.lower().endswith((".ome.tif", ".ome.tiff")):
                shutil.copyfile(p, target)
            else:
                img = read_image(p, axes=config.axes)
                if img.axes != "CZYX":
                    raise DatasetError(
                        f"{p}: images with a time axis are not supported in "
                        "bundles; split the frames first"
                    )
                data = img.data[:, 0] if img.data.shape[1] == 1 else img.data
                write_ome_tiff(target, data, img.channel_names, img.pixel_size_um, img.z_step_um)
        lab_src = src / "labels"
        if lab_src.is_dir():
            for n in names:
                for kind in ("cells", "nuclei"):
                    f = lab_src / f"{n}_{kind}.tif"
                    if f.is_file() and not f.is_symlink():
                        (stage / "labels").mkdir(exist_ok=True)
                        shutil.copyfile(f, stage / "labels" / f.name)
        for extra in ("truth_spots.csv", "truth_cells.csv", *_EXTRA_FILES):
            f = src / extra
            if f.is_file() and not f.is_symlink():
                shutil.copyfile(f, stage / extra)
        mode = "segmentation"
        if labels is not None and str(labels) == "ground_truth":
            mode = "ground_truth"
        elif labels is not None:
            mode = ANALYSIS_LABELS_DIR
            _copy_given_labels(Path(labels), names, stage / ANALYSIS_LABELS_DIR)
        if description is None:
            description = f"{len(names)} images packed from {src.name} by napari-exouptake"
        write_bundle_metadata(
            stage,
            config,
            name=name,
            description=description,
            licence=licence,
            authors=authors,
            labels=mode,
            with_results=with_results,
            tolerances=tolerances,
            progress=progress,
        )
        problems = _verify_root(stage)
        if problems:  # pragma: no cover - a bug if it happens
            raise DatasetError("the new bundle failed verification: " + "; ".join(problems))
        if as_zip:
            _write_zip(stage, out)
            shutil.rmtree(stage)
        else:
            if out.exists():
                out.rmdir()
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _copy_given_labels(labels: Path, names: Sequence[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if labels.is_file():
        if len(names) != 1:
            raise DatasetError(
                f"--labels {labels} is one label image but there are "
                f"{len(names)} images; give a folder of <image>_cells.tif"
            )
        shutil.copyfile(labels, dest / f"{names[0]}_cells.tif")
        return
    if not labels.is_dir():
        raise DatasetError(f"--labels {labels}: no such file or folder")
    missing = [n for n in names if not (labels / f"{n}_cells.tif").is_file()]
    if missing:
        raise DatasetError(f"--labels {labels}: no <image>_cells.tif for {', '.join(missing[:5])}")
    for n in names:
        shutil.copyfile(labels / f"{n}_cells.tif", dest / f"{n}_cells.tif")
        nuc = labels / f"{n}_nuclei.tif"
        if nuc.is_file():
            shutil.copyfile(nuc, dest / nuc.name)
