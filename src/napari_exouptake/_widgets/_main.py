"""The exosome-uptake dock widget: channels -> segmentation -> puncta -> measurement -> export.

The widget only gathers parameters into an :class:`~napari_exouptake.config.AssayConfig`, runs
the core (``segmentation.segment``, ``spots.detect_spots``, ``pipeline.analyze_image``,
``pipeline.finalize``, ``batch.analyze_batch``) in a worker thread (see :mod:`._workers`), and
turns results into layers tied, through ``layer.metadata["exouptake"]``, to the layers they
were computed from.

This module holds the widget itself: its state, settings and config. Its other rooms are
mixins, one purpose each: :mod:`._panel` (layout), :mod:`._channels` (channel roles from the
layers), :mod:`._jobs` (the work and the worker jobs), :mod:`._results` (result layers, table,
thresholds, export) and :mod:`._preview` (the puncta preview).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QWidget

from ._channels import ChannelsMixin
from ._jobs import JobsMixin
from ._layers import ChannelSource
from ._panel import DEVICES, MODELS, NONE, PanelMixin
from ._preview import PreviewMixin
from ._results import ResultsMixin
from ._state import WidgetState
from ._workers import Job

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..config import AssayConfig
    from ..pipeline import AnalysisResult

__all__ = ["ExoUptakeWidget"]

log = logging.getLogger(__name__)


class ExoUptakeWidget(PanelMixin, ChannelsMixin, JobsMixin, ResultsMixin, PreviewMixin, QWidget):
    """Dock widget that walks through the exosome-uptake assay.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.

    Notes
    -----
    Every button that starts work has a method of the same meaning that tests and scripts can
    call directly (``run_segmentation``, ``run_measurement``, ``save_config`` ...).
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from ..config import AssayConfig

        self.viewer = napari_viewer
        # napari >= 0.9 moved the camera to viewer.scene.camera
        scene = getattr(napari_viewer, "scene", None)
        self._camera = scene.camera if scene is not None else napari_viewer.camera
        self._base = AssayConfig()
        self.state = WidgetState()
        self._job: Job | None = None
        self._preview_job: Job | None = None
        self._device_job: Job | None = None
        self._preview_pending = False
        self._sources: list[ChannelSource] = []
        self._cells_layer: Any = None
        self._points_layer: Any = None
        self._overrides: dict[str, float] = {}
        self._threshold_spins: dict[str, QDoubleSpinBox] = {}
        self._threshold_autos: dict[str, QCheckBox] = {}
        self._detection_info: dict | None = None
        self._result_status = ""
        self._marker_rows: list[dict[str, Any]] = []
        self._linking = False
        self._loading = False
        self.preview_counts: tuple[int, int] | None = None
        self._build()
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(300)
        self._preview_timer.timeout.connect(self.update_preview)
        self.viewer.layers.events.inserted.connect(self._refresh_sources)
        self.viewer.layers.events.removed.connect(self._refresh_sources)
        self.viewer.layers.events.moved.connect(self._refresh_sources)
        self._camera.events.center.connect(self._schedule_preview)
        self._camera.events.zoom.connect(self._schedule_preview)
        self._refresh_sources()
        self._guess_roles()
        self.state.stale_changed.connect(self._on_stale)
        self._connect_settings()
        self._push_settings()

    @property
    def _result(self) -> AnalysisResult | None:
        return self.state.result

    @property
    def _result_config(self) -> AssayConfig | None:
        return self.state.result_config

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #e05555;" if error else "")
        (log.warning if error else log.info)("%s", text)

    def _connect_settings(self) -> None:
        """Every control that enters the config tells the state model when it changes."""
        skip = {self.color_combo} | {
            w for r in self._marker_rows for w in (r["channel"], r["kind"])
        }
        for combo in self._body.findChildren(QComboBox):
            if combo not in skip:
                combo.currentTextChanged.connect(self._push_settings)
        for spin in (self.pixel_size_spin, self.diameter_spin, self.radius_spin):
            spin.valueChanged.connect(self._push_settings)
        self.threshold_spin.valueChanged.connect(self._push_settings)
        self.threshold_auto.toggled.connect(self._push_settings)

    def _push_settings(self, *args: Any) -> None:
        """Hand the settings the controls describe to the state (marks results stale)."""
        from ..config import ConfigError

        try:
            cfg = self.current_config()
        except (ConfigError, ValueError):
            cfg = None
        self.state.set_settings(
            cfg,
            cells_layer=self.cells_combo.currentText(),
            nuclei_layer=self.nuclei_combo.currentText(),
        )

    def _on_stale(self, stale: bool, keys: str) -> None:
        """Grey the results and show the banner while they no longer match the settings."""
        self.stale_banner.setVisible(stale)
        self.stale_banner.setToolTip(f"changed: {keys}" if stale else "")
        self.table.setEnabled(not stale)
        self.table.setStyleSheet("QTableWidget { color: #888888; }" if stale else "")
        for spin in self._threshold_spins.values():
            spin.setEnabled(not stale)
        if stale and any(k.startswith("channels.") for k in keys.split(", ")) and self._overrides:
            # a typed positivity threshold belongs to the channels it was typed for
            self._overrides.clear()
            self._say("roles changed: positivity thresholds are back to auto", error=False)
        if self._cells_layer is not None:
            self._cells_layer.opacity = 0.25 if stale else 0.8

    def _update_expand_note(self, *args: Any) -> None:
        """Mode expand: say how far cells grow, in µm or, with no pixel size, in pixels."""
        if self.mode_combo.currentText() != "expand":
            self.expand_label.setText("")
            return
        grow = self._base.segmentation.expand_um
        px = self.pixel_size_spin.value() or self._image_pixel_size()
        if px:
            self.expand_label.setText(f"cells grow {grow:g} µm ({grow / px:.1f} px) from nuclei")
            self.expand_label.setStyleSheet("")
        else:
            self.expand_label.setText(
                f"no pixel size: cells grow {grow:g} pixels, not µm. Set the pixel size above "
                "to grow them in µm."
            )
            self.expand_label.setStyleSheet("color: #e0a030;")

    def set_config(self, config: AssayConfig) -> None:
        """Show ``config`` in the controls (the widget keeps it as the base for hidden keys)."""
        self._base = config
        self._overrides.clear()
        ch = config.channels
        for combo, ref in (
            (self.nucleus_combo, ch.nucleus),
            (self.cell_combo, ch.cell),
            (self.exosome_combo, ch.exosome),
            (self.tubes_combo, config.tubes.channel if config.tubes else None),
            (self.collagen_combo, config.collagen.channel if config.collagen else None),
        ):
            s = self._find_source(ref)
            combo.setCurrentText(s.label if s is not None else NONE)
        for entry in list(self._marker_rows):
            self._remove_marker_row(entry)
        for name, m in ch.markers.items():
            s = self._find_source(m.channel)
            self.add_marker_row(name, s.label if s else NONE, m.kind, m.positivity)
        self.pixel_size_spin.setValue(config.pixel_size_um or 0.0)
        sc = config.segmentation
        self.model_combo.setCurrentText(sc.model)
        self.mode_combo.setCurrentText(sc.mode)
        self.diameter_spin.setValue(sc.diameter_px or 0.0)
        self.device_combo.setCurrentText(sc.device if sc.device in DEVICES else "auto")
        sp = config.spots
        self.radius_spin.setValue(0.0 if sp.radius_px == "auto" else sp.radius_px)
        auto = sp.threshold == "auto"
        self.threshold_auto.setChecked(auto)
        self.threshold_spin.setEnabled(not auto)
        if not auto:
            self.threshold_spin.setValue(float(sp.threshold))

    def current_config(self) -> AssayConfig:
        """The assay config the controls describe (the YAML ``exouptake analyze`` reads).

        Raises
        ------
        ConfigError
            When a control holds an invalid value (the message names the key).
        """
        from ..config import ConfigError

        def ref(combo: QComboBox) -> str | None:
            s = self._source(combo.currentText())
            return None if s is None else s.name

        markers: dict[str, Any] = {}
        for entry in self._marker_rows:
            name = entry["name"].text().strip()
            src = ref(entry["channel"])
            if not name and src is None:
                continue
            if not name or src is None:
                raise ConfigError(f"marker row {name or '(unnamed)'!r}: give a name and a channel")
            m: dict[str, Any] = {"channel": src, "kind": entry["kind"].currentText()}
            rule = entry["positivity"]
            if name in self._overrides:
                base_rule = rule or self._base.positivity.markers
                rule = base_rule.model_copy(
                    update={"method": "fixed", "value": self._overrides[name]}
                )
            if rule is not None:
                m["positivity"] = rule.model_dump(mode="json")
            markers[name] = m
        channels = {
            "nucleus": ref(self.nucleus_combo),
            "cell": ref(self.cell_combo),
            "exosome": ref(self.exosome_combo),
            "markers": markers,
        }
        seg = {
            "model": self.model_combo.currentText().strip() or MODELS[0],
            "mode": self.mode_combo.currentText(),
            "diameter_px": self.diameter_spin.value() or None,
            "device": self.device_combo.currentText(),
        }
        spots = {
            "radius_px": self.radius_spin.value() or "auto",
            "threshold": "auto" if self.threshold_auto.isChecked() else self.threshold_spin.value(),
        }
        positivity = self._base.positivity.model_dump(mode="json")
        if "exo" in self._overrides:
            positivity["exosome"] = {
                **positivity["exosome"],
                "method": "fixed",
                "value": self._overrides["exo"],
            }
        data = self._base.to_dict()
        for key, combo in (("tubes", self.tubes_combo), ("collagen", self.collagen_combo)):
            src = ref(combo)
            # keep the section's other settings (from a loaded config) when only the channel moves
            data[key] = None if src is None else {**(data.get(key) or {}), "channel": src}
        data.update(
            channels=channels,
            segmentation={**data["segmentation"], **seg},
            spots={**data["spots"], **spots},
            positivity=positivity,
            pixel_size_um=self.pixel_size_spin.value() or None,
        )
        from ..config import AssayConfig

        return AssayConfig.from_dict(data)

    def load_config(self, path: str | Path) -> AssayConfig:
        """Load an assay YAML into the controls."""
        from ..config import ConfigError, load_config

        try:
            cfg = load_config(path)
        except ConfigError as exc:
            self._say(str(exc), error=True)
            raise
        self.set_config(cfg)
        self._say(f"loaded {path}")
        return cfg

    def save_config(self, path: str | Path) -> Path:
        """Save the current settings as the YAML ``exouptake analyze --config`` reads."""
        from ..config import save_config

        out = save_config(self.current_config(), path)
        self._say(f"saved config to {out}")
        return out

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        if self._job is not None:
            self._job.cancel()
        super().closeEvent(event)
