"""Training and fine-tuning a Cellpose model on image + label folders (weights saved fp16)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..progress import Cancel, Cancelled, Progress, report
from .device import _set_threads, resolve_device
from .labels import _median_diameter
from .models import require_cellpose, resolve_model

logger = logging.getLogger("napari_exouptake.segmentation")


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


# --------------------------------------------------------------------------------------
# training loop
# --------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
_LABEL_SUFFIXES = ("_cells.tif", "_masks.tif", "_labels.tif", ".tif", ".tiff", ".png")


def _stem(path: Path) -> str:
    name = path.name
    for suf in _IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def find_pairs(images_dir: Path, labels_dir: Path, label_suffix: str | None) -> list[tuple]:
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
    progress: Progress | None = None,
    cancel: Cancel | None = None,
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
    progress : callable(fraction, message), optional
        After every step: the fraction of the schedule done and ``"step 12/400, loss 0.4321"``
        (see :mod:`napari_exouptake.progress`).
    cancel : callable() -> bool, optional
        Polled after every step; when it returns True the weights and the checkpoint are saved
        (so the run resumes from there) and :class:`~napari_exouptake.progress.Cancelled` is
        raised.

    Returns
    -------
    Path
        ``out_path``.
    """
    require_cellpose()
    import torch
    from cellpose import transforms
    from cellpose.train import _loss_fn_seg

    out_path = Path(out_path)
    ckpt_path = Path(checkpoint) if checkpoint else out_path.with_name(out_path.name + ".ckpt")
    _set_threads()
    dev = torch.device(resolve_device(device))
    np.random.seed(seed)  # noqa: NPY002 - cellpose augments with np.random
    torch.manual_seed(seed)

    data, flows, diams = _training_set(
        images_dir, labels_dir, channels, holdout_fraction, label_suffix
    )
    if diam_mean is None:
        diam_mean = 17.0 if (len(channels) < 2 or channels[1] is None) else 30.0
    net = _network(diam_mean, from_model, dev)
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)

    if n_steps is None:
        n_steps = max(1, int(np.ceil(n_epochs * len(data) / batch_size)))
    ckpt = _Checkpoint(ckpt_path, net, opt)
    step = ckpt.step

    def frac_done() -> float:
        f = step / n_steps
        if time_budget_s:
            f = max(f, ckpt.elapsed() / time_budget_s)
        return min(1.0, f)

    def save() -> None:
        ckpt.save(step)
        _save_fp16(net.state_dict(), out_path)

    last_ckpt = time.time()
    rng = np.random.default_rng(seed + 1000 * step)
    np.random.seed(seed + step)  # noqa: NPY002 - cellpose augments with np.random
    lavg = []
    while frac_done() < 1.0:
        lr = _learning_rate(frac_done(), learning_rate)
        for g in opt.param_groups:
            g["lr"] = float(lr)  # plain float: the checkpoint loads with weights_only=True
        inds = rng.integers(0, len(data), size=batch_size)
        imgi, lbl = transforms.random_rotate_and_resize(
            [data[i] for i in inds],
            Y=[flows[i][1:] for i in inds],
            rescale=diams[inds] / float(diam_mean),
            scale_range=0.5,
            xy=(bsize, bsize),
        )[:2]
        net.train()
        loss = _loss_fn_seg(lbl, net(torch.from_numpy(imgi).to(dev))[0], dev)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        lavg.append(float(loss.item()))
        report(progress, frac_done(), f"step {step}/{n_steps}, loss {lavg[-1]:.4f}")
        if step % 20 == 0:
            logger.info(
                "step %d/%d loss %.4f lr %.5f elapsed %.0f s",
                step,
                n_steps,
                float(np.mean(lavg)),
                lr,
                ckpt.elapsed(),
            )
            lavg = []
        if cancel is not None and cancel():
            save()
            raise Cancelled(f"training cancelled at step {step}/{n_steps}")
        if time.time() - last_ckpt > checkpoint_every_s:
            save()
            last_ckpt = time.time()
    save()
    logger.info("saved %s after %d steps (%.0f s)", out_path, step, ckpt.elapsed())
    return out_path


def _training_set(images_dir, labels_dir, channels, holdout_fraction, label_suffix):
    """Images (C, Y, X) normalised, their Cellpose flows and median object diameters."""
    import tifffile
    import torch
    from cellpose import dynamics

    pairs = find_pairs(Path(images_dir), Path(labels_dir), label_suffix)
    pairs = [p for p in pairs if not holdout_split(p[0], holdout_fraction)]
    if not pairs:
        raise ValueError("no training images left after the hold-out split")
    logger.info("training on %d images: %s", len(pairs), ", ".join(p[0][:12] for p in pairs))
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
    return data, flows, diams


def _network(diam_mean: float, from_model, dev):
    """A Cellpose 3 network at ``diam_mean`` (random, or the weights of ``from_model``)."""
    import torch
    from cellpose import models

    net = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diam_mean, nchan=2).net
    if from_model is not None:
        rm = resolve_model(str(from_model))
        sd = torch.load(rm.path, map_location="cpu", weights_only=True)
        net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False
        )
    net.diam_mean.data = torch.tensor([float(diam_mean)])
    net.diam_labels.data = torch.tensor([float(diam_mean)])
    return net.to(dev)


def _learning_rate(f: float, peak: float) -> float:
    """Linear warm-up over the first 2 % of the schedule, constant to 50 %, then cosine decay
    to 1 % of ``peak``."""
    if f < 0.02:
        return peak * max(f / 0.02, 0.05)
    if f < 0.5:
        return peak
    return float(peak * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (f - 0.5) / 0.5))))


class _Checkpoint:
    """A resumable training state on disk: weights, optimiser, step and time spent so far.

    An existing file is loaded into ``net`` and ``opt`` on creation (``step``, and the
    seconds already spent count in :meth:`elapsed`).
    """

    def __init__(self, path: Path, net, opt) -> None:
        import torch

        self.path, self.net, self.opt = path, net, opt
        self.step, self.before = 0, 0.0
        if path.is_file():
            ck = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(ck["net"])
            opt.load_state_dict(ck["opt"])
            self.step, self.before = int(ck["step"]), float(ck["elapsed"])
            logger.info("resumed from %s at step %d (%.0f s)", path, self.step, self.before)
        self.t_start = time.time()

    def elapsed(self) -> float:
        """Seconds of training, earlier runs included."""
        return self.before + time.time() - self.t_start

    def save(self, step: int) -> None:
        import torch

        tmp = self.path.with_name(self.path.name + ".tmp")
        payload = {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "step": step,
            "elapsed": self.elapsed(),
        }
        torch.save(payload, tmp)
        os.replace(tmp, self.path)
