"""The :class:`Bundle` object: open (folder or zip), read, verify, analyse, validate."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..results import squeeze_plane
from .safety import _read_checksums, _sha256, _walk, safe_extract
from .schema import (
    ANALYSIS_LABELS_DIR,
    CHECKSUM_FILE,
    METADATA_FILE,
    DatasetError,
    _image_name,
    _load_yaml,
    _schema_problems,
)

log = logging.getLogger("napari_exouptake.datasets")


def _cache_dir() -> Path:
    env = os.environ.get("EXOUPTAKE_CACHE_DIR")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("napari-exouptake"))


@dataclass
class Bundle:
    """An opened (and verified) dataset bundle.

    Attributes
    ----------
    root : Path
        Folder holding ``dataset.yaml`` (for a zip: where it was extracted).
    meta : dict
        Parsed ``dataset.yaml``.
    source : Path
        What was opened (the folder or the zip).
    """

    root: Path
    meta: dict[str, Any]
    source: Path
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    # -- descriptive ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))

    @property
    def image_names(self) -> list[str]:
        """Image names (file stems without ``.ome.tif``), the ``image`` column of tables."""
        return [_image_name(rel) for rel in self.meta["images"]]

    @property
    def image_paths(self) -> dict[str, Path]:
        """Image name -> OME-TIFF path."""
        return {_image_name(rel): self.root / rel for rel in self.meta["images"]}

    @property
    def channel_names(self) -> list[str]:
        return [str(c["name"]) for c in sorted(self.meta["channels"], key=lambda c: c["index"])]

    @property
    def channel_roles(self) -> dict[str, str | None]:
        """Channel name -> role (``nucleus``, ``cell``, ``exosome``, a marker name) or None."""
        return {str(c["name"]): c.get("role") for c in self.meta["channels"]}

    @property
    def pixel_size_um(self) -> float | None:
        px = self.meta.get("pixel_size_um")
        return float(px) if px is not None else None

    @property
    def config(self):
        """The bundle's :class:`~napari_exouptake.config.AssayConfig`."""
        from ..config import AssayConfig

        return AssayConfig.from_dict(self.meta["assay_config"])

    @property
    def analysis_labels_mode(self) -> str:
        """``segmentation``, ``ground_truth`` or ``analysis_labels`` (how the reference ran)."""
        return str(self.meta["analysis"]["labels"])

    @property
    def tolerances(self) -> dict[str, Any]:
        """Per-metric tolerances (defaults for the analysis mode when the bundle gives none)."""
        from ..validation import DEFAULT_TOLERANCES, DEFAULT_TOLERANCES_SEGMENTATION

        tol = self.meta.get("tolerances")
        if tol:
            return dict(tol)
        if self.analysis_labels_mode == "segmentation":
            return dict(DEFAULT_TOLERANCES_SEGMENTATION)
        return dict(DEFAULT_TOLERANCES)

    @property
    def reference_dir(self) -> Path | None:
        ref = self.meta.get("reference")
        return self.root / ref["folder"] if isinstance(ref, dict) else None

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.meta.get("ground_truth"))

    # -- data ----------------------------------------------------------------------------------
    def read_image(self, name: str):
        """The image ``name`` as :class:`~napari_exouptake.io.ImageData` ``(C, Z, Y, X)``."""
        from ..io import read_image

        paths = self.image_paths
        if name not in paths:
            raise KeyError(f"bundle {self.name!r} has no image {name!r}; it has {', '.join(paths)}")
        return read_image(paths[name], axes=self.config.axes)

    def _gt_path(self, key: str, name: str) -> Path | None:
        gt = self.meta.get("ground_truth") or {}
        pattern = gt.get(key)
        if not pattern:
            return None
        p = self.root / str(pattern).replace("{image}", name)
        return p if p.is_file() else None

    def truth_cell_labels(self, name: str) -> np.ndarray | None:
        """Ground-truth cell labels ``(Y, X)`` or ``(Z, Y, X)`` of ``name`` (None if absent)."""
        from ..io import read_labels

        p = self._gt_path("cell_labels", name)
        return read_labels(p) if p is not None else None

    def truth_nucleus_labels(self, name: str) -> np.ndarray | None:
        """Ground-truth nucleus labels of ``name`` (None if absent)."""
        from ..io import read_labels

        p = self._gt_path("nucleus_labels", name)
        return read_labels(p) if p is not None else None

    def truth_spots(self, name: str | None = None) -> pd.DataFrame | None:
        """True puncta (``image``, ``y``, ``x`` [``z``] ...) of one image or all; None if absent."""
        gt = self.meta.get("ground_truth") or {}
        if not gt.get("spots"):
            return None
        df = pd.read_csv(self.root / gt["spots"])
        return df if name is None else df[df["image"].astype(str) == name].reset_index(drop=True)

    def truth_cells(self) -> pd.DataFrame | None:
        """True per-cell table (``image``, ``cell_id``, ``n_spots``, ...) or None."""
        gt = self.meta.get("ground_truth") or {}
        return pd.read_csv(self.root / gt["cells"]) if gt.get("cells") else None

    def analysis_labels(self, name: str) -> tuple[Path | None, Path | None]:
        """(cell labels, nucleus labels) paths the analysis uses for ``name`` (None: segment)."""
        mode = self.analysis_labels_mode
        if mode == "segmentation":
            return None, None
        if mode == "ground_truth":
            cells = self._gt_path("cell_labels", name)
            if cells is None:
                raise DatasetError(f"bundle {self.name!r}: no ground-truth labels for {name}")
            return cells, self._gt_path("nucleus_labels", name)
        d = self.root / ANALYSIS_LABELS_DIR
        cells = d / f"{name}_cells.tif"
        if not cells.is_file():
            raise DatasetError(
                f"bundle {self.name!r}: {ANALYSIS_LABELS_DIR}/{name}_cells.tif is missing"
            )
        nuc = d / f"{name}_nuclei.tif"
        return cells, (nuc if nuc.is_file() else None)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Delete the temporary extraction folder of a zip bundle (no-op for folders)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _find_root(folder: Path) -> Path:
    if (folder / METADATA_FILE).is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    others = [p for p in folder.iterdir() if not p.is_dir()]
    if len(subs) == 1 and not others and (subs[0] / METADATA_FILE).is_file():
        return subs[0]
    raise DatasetError(f"{folder}: no {METADATA_FILE}; is this a dataset bundle?")


def open_bundle(
    path: str | Path, *, extract_to: str | Path | None = None, verify: bool = True
) -> Bundle:
    """Open a bundle folder or ``.zip`` (zips are extracted safely, see :func:`safe_extract`).

    Parameters
    ----------
    path : str or Path
        Bundle folder or zip.
    extract_to : str or Path, optional
        Where to extract a zip (must not exist or be empty). Default: a temporary folder that
        :meth:`Bundle.close` (or leaving a ``with`` block) deletes.
    verify : bool, default True
        Check every checksum and the schema first.

    Raises
    ------
    DatasetError
        When the bundle is missing, unsafe, or fails verification (the message lists problems).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such bundle (folder or .zip)")
    tmp = None
    if path.is_file():
        if extract_to is None:
            tmp = tempfile.TemporaryDirectory(prefix="exouptake-bundle-")
            target = Path(tmp.name) / "bundle"
        else:
            target = Path(extract_to)
        try:
            safe_extract(path, target, listed_only=True)
            root = _find_root(target)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
            raise
    else:
        root = _find_root(path)
    try:
        if verify:
            problems = _verify_root(root)
            if problems:
                raise DatasetError(f"{path}: bundle failed verification: " + "; ".join(problems))
        meta = _load_yaml(root / METADATA_FILE)
        if not verify:
            problems = _schema_problems(meta)
            if problems:
                raise DatasetError(f"{path}: " + "; ".join(problems))
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root=root, meta=meta, source=path, _tmp=tmp)


def read_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle for viewing (e.g. by the napari reader).

    A zip is extracted once into the cache folder (``$EXOUPTAKE_CACHE_DIR`` or pooch's OS cache
    ``napari-exouptake/bundles/<zip sha256[:16]>``) and reused while it verifies, so the
    returned :class:`Bundle` stays valid after the call.

    Returns
    -------
    Bundle
        ``image_names``, ``read_image(name)``, ``channel_names``, ``channel_roles``,
        ``pixel_size_um``, ``truth_cell_labels(name)``, ``truth_nucleus_labels(name)``,
        ``truth_spots(name)``, ``truth_cells()``, ``config``.
    """
    path = Path(path)
    if path.is_file():
        target = _cache_dir() / "bundles" / _sha256(path)[:16]
        if target.is_dir() and any(target.iterdir()):
            try:
                return open_bundle(target)
            except DatasetError:
                log.warning("cached extraction %s failed verification; extracting again", target)
                shutil.rmtree(target)
        return open_bundle(path, extract_to=target)
    return open_bundle(path)


def _verify_root(root: Path) -> list[str]:
    problems: list[str] = []
    files, bad = _walk(root)
    for rel in bad:
        problems.append(f"{rel}: links and special files are not allowed in a bundle")
    sums = _read_checksums(root, problems)
    present = set(files) - {CHECKSUM_FILE}
    for rel, digest in sums.items():
        if rel not in present:
            problems.append(f"{rel}: listed in {CHECKSUM_FILE} but missing")
            continue
        actual = _sha256(root / rel)
        if actual != digest:
            problems.append(
                f"{rel}: SHA-256 mismatch (expected {digest[:12]}..., "
                f"got {actual[:12]}...): the file was changed or corrupted"
            )
    for rel in sorted(present - set(sums)):
        problems.append(f"{rel}: not listed in {CHECKSUM_FILE}")
    if METADATA_FILE not in present:
        problems.append(f"{METADATA_FILE}: missing")
        return problems
    try:
        meta = _load_yaml(root / METADATA_FILE)
    except DatasetError as exc:
        problems.append(str(exc))
        return problems
    schema = _schema_problems(meta)
    problems += schema
    if schema:
        return problems
    # every referenced file exists and is checksummed
    refs = list(meta["images"])
    for key in ("config_file", "conditions"):
        if meta.get(key):
            refs.append(meta[key])
    gt = meta.get("ground_truth") or {}
    for key in ("spots", "cells"):
        if gt.get(key):
            refs.append(gt[key])
    names = [_image_name(r) for r in meta["images"]]
    if len(set(names)) != len(names):
        problems.append(f"{METADATA_FILE}: image names are not unique")
    for key in ("cell_labels",) if meta["analysis"]["labels"] == "ground_truth" else ():
        refs += [gt[key].replace("{image}", n) for n in names]
    if meta["analysis"]["labels"] == ANALYSIS_LABELS_DIR:
        refs += [f"{ANALYSIS_LABELS_DIR}/{n}_cells.tif" for n in names]
    ref = meta.get("reference")
    if isinstance(ref, dict):
        refs += [f"{ref['folder']}/cells.csv", f"{ref['folder']}/images.csv"]
    for rel in refs:
        if rel not in sums:
            problems.append(
                f"{rel}: named in {METADATA_FILE} but not in the bundle's {CHECKSUM_FILE}"
            )
    cfg_file = meta.get("config_file")
    if cfg_file and cfg_file in sums and cfg_file in present:
        from ..config import AssayConfig, ConfigError, config_hash, load_config

        try:
            same = config_hash(load_config(root / cfg_file)) == config_hash(
                AssayConfig.from_dict(meta["assay_config"])
            )
        except ConfigError as exc:
            problems.append(f"{cfg_file}: {exc}")
        else:
            if not same:
                problems.append(f"{cfg_file}: differs from assay_config in {METADATA_FILE}")
    return problems


def verify_bundle(path: str | Path) -> list[str]:
    """Check a bundle: every SHA-256, no unlisted or missing file, no link, the schema.

    Parameters
    ----------
    path : str or Path
        Bundle folder or zip (a zip is extracted safely into a temporary folder first).

    Returns
    -------
    list of str
        Problems, each naming its file; empty when the bundle is intact.

    Raises
    ------
    DatasetError
        When the path does not exist or a zip is unsafe or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such bundle (folder or .zip)")
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="exouptake-verify-") as tmp:
            target = Path(tmp) / "bundle"
            safe_extract(path, target, listed_only=True)
            return _verify_root(_find_root(target))
    return _verify_root(_find_root(path))


Progress = Callable[[str], None]


def analyze_bundle(bundle: Bundle, *, progress: Progress | None = None) -> list:
    """Run the bundle's analysis (its config, its labels mode) on every image.

    Returns
    -------
    list of AnalysisResult
        After :func:`napari_exouptake.pipeline.finalize` over the whole bundle.
    """
    from ..pipeline import finalize, measure_image

    config = bundle.config
    results = []
    for i, (name, path) in enumerate(bundle.image_paths.items(), 1):  # one image per iteration
        cells, nuclei = bundle.analysis_labels(name)
        try:
            r = measure_image(path, config, labels=cells, nuclei=nuclei, name=name)
        except Exception as exc:
            if type(exc).__name__ == "ModelNotAvailableError":
                raise DatasetError(
                    f"{name}: segmentation model not available ({exc}); give labels instead "
                    "(pack with labels='ground_truth' or a labels folder)"
                ) from None
            raise
        results.append(r)
        if progress is not None:
            progress(
                f"[{i}/{len(bundle.image_paths)}] {name}: {len(r.cells)} cells, "
                f"{len(r.spots)} puncta"
            )
    return finalize(results, config)


@dataclass
class BundleValidation:
    """What :func:`validate_bundle` found.

    Attributes
    ----------
    comparisons : list of MetricComparison
        Agreement with the reference results, per metric (empty without reference).
    accuracy : dict
        :func:`napari_exouptake.validation.accuracy_against_truth` (empty without truth).
    has_reference : bool
    """

    comparisons: list
    accuracy: dict
    has_reference: bool

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    @property
    def failed_metrics(self) -> list[str]:
        return [c.metric for c in self.comparisons if not c.ok]

    def format(self) -> str:
        from ..validation import format_accuracy, format_comparisons

        parts = []
        if self.accuracy:
            parts.append(format_accuracy(self.accuracy))
        if self.has_reference:
            parts.append("agreement with the reference results:")
            parts.append(format_comparisons(self.comparisons))
        else:
            parts.append("the bundle has no reference results to compare with")
        return "\n".join(parts)


def validate_bundle(
    path: str | Path | Bundle, *, progress: Progress | None = None
) -> BundleValidation:
    """Re-run the bundle's analysis and compare with its reference results and ground truth.

    Parameters
    ----------
    path : str, Path or Bundle
        Bundle folder or zip (verified first), or an opened bundle.
    progress : callable(str), optional
        Receives one line per analysed image.

    Returns
    -------
    BundleValidation
    """
    from ..validation import RunTables, accuracy_against_truth, compare_results, read_results

    bundle = path if isinstance(path, Bundle) else open_bundle(path)
    try:
        results = analyze_bundle(bundle, progress=progress)
        given = bundle.analysis_labels_mode != "segmentation"
        labels = None if given else {r.image: squeeze_plane(r.cells_labels) for r in results}
        current = RunTables(
            cells=pd.concat([r.cells for r in results], ignore_index=True),
            images=pd.DataFrame([r.summary for r in results]),
            spots=pd.concat([r.spots for r in results], ignore_index=True),
            labels=labels,
        )
        comparisons = []
        ref_dir = bundle.reference_dir
        if ref_dir is not None:
            reference = read_results(ref_dir, with_labels=not given)
            comparisons = compare_results(current, reference, bundle.tolerances)
        accuracy: dict = {}
        if bundle.has_ground_truth:
            accuracy = accuracy_against_truth(
                current.cells,
                current.spots,
                truth_spots=bundle.truth_spots(),
                truth_cells=bundle.truth_cells(),
                pred_labels=labels,
                truth_labels=bundle.truth_cell_labels,
                labels_given=bundle.analysis_labels_mode == "ground_truth",
            )
        return BundleValidation(comparisons, accuracy, ref_dir is not None)
    finally:
        if not isinstance(path, Bundle):
            bundle.close()
