"""Model names, files and the Cellpose version: name -> file on disk, failing fast offline.

Cellpose is looked up with :mod:`importlib` here and never imported, so this module is
light; the networks are loaded by :mod:`.engine`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: bundled demo models: name -> file name inside ``napari_exouptake/models``
DEMO_MODELS: dict[str, str] = {
    "demo-nuclei": "demo-nuclei.pth",
    "demo-cells": "demo-cells.pth",
}

_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


class ModelNotAvailableError(ValueError):
    """A named model is neither a file, a bundled model, nor in Cellpose's model folder."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cellpose_version() -> str:
    """Installed Cellpose version string ("" when Cellpose is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError:
        return ""


class CellposeMissingError(ModelNotAvailableError):
    """Segmentation was asked for but Cellpose (and torch) is not installed."""


def require_cellpose() -> None:
    """Raise :class:`CellposeMissingError` with the install command when Cellpose or torch is
    missing (the headless core installs without them)."""
    from importlib.util import find_spec

    missing = [m for m in ("torch", "cellpose") if find_spec(m) is None]
    if missing:
        raise CellposeMissingError(
            f"segmentation needs {' and '.join(missing)}, not installed here: "
            "pip install 'napari-exouptake[cellpose]' (or give label images with --labels)"
        )


def cellpose_major_version() -> int:
    """Major version of the installed Cellpose (3 or 4; 0 when not installed)."""
    v = cellpose_version()
    try:
        return int(v.split(".")[0]) if v else 0
    except ValueError:
        return 0


def _cellpose_model_dir() -> Path:
    """Cellpose's model folder: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


# built-in model names and their file names, per Cellpose major version (the installed
# package's own list is preferred; these are the fallback when it cannot be imported)
_BUILTIN_V3 = (
    "cyto3",
    "nuclei",
    "cyto2_cp3",
    "tissuenet_cp3",
    "livecell_cp3",
    "yeast_PhC_cp3",
    "yeast_BF_cp3",
    "bact_phase_cp3",
    "bact_fluor_cp3",
    "deepbacs_cp3",
    "cyto2",
    "cyto",
    "CPx",
    "transformer_cp3",
    "neurips_cellpose_default",
    "neurips_cellpose_transformer",
    "neurips_grayscale_cyto2",
)
_BUILTIN_V4 = ("cpsam", "cpsam_v2")
_URL_V3 = "https://www.cellpose.org/models/"
_URL_V4 = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"


def _builtin_file(name: str, major: int) -> str:
    if major >= 4:
        return name
    return f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name


@dataclass(frozen=True)
class ResolvedModel:
    """A model resolved to a file.

    Attributes
    ----------
    model_id : str
        The name as requested (``demo-nuclei``, ``cyto3``, or the path).
    path : Path
        Weights file on disk.
    kind : {"demo", "builtin", "file"}
    major : int
        Cellpose major version the weights are for (3 or 4).
    """

    model_id: str
    path: Path
    kind: str
    major: int

    @property
    def sha256(self) -> str:
        return _sha256_cached(str(self.path))


_SHA_CACHE: dict[tuple, str] = {}


def _sha256_cached(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(Path(path))
    return _SHA_CACHE[key]


def resolve_model(name: str | os.PathLike, major: int | None = None) -> ResolvedModel:
    """Resolve a model name or path to a weights file, without any network access.

    Parameters
    ----------
    name : str or path
        ``demo-nuclei`` / ``demo-cells`` (bundled), a built-in Cellpose model name of the
        installed version (3.x: ``cyto3``, ``nuclei``, ``cyto2``, ...; 4.x: ``cpsam``), a
        file path, or the name of a file in Cellpose's model folder
        (``$CELLPOSE_LOCAL_MODELS_PATH``, default ``~/.cellpose/models``).
    major : int, optional
        Cellpose major version (default: the installed one).

    Returns
    -------
    ResolvedModel

    Raises
    ------
    ModelNotAvailableError
        When the model is not on disk. The message names the file, the folder to put it
        in, and the URL to fetch it from on a connected machine. Never downloads.
    """
    major = cellpose_major_version() if major is None else major
    sname = os.fspath(name).strip()
    if not sname:
        raise ModelNotAvailableError("empty model name")
    if sname in DEMO_MODELS:
        p = _MODELS_DIR / DEMO_MODELS[sname]
        if not p.is_file():
            raise ModelNotAvailableError(
                f"bundled model {sname!r} is missing from the installation ({p}); reinstall "
                "napari-exouptake or train it with scripts/train_demo_models.sh"
            )
        if major >= 4:
            raise ModelNotAvailableError(
                f"bundled model {sname!r} is a Cellpose 3 network, but Cellpose {major} is "
                "installed; use 'cpsam' (or install cellpose<4: pip install "
                "'napari-exouptake[cellpose3]')"
            )
        return ResolvedModel(sname, p, "demo", 3)
    p = Path(sname).expanduser()
    if p.is_file():
        return ResolvedModel(sname, p.resolve(), "file", major)
    looks_like_path = os.sep in sname or "/" in sname or p.suffix in (".pth", ".pt", ".npy")
    if looks_like_path:
        raise ModelNotAvailableError(f"model file {sname!r} does not exist")
    model_dir = _cellpose_model_dir()
    builtin = _BUILTIN_V4 if major >= 4 else _BUILTIN_V3
    if sname in builtin:
        fname = _builtin_file(sname, major)
        f = model_dir / fname
        if f.is_file():
            return ResolvedModel(sname, f, "builtin", major)
        url = (_URL_V4 if major >= 4 else _URL_V3) + fname
        raise ModelNotAvailableError(
            f"Cellpose {major} model {sname!r} is not available offline: put the file "
            f"{fname!r} in {model_dir} (or point CELLPOSE_LOCAL_MODELS_PATH at a folder that "
            f"holds it). On a connected machine fetch it from {url}"
        )
    f = model_dir / sname
    if f.is_file():
        return ResolvedModel(sname, f, "file", major)
    other = _BUILTIN_V3 if major >= 4 else _BUILTIN_V4
    hint = ""
    if sname in other:
        hint = f" ({sname!r} is a Cellpose {3 if major >= 4 else 4} model; Cellpose {major} "
        hint += "is installed)"
    raise ModelNotAvailableError(
        f"unknown model {sname!r}{hint}: use demo-nuclei, demo-cells, a built-in Cellpose "
        f"{major} model ({', '.join(builtin[:4])}, ...), a weights file path, or a file name "
        f"in {model_dir}"
    )
