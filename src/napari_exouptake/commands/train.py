"""``exouptake train``: parse the channel spec, train, print where the weights went."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..segmentation.models import sha256_file
from ..segmentation.training import find_pairs, train_model

logger = logging.getLogger("napari_exouptake.segmentation")

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
    pairs = find_pairs(Path(images), Path(labels), label_suffix)
    from ..io import read_image

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
    print(f"wrote {path} ({size_mb:.1f} MiB, sha256 {sha256_file(Path(path))[:16]}...)")
    return 0
