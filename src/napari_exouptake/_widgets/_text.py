"""Words the widget shows: the detector's note on the status line, the core's progress
messages in the widget's words, and the legend of a colour-by column (no Qt)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger(__name__)


def detector_note(attrs: dict, info: dict | None = None) -> str:
    """Status-line note on how the puncta were found on this image: the threshold in image
    units and how it was chosen, the punctum radius (measured or given), hot pixels removed
    and, with ``info`` from :func:`detect_channel`, the saturated pixels."""
    parts = []
    thr = attrs.get("threshold")
    snr = attrs.get("snr_threshold")
    if thr is not None and np.isfinite(thr):
        if snr is not None and np.isfinite(snr):
            how = (
                "automatic: the signal-to-noise floor of 5"
                if np.isclose(snr, 5.0)
                else f"automatic: signal-to-noise ≥ {snr:.3g}"
            )
        else:
            how = "typed"
        parts.append(f"threshold {thr:.4g} ({how})")
    rad = attrs.get("radius_px")
    if rad is not None and np.isfinite(rad):
        parts.append(f"radius {rad:.2f} px" + (" (measured)" if attrs.get("radius_auto") else ""))
    if attrs.get("n_spikes"):
        parts.append(f"{int(attrs['n_spikes'])} hot pixels removed")
    if info is not None and info.get("saturation_level") is not None:
        n = int(info.get("n_saturated", 0))
        parts.append(f"{n} saturated pixels (at {info['saturation_level']:.0f})")
    return "".join(f" · {p}" for p in parts)


def _plain_words(message: str) -> str:
    """Progress messages of the core in the widget's words (no frame numbers of a single
    image)."""
    message = re.sub(r"\bframe 0\b[:,]?\s*", "", message)
    return message.replace("exo ", "EV ").strip()


def _legend_html(column: str, values: np.ndarray) -> str:
    """Legend of a colour-by column, in the colours :func:`value_colors` gives."""
    import matplotlib

    def swatch(rgba: Any, text: str) -> str:
        r, g, b = (int(255 * c) for c in rgba[:3])
        return f"<span style='color: rgb({r},{g},{b});'>■</span> {text}"

    vals = np.asarray(values)
    if vals.dtype == bool:
        n = int(vals.sum())
        return (
            f"{column}: {swatch((0.9, 0.15, 0.15), f'yes ({n})')} &nbsp; "
            f"{swatch((0.2, 0.4, 0.95), f'no ({vals.size - n})')}"
        )
    v = vals.astype(float)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return f"{column}: no values"
    lo, hi = float(finite.min()), float(finite.max())
    cmap = matplotlib.colormaps["viridis"]
    steps = " ".join(swatch(cmap(t), "") for t in (0.0, 0.25, 0.5, 0.75, 1.0))
    grey = " · grey: no value" if finite.size < v.size else ""
    return f"{column}: {lo:.4g} {steps} {hi:.4g}{grey}"
