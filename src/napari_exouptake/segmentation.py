"""Cellpose segmentation engine (Cellpose 3.1 and 4 behind one interface).

This is the only module of the package that imports ``torch`` or ``cellpose``, and it
does so inside functions, so ``import napari_exouptake`` stays light.

Public API
----------
segment(image, config) -> Segmentation
    cell labels (+ nucleus labels and the nucleus -> cell map) for one image.
train_model(images_dir, labels_dir, out_path, ...) -> Path
    train or fine-tune a Cellpose model on image + label folders; weights saved fp16.
resolve_model(name) -> ResolvedModel
    built-in name / file path / bundled demo model -> file on disk, failing fast offline.
resolve_device(spec) -> str
    "auto" | "cpu" | "cuda" | "cuda:N" | "mps" -> the device string actually used.
estimate_diameter(image, config) -> float
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .config import AssayConfig
    from .io import ImageData

__all__ = [
    "DEMO_MODELS",
    "CellposeMissingError",
    "ModelNotAvailableError",
    "ResolvedModel",
    "Segmentation",
    "SegmentationCancelled",
    "cellpose_major_version",
    "cellpose_version",
    "clear_model_cache",
    "eval_kwargs",
    "estimate_diameter",
    "holdout_split",
    "main_segment",
    "require_cellpose",
    "main_train",
    "map_nuclei_to_cells",
    "resolve_device",
    "resolve_model",
    "segment",
    "train_model",
]

logger = logging.getLogger(__name__)

#: bundled demo models: name -> file name inside ``napari_exouptake/models``
DEMO_MODELS: dict[str, str] = {
    "demo-nuclei": "demo-nuclei.pth",
    "demo-cells": "demo-cells.pth",
}

_MODELS_DIR = Path(__file__).resolve().parent / "models"


class ModelNotAvailableError(ValueError):
    """A named model is neither a file, a bundled model, nor in Cellpose's model folder."""


class SegmentationCancelled(RuntimeError):
    """Raised when the ``cancel`` callback of :func:`segment` returns True."""


# --------------------------------------------------------------------------------------
# helpers shared by training and inference
# --------------------------------------------------------------------------------------


def holdout_split(name: str, fraction: float = 0.2) -> bool:
    """Deterministic hash-based train/validation split.

    Parameters
    ----------
    name : str
        Image identifier (file stem).
    fraction : float
        Fraction of names that go to the validation (held-out) set, in [0, 1].

    Returns
    -------
    bool
        True when ``name`` belongs to the held-out set: the first 8 hex digits of
        ``sha256(name)`` read as an integer, divided by 16**8, are below ``fraction``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1], got {fraction}")
    h = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16)
    return h / float(16**8) < fraction


def _normalize99(img: np.ndarray) -> np.ndarray:
    """Per-channel 1st..99th percentile normalisation of a (C, ...) array (float32).

    Constant channels (e.g. an absent helper channel) become zeros.
    """
    out = np.zeros(img.shape, dtype=np.float32)
    for c in range(img.shape[0]):
        ch = np.asarray(img[c], dtype=np.float32)
        lo, hi = np.percentile(ch, [1.0, 99.0])
        if hi - lo > 1e-6:
            out[c] = (ch - lo) / (hi - lo)
        elif np.ptp(ch) > 0:
            out[c] = (ch - ch.min()) / np.ptp(ch)
    return out


def _set_threads() -> None:
    import torch

    n = int(os.environ.get("EXOUPTAKE_TORCH_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def _save_fp16(state_dict: dict, path: Path) -> None:
    """Save a state dict with floating tensors cast to float16 (atomic write)."""
    import torch

    half = {
        k: (v.detach().to("cpu").half() if v.is_floating_point() else v.detach().to("cpu"))
        for k, v in state_dict.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(half, tmp)
    os.replace(tmp, path)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
_LABEL_SUFFIXES = ("_cells.tif", "_masks.tif", "_labels.tif", ".tif", ".tiff", ".png")


def _stem(path: Path) -> str:
    name = path.name
    for suf in _IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _find_pairs(images_dir: Path, labels_dir: Path, label_suffix: str | None) -> list[tuple]:
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    if not images_dir.is_dir():
        raise ValueError(f"images_dir {images_dir} is not a folder")
    if not labels_dir.is_dir():
        raise ValueError(f"labels_dir {labels_dir} is not a folder")
    pairs = []
    suffixes = (label_suffix,) if label_suffix else _LABEL_SUFFIXES
    for p in sorted(images_dir.iterdir()):
        if not p.name.lower().endswith(_IMAGE_SUFFIXES):
            continue
        stem = _stem(p)
        for suf in suffixes:
            lp = labels_dir / f"{stem}{suf}"
            if lp.is_file():
                pairs.append((stem, p, lp))
                break
    if not pairs:
        raise ValueError(
            f"no image/label pairs found: images in {images_dir}, labels named "
            f"<stem>{{{', '.join(suffixes)}}} in {labels_dir}"
        )
    return pairs


def _read_training_image(path: Path, channels: Sequence[int | None]) -> np.ndarray:
    """Read an image file and return (2, Y, X) float32: [main channel, helper or zeros]."""
    import imageio.v3 as iio
    import tifffile

    if path.name.lower().endswith((".tif", ".tiff")):
        arr = tifffile.imread(path)
    else:
        arr = iio.imread(path)
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        arr = np.moveaxis(arr, -1, 0)  # (Y, X, RGB[A]) -> (C, Y, X)
    elif arr.ndim != 3:
        raise ValueError(f"{path}: expected a 2D image or (C, Y, X), got shape {arr.shape}")
    out = np.zeros((2, *arr.shape[-2:]), dtype=np.float32)
    for i, c in enumerate(channels[:2]):
        if c is None:
            continue
        if not 0 <= int(c) < arr.shape[0]:
            raise ValueError(f"{path}: channel {c} requested but the image has {arr.shape[0]}")
        out[i] = arr[int(c)]
    return _normalize99(out)


def train_model(
    images_dir: str | Path,
    labels_dir: str | Path,
    out_path: str | Path,
    *,
    channels: Sequence[int | None] = (0, None),
    n_epochs: int = 100,
    n_steps: int | None = None,
    time_budget_s: float | None = None,
    seed: int = 0,
    learning_rate: float = 0.005,
    weight_decay: float = 1e-5,
    batch_size: int = 8,
    bsize: int = 224,
    diam_mean: float | None = None,
    from_model: str | Path | None = None,
    holdout_fraction: float = 0.0,
    label_suffix: str | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float = 120.0,
    device: str = "auto",
    progress: Callable[[int, int, float], Any] | None = None,
) -> Path:
    """Train (or fine-tune) a Cellpose 3 style network on image and label folders.

    Parameters
    ----------
    images_dir, labels_dir : path
        Folder of images (TIFF/OME-TIFF/PNG) and folder of instance label images named
        ``<stem>_cells.tif``, ``<stem>_masks.tif`` or ``<stem>.tif`` (0 = background).
    out_path : path
        Where the trained weights are written (state dict, floating tensors stored fp16).
    channels : (int | None, int | None)
        0-based channel indices: (cell-or-nucleus channel, helper nucleus channel or None).
        For a nuclei model use ``(dapi, None)``; for a cell model ``(cytoplasm, dapi)``.
    n_epochs : int
        Passes over the training images; one step is one batch of ``batch_size`` crops.
        Ignored when ``n_steps`` is given.
    n_steps : int, optional
        Total optimiser steps.
    time_budget_s : float, optional
        Wall-clock budget: the learning-rate schedule runs on
        ``max(step / n_steps, elapsed / time_budget_s)`` so it anneals when time runs out.
    seed : int
        Seed of numpy and torch (augmentations, crop choice, initial weights).
    learning_rate, weight_decay : float
        AdamW peak learning rate (linear warm-up over the first 2 %, constant until 50 %,
        then cosine decay to 1 % of the peak) and weight decay.
    batch_size : int
        Crops per step.
    bsize : int
        Crop size in pixels (after rescaling each image so its median object diameter
        equals ``diam_mean``).
    diam_mean : float, optional
        Object diameter (pixels) the network works at; default 17 for a nuclei model
        (``channels[1] is None``) and 30 otherwise.
    from_model : str or path, optional
        Start from these weights (a model name or file resolved by :func:`resolve_model`)
        instead of random initialisation (``None``: train from scratch).
    holdout_fraction : float
        Leave out images whose :func:`holdout_split` is True (validation set).
    label_suffix : str, optional
        Exact label file suffix, e.g. ``"_cells.tif"``.
    checkpoint : path, optional
        Resumable checkpoint (weights, optimiser, step); default ``<out_path>.ckpt``.
        Written every ``checkpoint_every_s`` seconds; an existing one is resumed.
    device : str
        See :func:`resolve_device`.
    progress : callable, optional
        ``progress(step, n_steps, loss)`` after every step.

    Returns
    -------
    Path
        ``out_path``.
    """
    require_cellpose()
    import torch
    from cellpose import dynamics, models, transforms
    from cellpose.train import _loss_fn_seg

    out_path = Path(out_path)
    ckpt_path = Path(checkpoint) if checkpoint else out_path.with_name(out_path.name + ".ckpt")
    _set_threads()
    dev = torch.device(resolve_device(device))
    np.random.seed(seed)  # noqa: NPY002 - cellpose augments with np.random
    torch.manual_seed(seed)

    pairs = _find_pairs(Path(images_dir), Path(labels_dir), label_suffix)
    pairs = [p for p in pairs if not holdout_split(p[0], holdout_fraction)]
    if not pairs:
        raise ValueError("no training images left after the hold-out split")
    logger.info("training on %d images: %s", len(pairs), ", ".join(p[0][:12] for p in pairs))

    import tifffile

    data, labels = [], []
    for _name, ip, lp in pairs:
        data.append(_read_training_image(ip, channels))
        lab = np.asarray(tifffile.imread(lp))
        if lab.shape != data[-1].shape[1:]:
            raise ValueError(f"{lp}: label shape {lab.shape} != image shape {data[-1].shape[1:]}")
        labels.append(lab.astype(np.int32))
    t0 = time.time()
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    diams = np.array([max(5.0, float(_median_diameter(lab))) for lab in labels])
    logger.info(
        "flows computed in %.1f s; median diameters %s",
        time.time() - t0,
        np.round(np.percentile(diams, [0, 50, 100]), 1),
    )

    if diam_mean is None:
        diam_mean = 17.0 if (len(channels) < 2 or channels[1] is None) else 30.0
    cp = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diam_mean, nchan=2)
    net = cp.net
    if from_model is not None:
        rm = resolve_model(str(from_model))
        sd = torch.load(rm.path, map_location="cpu", weights_only=True)
        net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False
        )
    net.diam_mean.data = torch.tensor([float(diam_mean)])
    net.diam_labels.data = torch.tensor([float(diam_mean)])
    net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)

    if n_steps is None:
        n_steps = max(1, int(np.ceil(n_epochs * len(data) / batch_size)))
    step, elapsed0 = 0, 0.0
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step, elapsed0 = int(ck["step"]), float(ck["elapsed"])
        logger.info("resumed from %s at step %d (%.0f s)", ckpt_path, step, elapsed0)

    def save_ckpt() -> None:
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed": elapsed0 + time.time() - t_start,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)

    def frac_done() -> float:
        f = step / n_steps
        if time_budget_s:
            f = max(f, (elapsed0 + time.time() - t_start) / time_budget_s)
        return min(1.0, f)

    def lr_at(f: float) -> float:
        if f < 0.02:
            return learning_rate * max(f / 0.02, 0.05)
        if f < 0.5:
            return learning_rate
        return float(learning_rate * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (f - 0.5) / 0.5))))

    t_start = time.time()
    last_ckpt = t_start
    rng = np.random.default_rng(seed + 1000 * step)
    np.random.seed(seed + step)  # noqa: NPY002 - cellpose augments with np.random
    lavg = []
    while frac_done() < 1.0:
        lr = lr_at(frac_done())
        for g in opt.param_groups:
            g["lr"] = float(lr)  # plain float: the checkpoint loads with weights_only=True
        inds = rng.integers(0, len(data), size=batch_size)
        imgs = [data[i] for i in inds]
        lbls = [flows[i][1:] for i in inds]
        rsc = diams[inds] / float(diam_mean)
        imgi, lbl = transforms.random_rotate_and_resize(
            imgs, Y=lbls, rescale=rsc, scale_range=0.5, xy=(bsize, bsize)
        )[:2]
        net.train()
        y = net(torch.from_numpy(imgi).to(dev))[0]
        loss = _loss_fn_seg(lbl, y, dev)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        lavg.append(float(loss.item()))
        if progress is not None:
            progress(step, n_steps, lavg[-1])
        if step % 20 == 0:
            logger.info(
                "step %d/%d loss %.4f lr %.5f elapsed %.0f s",
                step,
                n_steps,
                float(np.mean(lavg)),
                lr,
                elapsed0 + time.time() - t_start,
            )
            lavg = []
        if time.time() - last_ckpt > checkpoint_every_s:
            save_ckpt()
            _save_fp16(net.state_dict(), out_path)
            last_ckpt = time.time()
    save_ckpt()
    _save_fp16(net.state_dict(), out_path)
    logger.info(
        "saved %s after %d steps (%.0f s)", out_path, step, elapsed0 + time.time() - t_start
    )
    return out_path


def _median_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter (pixels) of the objects in a label image."""
    counts = np.bincount(labels.ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.sqrt(np.median(counts) * 4.0 / np.pi))


# --------------------------------------------------------------------------------------
# device
# --------------------------------------------------------------------------------------


def resolve_device(spec: str | None = "auto") -> str:
    """Resolve a device request to the torch device string that will be used.

    Parameters
    ----------
    spec : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or ``"mps"``.

    Returns
    -------
    str
        ``"cpu"``, ``"cuda:N"`` or ``"mps"``.

    Raises
    ------
    ValueError
        Unknown spec, or an explicitly requested accelerator that is not available.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available")
        return "mps"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        idx = 0 if spec == "cuda" else spec.split(":", 1)[1]
        try:
            idx = int(idx)
        except ValueError:
            raise ValueError(f"bad CUDA device {spec!r}: expected 'cuda:N'") from None
        n = torch.cuda.device_count()
        if not 0 <= idx < n:
            raise ValueError(f"device {spec!r} requested but only {n} CUDA device(s) exist")
        return f"cuda:{idx}"
    raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


# --------------------------------------------------------------------------------------
# Cellpose version and model resolution
# --------------------------------------------------------------------------------------


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
        _SHA_CACHE[key] = _sha256_file(Path(path))
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


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


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


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------------------
# label post-processing (numpy / scikit-image only)
# --------------------------------------------------------------------------------------


def map_nuclei_to_cells(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Map every nucleus to the cell it overlaps most (vectorised majority overlap).

    Parameters
    ----------
    nuclei, cells : (Y, X) or (Z, Y, X) integer ndarray
        Label images of the same shape (0 = background).

    Returns
    -------
    (nuclei.max() + 1,) int64 ndarray
        ``m[nucleus_id] = cell_id`` (0 when the nucleus overlaps no cell; ``m[0] = 0``).
    """
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    if nuclei.shape != cells.shape:
        raise ValueError(f"nuclei shape {nuclei.shape} != cells shape {cells.shape}")
    n_nuc = int(nuclei.max()) if nuclei.size else 0
    out = np.zeros(n_nuc + 1, dtype=np.int64)
    sel = (nuclei > 0) & (cells > 0)
    if not sel.any():
        return out
    nv = nuclei[sel].astype(np.int64)
    cv = cells[sel].astype(np.int64)
    key = nv * (int(cv.max()) + 1) + cv
    uniq, counts = np.unique(key, return_counts=True)
    nu, cu = np.divmod(uniq, int(cv.max()) + 1)
    order = np.lexsort((counts, nu))  # by nucleus, then count ascending
    nu, cu = nu[order], cu[order]
    last = np.r_[nu[1:] != nu[:-1], True]  # last row of each nucleus = largest overlap
    out[nu[last]] = cu[last]
    return out


def _expand(
    nuclei: np.ndarray,
    distance_px: float,
    method: str,
    signal: np.ndarray | None,
    spacing: tuple | None = None,
) -> np.ndarray:
    """Grow cell labels from nucleus labels (CellProfiler IdentifySecondaryObjects style).

    ``distance``: every pixel within ``distance_px`` of a nucleus goes to the nearest one.
    ``watershed``: watershed on the inverted smoothed ``signal`` seeded by the nuclei,
    limited to ``distance_px`` from a nucleus and to pixels above an Otsu threshold of the
    signal (nuclei always kept).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels, watershed

    if nuclei.max() == 0 or distance_px <= 0:
        return nuclei.copy()
    if method == "distance" or signal is None:
        if method == "watershed":
            logger.warning(
                "expand_method 'watershed' needs a cell or exosome channel; using 'distance'"
            )
        if spacing is not None:
            return expand_labels(nuclei, distance=distance_px, spacing=spacing)
        return expand_labels(nuclei, distance=distance_px)
    if method != "watershed":
        raise ValueError(f"expand_method must be 'distance' or 'watershed', got {method!r}")
    from skimage.filters import threshold_otsu

    sig = ndi.gaussian_filter(np.asarray(signal, dtype=np.float32), 1.0)
    dist = ndi.distance_transform_edt(nuclei == 0, sampling=spacing)
    within = dist <= distance_px
    try:
        thr = threshold_otsu(sig[within]) if np.ptp(sig[within]) > 0 else -np.inf
    except ValueError:
        thr = -np.inf
    mask = (within & (sig >= thr)) | (nuclei > 0)
    return watershed(-sig, markers=nuclei, mask=mask).astype(nuclei.dtype)


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
    progress: Callable[[float, str], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
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
    progress : callable, optional
        ``progress(fraction_done, message)``.
    cancel : callable, optional
        Polled between steps; when it returns True, :class:`SegmentationCancelled` is raised.

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
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(image.channel_names))
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

    major = cellpose_major_version()
    seg = Segmentation(cells=np.zeros(0, np.int32), mode=mode, cellpose_version=cellpose_version())
    timings: dict[str, float] = {"load": 0.0, "cells": 0.0, "nuclei": 0.0, "expand": 0.0}

    # models (resolved up front: a missing model fails before any work)
    rm_main = rm_nuc = None
    if mode in ("cells", "nuclei"):
        rm_main = resolve_model(sc.model, major)
    nuc_model_name = sc.nuclei_model
    if mode == "expand" and nuc_model_name is None:
        nuc_model_name = (
            sc.model if "nucle" in sc.model.lower() else (_default_nuclei_model(sc.model, major))
        )
    elif mode == "cells" and nuc_ch is not None and nuc_model_name is None:
        nuc_model_name = _default_nuclei_model(sc.model, major)
    if (mode == "expand") or (mode == "cells" and nuc_ch is not None):
        rm_nuc = resolve_model(nuc_model_name, major)
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
        if progress is not None:
            progress(min(1.0, done / max(n_steps, 1)), msg)

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
            if px:
                dist = sc.expand_um / px
            else:
                dist = sc.expand_um
                msg = (
                    "no pixel size (config.pixel_size_um or file metadata): expand_um "
                    "taken as pixels"
                )
                seg.warn(msg, once=True)
            signal = None
            if sc.expand_method == "watershed":
                sch = cell_ch if cell_ch is not None else roles.exosome
                signal = None if sch is None else np.asarray(fr.data[sch], dtype=np.float32)
            cells = _expand_stack(nuclei, dist, sc.expand_method, signal, spacing)
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
    x = _stack_input(
        main.astype(np.float32, copy=False),
        None if helper is None else helper.astype(np.float32, copy=False),
        rm.major,
    )
    kw = {
        **eval_kwargs(sc, diameter),
        "normalize": {"normalize": bool(sc.normalize), "norm3D": bool(sc.do_3d)},
    }
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


# --------------------------------------------------------------------------------------
# command-line entry points (wired into `exouptake train` / `exouptake segment`)
# --------------------------------------------------------------------------------------


_NUCLEUS_NAMES = ("dapi", "hoechst", "nuc", "dna", "h2b", "draq5", "sytox")
_CELL_NAMES = ("cellmask", "cyto", "membrane", "actin", "phalloidin", "wga", "cell", "pkh")


def _parse_channels(
    spec: str | Sequence[int | str | None], channel_names: Sequence[str]
) -> tuple[int | None, int | None]:
    """``"1,0"``, ``"CellMask,DAPI"``, ``"cell,nucleus"`` or ``(1, None)`` -> indices.

    Tokens are 0-based indices, ``none``, channel names (case-insensitive) of the training
    images, or the roles ``cell`` / ``nucleus``, which pick the first channel whose name
    looks like a cytoplasm/membrane or a DNA stain (a single-channel image: ``cell`` -> 0).
    """
    toks = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not 1 <= len(toks) <= 2:
        raise ValueError(f"channels must name 1 or 2 channels (main[,helper]), got {spec!r}")
    names = [n.casefold() for n in channel_names]
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(channel_names))

    def one(tok: Any, pos: int) -> int | None:
        if tok is None or (isinstance(tok, str) and tok.lower() in ("", "none", "-1")):
            return None
        if isinstance(tok, int) or (isinstance(tok, str) and tok.isdigit()):
            i = int(tok)
            if not 0 <= i < len(names):
                raise ValueError(
                    f"channel {i} does not exist: the training images have ({listing})"
                )
            return i
        t = str(tok).casefold()
        if t in names:
            return names.index(t)
        if t in ("cell", "nucleus"):
            if len(names) == 1:
                return 0 if pos == 0 else None
            keys = _NUCLEUS_NAMES if t == "nucleus" else _CELL_NAMES
            for i, n in enumerate(names):
                if any(n.startswith(k) for k in keys):
                    return i
            raise ValueError(
                f"cannot tell which channel is the {t} channel among ({listing}); "
                "give indices, e.g. --channels 1,0"
            )
        raise ValueError(f"no channel named {tok!r}; the training images have ({listing})")

    main = one(toks[0], 0)
    helper = one(toks[1], 1) if len(toks) > 1 else None
    if main is None:
        raise ValueError(f"the first channel of {spec!r} (the one to segment) cannot be none")
    return main, helper


def main_train(
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    channels: str | Sequence[int | str | None] = "cell,nucleus",
    epochs: int = 100,
    seed: int = 0,
    learning_rate: float | None = None,
    batch_size: int = 8,
    bsize: int = 224,
    diameter: float | None = None,
    from_model: str | None = None,
    holdout_fraction: float = 0.0,
    label_suffix: str | None = None,
    time_budget_s: float | None = None,
    device: str = "auto",
) -> int:
    """``exouptake train`` body: train a model and print where it was written.

    Parameters
    ----------
    images, labels, out : path
        Image folder, label folder, output weights file (see :func:`train_model`).
    channels : str or sequence
        ``"main[,helper]"``: indices, channel names, or the roles ``cell`` / ``nucleus``.
    epochs, seed, batch_size, bsize, diameter, from_model, holdout_fraction, label_suffix,
    time_budget_s, device
        See :func:`train_model` (``diameter`` is its ``diam_mean``).
    learning_rate : float, optional
        AdamW learning rate (default 0.005; values above 0.05 are meant for SGD and are
        refused).

    Returns
    -------
    int
        0 on success; bad arguments raise ``ValueError`` (the CLI's exit code 2).
    """
    lr = 0.005 if learning_rate is None else float(learning_rate)
    if not 0 < lr <= 0.05:
        raise ValueError(
            f"learning rate {lr} is outside (0, 0.05]: training uses AdamW, whose "
            "usual rate is 0.005 (0.1 is an SGD rate)"
        )
    pairs = _find_pairs(Path(images), Path(labels), label_suffix)
    from .io import read_image

    first = read_image(pairs[0][1])
    chans = _parse_channels(channels, first.channel_names)
    logger.info("training channels: main %s, helper %s", chans[0], chans[1])
    path = train_model(
        images,
        labels,
        out,
        channels=chans,
        n_epochs=epochs,
        seed=seed,
        learning_rate=lr,
        batch_size=batch_size,
        bsize=bsize,
        diam_mean=diameter,
        from_model=from_model,
        holdout_fraction=holdout_fraction,
        label_suffix=label_suffix,
        time_budget_s=time_budget_s,
        device=device,
    )
    size_mb = Path(path).stat().st_size / 2**20
    print(f"wrote {path} ({size_mb:.1f} MiB, sha256 {_sha256_file(Path(path))[:16]}...)")
    return 0


def _expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    import glob

    from .io import RASTER_SUFFIXES, TIFF_SUFFIXES

    suffixes = tuple(s.lower() for s in (*TIFF_SUFFIXES, *RASTER_SUFFIXES))
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.name.lower().endswith(suffixes))
        elif p.is_file():
            files.append(p)
        else:
            hits = sorted(Path(h) for h in glob.glob(str(item), recursive=True))
            if not hits:
                raise ValueError(f"input {item!r} matches no file")
            files += [h for h in hits if h.is_file()]
    return files


def main_segment(
    inputs: Sequence[str | Path],
    config: str | Path | AssayConfig,
    out: str | Path,
    *,
    model: str | None = None,
    device: str | None = None,
    mode: str | None = None,
) -> int:
    """``exouptake segment`` body: write ``labels/<image>_cells.tif`` (+ ``_nuclei.tif``).

    Parameters
    ----------
    inputs : sequence of str or path
        Image files, folders (searched recursively) or glob patterns.
    config : path or AssayConfig
    out : path
        Output folder.
    model, device, mode : str, optional
        Override ``segmentation.model`` / ``.device`` / ``.mode``.

    Returns
    -------
    int
        0 when every image was segmented, 1 when some failed (listed in
        ``out/failures.csv``; the others are written).
    """
    import csv

    from .config import AssayConfig, load_config
    from .io import read_image, write_labels

    cfg = config if isinstance(config, AssayConfig) else load_config(config)
    updates = {k: v for k, v in (("model", model), ("device", device), ("mode", mode)) if v}
    if updates:
        cfg = _with_seg(cfg, **updates)
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    files = _expand_inputs(inputs)
    if not files:
        raise ValueError("no input images found")
    failures = []
    for f in files:
        try:
            img = read_image(f, axes=cfg.axes)
            seg = segment(img, cfg)
            write_labels(out / "labels" / f"{img.name}_cells.tif", seg.cells)
            if seg.nuclei is not None and cfg.segmentation.mode != "nuclei":
                write_labels(out / "labels" / f"{img.name}_nuclei.tif", seg.nuclei)
            logger.info(
                "%s: %d cells on %s in %.2f s",
                f.name,
                seg.n_cells,
                seg.device,
                seg.timings.get("total", 0.0),
            )
            print(
                f"{f.name}: {seg.n_cells} objects ({seg.device}, "
                f"{seg.timings.get('total', 0.0):.1f} s)"
            )
        except ModelNotAvailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - per-image failure, recorded and reported
            logger.error("%s: %s", f, exc)
            failures.append((str(f), f"{type(exc).__name__}: {exc}"))
    if failures:
        with open(out / "failures.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["input", "error"])
            w.writerows(failures)
        return 1
    return 0
