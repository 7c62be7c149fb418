"""QC overlay pictures: ``qc/<image>_overlay.png``.

One picture per image: the EV channel in grey with one contrast for the whole run (so a
brighter picture means more signal, not a different stretch), cell outlines (EV-positive cells
in green, others in cyan), nuclei in blue, puncta as rings (red inside cells, yellow outside),
a title (image, condition, cells, % EV-positive), a legend and a scale bar when the pixel size
is known.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["draw_overlay", "qc_step", "run_contrast", "write_qc_png"]

#: colours (RGB 0-255) of the overlay; the legend uses the same
COLOURS = {
    "positive": (60, 230, 60),
    "negative": (0, 200, 230),
    "nucleus": (70, 100, 255),
    "spot_in": (255, 40, 40),
    "spot_out": (255, 200, 0),
}


#: longest side of a QC overlay; bigger images (whole wells, mosaics) are shown subsampled
QC_MAX_SIDE = 2048


def qc_step(shape: tuple[int, ...], max_side: int = QC_MAX_SIDE) -> int:
    """Subsampling step that brings an image's longer side to at most ``max_side`` px."""
    return max(1, -(-max(shape[-2:]) // max_side))


def _plane(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.max(axis=0) if a.ndim == 3 else a


def run_contrast(exo_images: Iterable[np.ndarray], lo_pct=1.0, hi_pct=99.8) -> tuple[float, float]:
    """One display range for the EV channel of a whole run.

    The ``lo_pct`` and ``hi_pct`` percentiles of the pooled pixels (a regular subsample of at
    most ~250,000 pixels per image).

    Parameters
    ----------
    exo_images : iterable of (Y, X) or (Z, Y, X) arrays

    Returns
    -------
    (float, float)
        Black and white levels in camera counts.
    """
    samples = []
    for a in exo_images:
        if a is None:
            continue
        flat = _plane(a).ravel()
        step = max(1, flat.size // 250_000)
        samples.append(flat[::step].astype(np.float32))
    if not samples:
        return 0.0, 1.0
    pooled = np.concatenate(samples)
    lo, hi = np.percentile(pooled, [lo_pct, hi_pct])
    return float(lo), float(max(hi, lo + 1e-9))


def draw_overlay(
    exo: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray | None,
    spots: pd.DataFrame | None,
    positive_ids: Sequence[int] | np.ndarray = (),
    contrast: tuple[float, float] | None = None,
    ring_px: int = 3,
) -> np.ndarray:
    """The overlay's pixels (no title, legend or scale bar).

    Parameters
    ----------
    exo : (Y, X) or (Z, Y, X) array
        EV channel (3D: maximum projection).
    cells, nuclei : (Y, X) or (Z, Y, X) int arrays
        Label images (0 = background).
    spots : pandas.DataFrame
        ``y``, ``x`` and optionally ``cell_id``.
    positive_ids : sequence of int
        Labels of EV-positive cells (outlined in green).
    contrast : (float, float), optional
        Black and white levels (default: this image's 1st and 99.8th percentiles).
    ring_px : int
        Radius of the ring drawn round each punctum; 0 marks the punctum's pixel only (a
        subsampled whole well, where rings would cover the picture).

    Returns
    -------
    (Y, X, 3) uint8 ndarray
    """
    from skimage.segmentation import find_boundaries

    exo = _plane(exo).astype(np.float32)
    lab = _plane(cells)
    lo, hi = contrast if contrast is not None else np.percentile(exo, [1.0, 99.8])
    gray = np.clip((exo - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    if nuclei is not None:
        rgb[find_boundaries(_plane(nuclei), mode="inner")] = COLOURS["nucleus"]
    edge = find_boundaries(lab, mode="inner")
    pos = np.isin(lab, np.asarray(positive_ids, dtype=lab.dtype)) if len(positive_ids) else None
    rgb[edge] = COLOURS["negative"]
    if pos is not None:
        # positive cells: a 2 px green outline, so they read at a glance
        thick = edge | find_boundaries(lab, mode="outer") & (lab > 0)
        rgb[thick & pos] = COLOURS["positive"]
    if spots is not None and len(spots):
        yy = np.clip(np.round(spots["y"].to_numpy()).astype(int), 0, lab.shape[0] - 1)
        xx = np.clip(np.round(spots["x"].to_numpy()).astype(int), 0, lab.shape[1] - 1)
        ang = np.linspace(0, 2 * np.pi, 16 if ring_px > 0 else 1, endpoint=False)
        ry = np.clip(np.round(yy[:, None] + ring_px * np.sin(ang)).astype(int), 0, lab.shape[0] - 1)
        rx = np.clip(np.round(xx[:, None] + ring_px * np.cos(ang)).astype(int), 0, lab.shape[1] - 1)
        inside = (
            spots["cell_id"].to_numpy() > 0 if "cell_id" in spots else np.ones(len(spots), bool)
        )
        colour = np.where(
            inside[:, None], np.array([COLOURS["spot_in"]]), np.array([COLOURS["spot_out"]])
        )
        rgb[ry, rx] = np.repeat(colour, ry.shape[1], axis=0).reshape(ry.shape + (3,))
    return rgb


def _nice_bar_um(width_um: float) -> float:
    """A round scale-bar length of about a fifth of the image width."""
    target = width_um / 5.0
    for v in (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1, 0.5):
        if v <= target:
            return float(v)
    return 0.5


def write_qc_png(
    path: str | Path,
    rgb: np.ndarray,
    *,
    title: str,
    pixel_size_um: float | None = None,
    contrast: tuple[float, float] | None = None,
    max_side_px: int = 1400,
    with_nuclei: bool = True,
) -> Path:
    """Write ``rgb`` with a title, a legend and a scale bar as a PNG.

    Small images are enlarged (pixel repetition) to about 1,000 px; large ones are shown at
    most ``max_side_px`` wide.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    h, w = rgb.shape[:2]
    scale = min(max(1.0, 1000.0 / max(h, w)), max_side_px / max(h, w))
    dpi = 100
    fig_w, img_h = w * scale / dpi, h * scale / dpi
    top, bottom = 0.55, 0.4  # inches for the title and the legend
    fig_h = img_h + top + bottom
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0, bottom / fig_h, 1, img_h / fig_h))
    ax.imshow(rgb, interpolation="nearest" if scale >= 1 else "antialiased")
    ax.set_axis_off()
    fig.text(0.5, 1 - 0.06 / fig_h, title, ha="center", va="top", fontsize=11)
    if contrast is not None:
        fig.text(
            0.5,
            1 - 0.33 / fig_h,
            f"EV channel shown {contrast[0]:.0f}-{contrast[1]:.0f} counts, the same for every "
            "image of the run",
            ha="center",
            va="top",
            fontsize=8,
            color="#555",
        )
    if pixel_size_um:
        bar_um = _nice_bar_um(w * pixel_size_um)
        bar_px = bar_um / pixel_size_um
        x0, y0 = w - bar_px - 0.04 * w, h - 0.05 * h
        ax.plot([x0, x0 + bar_px], [y0, y0], color="white", linewidth=4, solid_capstyle="butt")
        ax.text(
            x0 + bar_px / 2,
            y0 - 0.015 * h,
            f"{bar_um:g} µm",
            color="white",
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
        )

    def c(k):
        return tuple(v / 255 for v in COLOURS[k])

    handles = [
        Patch(facecolor="none", edgecolor=c("positive"), linewidth=2, label="EV-positive cell"),
        Patch(facecolor="none", edgecolor=c("negative"), label="other cell"),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="none",
            color=c("spot_in"),
            label="punctum in a cell",
        ),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="none",
            color=c("spot_out"),
            label="punctum outside cells",
        ),
    ]
    if with_nuclei:
        handles.insert(2, Patch(facecolor="none", edgecolor=c("nucleus"), label="nucleus"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=5 if fig_w > 9 else 3,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new file renamed into place: the old name may be a hard link shared with the previous
    # results generation, which must not change
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
