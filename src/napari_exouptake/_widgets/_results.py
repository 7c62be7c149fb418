"""A measurement's result in the viewer: the labels' features and the puncta layer, the
per-cell table linked to the canvas, positivity thresholds re-applied by ``pipeline.finalize``,
colour-by, and export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
)

from ..config import DEFAULT_RADIUS_PX
from ._layers import (
    META_KEY,
    points_layer_data,
    value_colors,
)
from ._panel import NONE
from ._state import STALE_BANNER
from ._text import _legend_html, detector_note

if TYPE_CHECKING:  # pragma: no cover
    from ..config import AssayConfig
    from ..pipeline import AnalysisResult

log = logging.getLogger(__name__)


#: per-cell columns shown first in the table, with the words used for them
KEY_COLUMNS = {
    "cell_id": "cell",
    "exo_spot_count": "EV puncta",
    "exo_positive": "EV-positive",
    "exo_spot_estimate": "EVs (estimate)",
}


class ResultsMixin:
    """How :class:`~._main.ExoUptakeWidget` shows, re-classifies and exports its result."""

    def _put_layer(self, layer_data: tuple) -> Any:
        """Add a layer, replacing one of the same name."""
        data, kwargs, kind = layer_data
        name = kwargs["name"]
        if name in self.viewer.layers:
            self.viewer.layers.remove(self.viewer.layers[name])
        return getattr(self.viewer, f"add_{kind}")(data, **kwargs)

    def _show_result(
        self,
        result: AnalysisResult,
        cfg: AssayConfig,
        cells_layer: Any,
        image_layer: Any,
        source_names: list[str],
    ) -> None:
        from ._layers import cells_features

        geo = self._geometry(image_layer)
        self.state.set_result(result, cfg)
        tie = {
            "image": result.image,
            "computed_from": source_names,
            "image_layer": image_layer.name,
            "config": cfg.to_dict(),
            "thresholds": dict(result.thresholds),
            "summary": dict(result.summary),
        }
        cells_layer.features = cells_features(result.cells)
        meta = dict(cells_layer.metadata)
        meta[META_KEY] = {**meta.get(META_KEY, {}), **tie, "kind": "cells", "measured": True}
        cells_layer.metadata = meta
        self._link_labels(cells_layer)
        pmeta = {META_KEY: {**tie, "kind": "puncta", "labels_layer": cells_layer.name}}
        self._points_layer = self._put_layer(
            points_layer_data(
                result.spots,
                name=f"{result.image} puncta",
                ndim=geo["ndim"],
                radius_px=float(result.spots.attrs.get("radius_px", DEFAULT_RADIUS_PX)),
                scale=geo["scale"],
                translate=geo["translate"],
                metadata=pmeta,
            )
        )
        self._show_readouts(result, geo)
        if "puncta preview" in self.viewer.layers:  # the measured puncta replace the preview
            self.viewer.layers["puncta preview"].visible = False
        cells_layer.visible = True  # show what was measured (and let clicks pick cells)
        cells_layer.contour = max(int(cells_layer.contour), 1)
        cells_layer.opacity = 0.8
        self.viewer.layers.selection.active = cells_layer
        self.table.set_table(
            result.cells, order=self._key_columns(result), names=self._headers(result)
        )
        self._build_threshold_spins(result)
        QTimer.singleShot(0, self._fit_width)
        cols = [
            c
            for c in result.cells.columns
            if c not in ("image", "condition") and result.cells[c].dtype.kind in "biuf"
        ]
        self._fill_combo(self.color_combo, cols)
        self.color_cells_by(self.color_combo.currentText())
        n = len(result.cells)
        pos = (
            float(result.cells["exo_positive"].mean())
            if n and "exo_positive" in result.cells
            else 0
        )
        self._result_status = (
            f"{result.image}: {n} cells, {len(result.spots)} EV puncta, {100 * pos:.0f}% "
            f"EV-positive{detector_note(result.spots.attrs, self._detection_info)}"
        )
        self._say(self._result_status)

    @staticmethod
    def _key_columns(result: AnalysisResult) -> list[str]:
        """Columns a biologist reads first: cell, EV puncta, EV-positive, marker positives."""
        cols = [c for c in KEY_COLUMNS if c in result.cells.columns]
        cols += [c for c in result.cells.columns if c.endswith("_positive") and c not in cols]
        return cols

    @staticmethod
    def _headers(result: AnalysisResult) -> dict[str, str]:
        names = dict(KEY_COLUMNS)
        for c in result.cells.columns:
            if c.endswith("_positive") and c not in names:
                names[c] = f"{c[: -len('_positive')]}-positive"
            elif c.startswith("exo_") and c not in names:
                names[c] = "EV " + c[4:].replace("_", " ")
        return names

    def _show_readouts(self, result: AnalysisResult, geo: dict[str, Any]) -> None:
        """Image-level readouts as text, and their QC pictures as RGB layers."""
        from ..pipeline import KEY_READOUTS

        summary = result.summary
        lines = []
        for key, label in KEY_READOUTS.items():
            if key in summary:
                value = summary[key]
                unit = ""
                if key.startswith("tube_total_length"):
                    unit = " " + str(summary.get("tube_length_unit", "um"))
                if key == "collagen_mean_fibre_length":
                    unit = " " + str(summary.get("collagen_length_unit", "um"))
                text = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
                lines.append(f"{label}: {text}{unit}")
        self.readouts_label.setText(
            "\n".join(lines) if lines else "no tube or collagen channel chosen"
        )
        for kind, rgb in result.extras.get("qc", {}).items():  # drawn by the worker
            name = f"{result.image} {kind} QC"
            meta = {META_KEY: {"kind": f"{kind}_overlay", "image": result.image}}
            scale = tuple(geo["scale"])[-2:]
            translate = tuple(geo["translate"])[-2:]
            k = getattr(result.extras.get(kind), "binning", 1)  # whole wells are analysed binned
            if k > 1:
                translate = tuple(
                    t + (k - 1) / 2 * s for t, s in zip(translate, scale, strict=True)
                )
                scale = tuple(k * s for s in scale)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = rgb
            else:
                self.viewer.add_image(
                    rgb,
                    name=name,
                    rgb=True,
                    scale=scale,
                    translate=translate,
                    visible=False,
                    metadata=meta,
                )

    def _link_labels(self, layer: Any) -> None:
        if self._cells_layer is layer:
            return
        if self._cells_layer is not None:
            try:
                self._cells_layer.events.selected_label.disconnect(self._on_selected_label)
                self._cells_layer.mouse_drag_callbacks.remove(self._on_label_click)
            except (ValueError, TypeError, RuntimeError):
                pass
        self._cells_layer = layer
        layer.events.selected_label.connect(self._on_selected_label)
        layer.mouse_drag_callbacks.append(self._on_label_click)
        layer.metadata = {**layer.metadata, "_exouptake_colormap": layer.colormap}

    def _on_label_click(self, layer: Any, event: Any) -> None:
        """Clicking a cell in the canvas (pan/zoom mode) picks it."""
        if layer.mode != "pan_zoom":
            return
        value = layer.get_value(event.position, world=True)
        if value:
            layer.selected_label = int(value)

    def _on_selected_label(self, event: Any = None) -> None:
        if self._linking or self._cells_layer is None:
            return
        self.table.select_cell(int(self._cells_layer.selected_label))

    def focus_cell(self, cell_id: int) -> None:
        """Select ``cell_id``: outline it (layer ``selected cell``), zoom to it with the view
        kept inside the image, and select its table row."""
        layer, result = self._cells_layer, self._result
        if layer is None or result is None:
            return
        self._linking = True
        try:
            layer.selected_label = int(cell_id)
        finally:
            self._linking = False
        labels = np.asarray(layer.data)
        where = np.nonzero(labels == int(cell_id))
        if where[0].size:
            lo = np.array([w.min() for w in where])
            hi = np.array([w.max() + 1 for w in where])
            crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            mask = (labels[crop] == int(cell_id)).astype(np.uint8)
            self._show_outline(layer, mask, lo)
            self._zoom_to(layer, lo[-2:], hi[-2:])
        self.viewer.layers.selection.active = layer
        self.table.select_cell(int(cell_id))

    def _show_outline(self, layer: Any, mask: np.ndarray, start: np.ndarray) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        scale = np.asarray(layer.scale, dtype=float)
        translate = np.asarray(layer.translate, dtype=float) + start * scale
        name = "selected cell"
        if name in self.viewer.layers:
            self.viewer.layers.remove(self.viewer.layers[name])
        out = self.viewer.add_labels(
            mask,
            name=name,
            scale=tuple(scale),
            translate=tuple(translate),
            opacity=1.0,
            metadata={META_KEY: {"kind": "selected_cell"}},
        )
        out.colormap = DirectLabelColormap(
            color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1.0, 1.0, 0.0, 1.0)}
        )
        out.contour = 1

    def view_rect(self) -> tuple[np.ndarray, np.ndarray]:
        """World ``(Y, X)`` corners ``(low, high)`` of the canvas' view."""
        h, w = self._canvas_size()
        half = np.array([h, w], dtype=float) / (2.0 * self._camera.zoom)
        centre = np.asarray(self._camera.center, dtype=float)[-2:]
        return centre - half, centre + half

    def _canvas_size(self) -> tuple[int, int]:
        import warnings

        with warnings.catch_warnings():  # no public canvas size in napari 0.9
            warnings.simplefilter("ignore", FutureWarning)
            size = getattr(self.viewer, "_canvas_size", None)
        if size is None or min(size) <= 1:
            size = (600, 800)
        return int(size[0]), int(size[1])

    def _zoom_to(self, layer: Any, lo: np.ndarray, hi: np.ndarray) -> None:
        """Zoom so the box ``lo:hi`` (pixels) fills about a third of the canvas, the view
        clamped inside the image (no empty canvas beside a border cell)."""
        scale = np.asarray(layer.scale, dtype=float)[-2:]
        translate = np.asarray(layer.translate, dtype=float)[-2:]
        shape = np.asarray(np.shape(layer.data)[-2:], dtype=float)
        img_lo, img_hi = translate - 0.5 * scale, translate + (shape - 0.5) * scale
        box_lo = translate + (lo - 0.5) * scale
        box_hi = translate + (hi - 0.5) * scale
        canvas = np.asarray(self._canvas_size(), dtype=float)
        want = np.maximum((box_hi - box_lo) * 3.0, 40 * scale)
        zoom = float(np.min(canvas / np.minimum(want, img_hi - img_lo)))
        half = canvas / (2.0 * zoom)
        centre = (box_lo + box_hi) / 2.0
        for i in range(2):
            if 2 * half[i] >= img_hi[i] - img_lo[i]:
                centre[i] = (img_lo[i] + img_hi[i]) / 2.0
            else:
                centre[i] = min(max(centre[i], img_lo[i] + half[i]), img_hi[i] - half[i])
        self._camera.zoom = zoom
        if self.viewer.dims.ndisplay == 2:
            self._camera.center = tuple(centre)
        else:
            c = list(self._camera.center)
            c[-2:] = centre
            self._camera.center = tuple(c)

    def _build_threshold_spins(self, result: AnalysisResult) -> None:
        """One row per positivity threshold: "auto" (the config's rule) or a typed value."""
        while self.thresholds_form.rowCount():
            self.thresholds_form.removeRow(0)
        self._threshold_spins, self._threshold_autos = {}, {}
        for key, value in result.thresholds.items():
            spin = QDoubleSpinBox()
            spin.setRange(-1e12, 1e12)
            spin.setDecimals(4)
            spin.setStepType(QDoubleSpinBox.AdaptiveDecimalStepType)
            spin.setKeyboardTracking(False)
            spin.setValue(float(value) if np.isfinite(value) else 0.0)
            auto = QCheckBox("auto")
            auto.setToolTip("checked: the threshold of the settings' rule; unchecked: typed")
            auto.setChecked(key not in self._overrides)
            spin.valueChanged.connect(lambda v, k=key: self.set_threshold(k, v))
            auto.toggled.connect(
                lambda on, k=key, sp=spin: self.set_threshold(k, None if on else sp.value())
            )
            self._threshold_spins[key] = spin
            self._threshold_autos[key] = auto
            row = QHBoxLayout()
            row.addWidget(auto)
            row.addWidget(spin, 1)
            label = "EV puncta" if key == "exo" else key
            self.thresholds_form.addRow(f"{label}:", self._wrap(row))

    def set_threshold(self, key: str, value: float | None) -> None:
        """Fix the positivity threshold of ``key`` (``"exo"`` or a marker) and re-classify;
        ``None``: back to the settings' rule (auto).

        Uses :func:`napari_exouptake.pipeline.finalize` on the stored per-cell table: no
        segmentation or puncta detection is redone.
        """
        if self._result is None:
            return
        if self.state.stale:
            self._say(f"{STALE_BANNER} first", error=True)
            return
        from ..pipeline import finalize

        if value is None:
            self._overrides.pop(key, None)
        else:
            self._overrides[key] = float(value)
        try:
            cfg = self.current_config()
        except ValueError as exc:  # another control holds a bad value: say which
            self._say(str(exc), error=True)
            return
        [new] = finalize([self._result], cfg, pending_control_ok=True)  # one image: no control
        self._push_settings()
        self.state.set_result(new, cfg)
        from ._layers import cells_features

        self._cells_layer.features = cells_features(new.cells)
        meta = dict(self._cells_layer.metadata)
        meta[META_KEY] = {
            **meta.get(META_KEY, {}),
            "thresholds": dict(new.thresholds),
            "config": cfg.to_dict(),
            "summary": dict(new.summary),
        }
        self._cells_layer.metadata = meta
        for col in [c for c in new.cells.columns if c.endswith("_positive")]:
            self.table.update_column(col, new.cells[col].to_numpy())
        auto = self._threshold_autos.get(key)
        if auto is not None and auto.isChecked() != (value is None):
            auto.blockSignals(True)
            auto.setChecked(value is None)
            auto.blockSignals(False)
        spin = self._threshold_spins.get(key)
        shown = float(new.thresholds.get(key, np.nan))
        if spin is not None and value is None and np.isfinite(shown):
            spin.blockSignals(True)
            spin.setValue(shown)
            spin.blockSignals(False)
        if self.color_combo.currentText().endswith("_positive"):
            self.color_cells_by(self.color_combo.currentText())
        n = len(new.cells)
        col = "exo_positive" if key == "exo" else f"{key}_positive"
        label = "EV puncta" if key == "exo" else key
        how = "auto" if value is None else "typed"
        if n and col in new.cells:
            self._say(
                f"{label} ≥ {shown:g} ({how}): {100 * float(new.cells[col].mean()):.0f}% positive"
            )

    def color_cells_by(self, column: str) -> None:
        """Colour the cells by a per-cell column (``"(none)"``: the labels' own colours), with
        a legend under the dropdown."""
        layer, result = self._cells_layer, self._result
        if layer is None or result is None:
            self.legend.setText("")
            return
        if column in ("", NONE) or column not in result.cells.columns:
            original = layer.metadata.get("_exouptake_colormap")
            if original is not None:
                layer.colormap = original
            self.legend.setText("")
            return
        from napari.utils.colormaps import DirectLabelColormap

        values = result.cells[column].to_numpy()
        colors = value_colors(result.cells["cell_id"].to_numpy(), values)
        layer.colormap = DirectLabelColormap(color_dict=colors)
        layer.contour = 0  # filled: the colour is the reading
        self.legend.setText(_legend_html(column, values))

    def export_tables(self, folder: str | Path) -> list[Path]:
        """Write ``cells``/``spots`` tables (CSV and Parquet) and the ``config.yaml`` that
        produced them to ``folder``.

        Raises
        ------
        ValueError
            Nothing measured yet, or the settings changed since (measure again first).
        """
        from ..config import save_config
        from ..io import write_table

        try:
            result, cfg = self.state.check_export()
        except ValueError as exc:
            self._say(str(exc), error=True)
            raise
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = write_table(result.cells, folder / "cells")
        written += write_table(result.spots, folder / "spots")
        written.append(save_config(cfg, folder / "config.yaml"))
        self._say(f"wrote {', '.join(p.name for p in written)} to {folder}")
        return written

    def save_screenshot(self, path: str | Path, canvas_only: bool = True) -> Path:
        """QC screenshot of the canvas (``viewer.screenshot``) as PNG."""
        path = Path(path)
        self.viewer.screenshot(str(path), canvas_only=canvas_only)
        self._say(f"saved screenshot {path}")
        return path
