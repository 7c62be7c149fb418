"""The report's figures (PNG, base64-embedded) and QC thumbnails."""

from __future__ import annotations

import base64
import io as _io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .stats import Metric

log = logging.getLogger(__name__)


def _png(fig) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colours(order: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(order)}


def _plot_per_image(
    images: pd.DataFrame, metrics: Sequence[Metric], order: Sequence[str], control: str | None
) -> str:
    import matplotlib.pyplot as plt

    n = len(metrics)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    colours = _colours(order)
    x = np.arange(len(order))
    rng = np.random.default_rng(0)  # fixed jitter: the report is reproducible
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        vals = [
            images.loc[images["condition"] == c, m.column].astype(float).dropna().to_numpy()
            * m.scale
            for c in order
        ]
        means = np.array([v.mean() if v.size else np.nan for v in vals])
        sems = np.array([v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0 for v in vals])
        ax.bar(
            x,
            means,
            yerr=sems,
            color=[colours[c] for c in order],
            alpha=0.35,
            capsize=4,
            edgecolor="black",
            linewidth=0.6,
        )
        for i, v in enumerate(vals):
            ax.scatter(
                i + rng.uniform(-0.15, 0.15, v.size),
                v,
                s=14,
                color=colours[order[i]],
                edgecolor="black",
                linewidth=0.4,
                zorder=3,
            )
        ax.set_xticks(x, [f"{c}*" if c == control else c for c in order], rotation=30, ha="right")
        ax.set_title(m.label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Per-image means (dots), condition mean +/- SEM (bars); * = control", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _plot_cells(cells: pd.DataFrame, order: Sequence[str], markers: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    panels = [("exo_spot_count", "EV puncta per cell", False)]
    if "exo_integrated_intensity" in cells:
        panels.append(("exo_integrated_intensity", "EV integrated intensity per cell (a.u.)", True))
    panels += [
        (f"{m}_mean_intensity", f"{m.upper()} mean intensity per cell (a.u.)", False)
        for m in markers
        if f"{m}_mean_intensity" in cells
    ]
    panels = [p for p in panels if p[0] in cells]
    ncol = min(len(panels), 2)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 3.4 * nrow), squeeze=False)
    colours = _colours(order)
    for ax, (col, label, logy) in zip(axes.ravel(), panels, strict=False):
        data = [
            cells.loc[cells["condition"] == c, col].astype(float).dropna().to_numpy() for c in order
        ]
        if logy:
            data = [np.log10(np.clip(d, 1.0, None)) for d in data]
            label = label + " (log10, floor 1)"
        keep = [i for i, d in enumerate(data) if d.size]
        if keep:
            parts = ax.violinplot(
                [data[i] for i in keep], positions=keep, showmedians=True, widths=0.8
            )
            for body, i in zip(parts["bodies"], keep, strict=True):
                body.set_facecolor(colours[order[i]])
                body.set_alpha(0.5)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Per-cell distributions (all cells of each condition; line = median)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _plot_dose(images: pd.DataFrame, metrics: Sequence[Metric], order: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    n = len(metrics)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    colours = _colours(order)
    dose = images["dose"].astype(float)
    positive = dose[dose > 0]
    linthresh = float(positive.min()) if len(positive) else 1.0
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        vals = images[m.column].astype(float) * m.scale
        for c in order:
            sel = images["condition"] == c
            ax.scatter(
                dose[sel],
                vals[sel],
                s=16,
                color=colours[c],
                edgecolor="black",
                linewidth=0.4,
                label=c,
                zorder=3,
            )
        g = vals.groupby(dose)
        mean, sem = g.mean(), g.std(ddof=1) / np.sqrt(g.count())
        ax.errorbar(
            mean.index,
            mean.to_numpy(),
            yerr=sem.fillna(0).to_numpy(),
            color="black",
            capsize=3,
            linewidth=1,
        )
        if dose.min() >= 0 and dose.max() / linthresh > 20:
            ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlabel(
            "dose"
            + (
                f" ({images['dose_unit'].dropna().iloc[0]})"
                if "dose_unit" in images and images["dose_unit"].notna().any()
                else ""
            )
        )
        ax.set_title(m.label, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, frameon=False)
    fig.suptitle("Dose-response: per-image values, mean +/- SEM per dose", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _thumbnails(
    qc_dir: Path, images: pd.DataFrame, order: Sequence[str], per_condition: int, size: int = 360
) -> list[tuple[str, str, str, Path]]:
    """(image, condition, base64 PNG, full-size path) of up to ``per_condition`` overlays per
    condition."""
    from PIL import Image

    if not qc_dir.is_dir():
        return []
    out = []
    for c in order:
        names = sorted(images.loc[images["condition"] == c, "image"].astype(str))
        for name in names[:per_condition]:
            # the cell overlay, else (tube- or collagen-only assays) the readout's picture
            candidates = [
                qc_dir / f"{name}_{kind}.png" for kind in ("overlay", "tubes", "collagen")
            ]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                continue
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size))
                buf = _io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
            out.append((name, c, base64.b64encode(buf.getvalue()).decode("ascii"), path))
    return out


# -- HTML --------------------------------------------------------------------------------------
