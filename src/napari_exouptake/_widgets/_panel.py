"""The dock widget's layout: its collapsible steps, controls and buttons (built once), the
file dialogs, and the marker rows of step 1."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._state import STALE_BANNER
from ._table import CellTable

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger(__name__)


NONE = "(none)"


MODELS = ("demo-cells", "demo-nuclei", "cyto3", "nuclei", "cpsam")


FILE_ITEM = "file…"


DEVICES = ("auto", "cpu", "cuda", "mps")


MODES = ("cells", "nuclei", "expand")


KINDS = ("angiogenesis", "collagen", "other")


class PanelMixin:
    """The controls of :class:`~._main.ExoUptakeWidget` and how they are laid out."""

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.sections: dict[str, Any] = {}
        body = QWidget()
        lay = QVBoxLayout(body)
        scroll.setWidget(body)
        outer.addWidget(scroll)

        # 1. image and channel roles
        g, f = self._section("1  Image and channel roles")
        self.nucleus_combo, self.cell_combo, self.exosome_combo = (
            QComboBox(),
            QComboBox(),
            QComboBox(),
        )
        for combo, role in (
            (self.nucleus_combo, "nucleus"),
            (self.cell_combo, "cell"),
            (self.exosome_combo, "exosome"),
        ):
            combo.setToolTip(
                f"channel with the {role} stain ('index: name' for the channels of one layer)"
            )
        f.addRow("nucleus:", self.nucleus_combo)
        f.addRow("cell:", self.cell_combo)
        f.addRow("EV (exosome):", self.exosome_combo)
        self.exosome_combo.currentIndexChanged.connect(self._schedule_preview)
        self.markers_box = QVBoxLayout()
        f.addRow(QLabel("markers (name, channel, kind):"))
        f.addRow(self._wrap(self.markers_box))
        self.add_marker_btn = QPushButton("+ marker")
        self.add_marker_btn.clicked.connect(lambda: self.add_marker_row())
        f.addRow("", self.add_marker_btn)
        self.pixel_size_spin = QDoubleSpinBox()
        self.pixel_size_spin.setRange(0.0, 1000.0)
        self.pixel_size_spin.setDecimals(4)
        self.pixel_size_spin.setSpecialValueText("from image")
        self.pixel_size_spin.setSuffix(" µm")
        f.addRow("pixel size:", self.pixel_size_spin)
        lay.addWidget(g)

        # 2. segmentation
        g, f = self._section("2  Segmentation (Cellpose)")
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems([*MODELS, FILE_ITEM])
        self.model_combo.activated.connect(self._on_model_activated)
        f.addRow("model:", self.model_combo)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        f.addRow("mode:", self.mode_combo)
        self.expand_label = QLabel("")
        self.expand_label.setWordWrap(True)
        f.addRow(self.expand_label)
        self.mode_combo.currentTextChanged.connect(self._update_expand_note)
        self.pixel_size_spin.valueChanged.connect(self._update_expand_note)
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0.0, 10000.0)
        self.diameter_spin.setDecimals(1)
        self.diameter_spin.setSpecialValueText("auto (Cellpose)")
        self.diameter_spin.setSuffix(" px")
        self.estimate_btn = QPushButton("estimate")
        self.estimate_btn.clicked.connect(self.run_estimate_diameter)
        row = QHBoxLayout()
        row.addWidget(self.diameter_spin, 1)
        row.addWidget(self.estimate_btn)
        f.addRow("diameter:", self._wrap(row))
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.currentTextChanged.connect(self._check_device)
        self.device_label = QLabel("")
        self.device_label.setToolTip("the device segmentation runs on (checked in the background)")
        row = QHBoxLayout()
        row.addWidget(self.device_combo, 1)
        row.addWidget(self.device_label)
        f.addRow("device:", self._wrap(row))
        self.segment_btn = QPushButton("Segment")
        self.segment_btn.clicked.connect(self.run_segmentation)
        f.addRow(self.segment_btn)
        lay.addWidget(g)

        # 3. puncta
        g, f = self._section("3  EV puncta")
        self.radius_spin = QDoubleSpinBox()
        self.radius_spin.setRange(0.0, 50.0)
        self.radius_spin.setSpecialValueText("auto")
        self.radius_spin.setDecimals(2)
        self.radius_spin.setSingleStep(0.1)
        self.radius_spin.setSuffix(" px")
        self.radius_spin.setToolTip(
            "expected punctum radius: sqrt(2) x the PSF's Gaussian sigma; 0 = auto (measured "
            "on the image's own puncta)"
        )
        f.addRow("radius:", self.radius_spin)
        self.threshold_auto = QCheckBox("auto")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1e9)
        self.threshold_spin.setDecimals(3)
        self.threshold_auto.toggled.connect(lambda on: self.threshold_spin.setEnabled(not on))
        row = QHBoxLayout()
        row.addWidget(self.threshold_auto)
        row.addWidget(self.threshold_spin, 1)
        f.addRow("threshold:", self._wrap(row))
        self.preview_check = QCheckBox("preview the EV puncta in view")
        self.preview_check.setToolTip(
            "puncta are detected once on the whole image (the same detection the measurement "
            "uses) and shown in the visible region"
        )
        self.preview_check.toggled.connect(self._on_preview_toggled)
        f.addRow(self.preview_check)
        for w in (self.radius_spin, self.threshold_spin):
            w.valueChanged.connect(self._schedule_preview)
        self.threshold_auto.toggled.connect(self._schedule_preview)
        lay.addWidget(g)

        # 4. measurement
        g, f = self._section("4  Measure cells")
        self.cells_combo, self.nuclei_combo = QComboBox(), QComboBox()
        f.addRow("cell labels:", self.cells_combo)
        f.addRow("nucleus labels:", self.nuclei_combo)
        self.measure_btn = QPushButton("Detect EV puncta and measure")
        self.measure_btn.clicked.connect(self.run_measurement)
        f.addRow(self.measure_btn)
        self.stale_banner = QLabel(STALE_BANNER)
        self.stale_banner.setWordWrap(True)
        self.stale_banner.setStyleSheet(
            "background: #8a6d00; color: white; padding: 3px; font-weight: bold;"
        )
        self.stale_banner.setVisible(False)
        f.addRow(self.stale_banner)
        self.thresholds_form = QFormLayout()
        f.addRow("positive if ≥", self._wrap(self.thresholds_form))
        self.color_combo = QComboBox()
        self.color_combo.addItem(NONE)
        self.color_combo.currentTextChanged.connect(self.color_cells_by)
        f.addRow("colour cells by:", self.color_combo)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.RichText)
        f.addRow(self.legend)
        self.table = CellTable()
        self.table.setMinimumHeight(180)
        self.table.cell_clicked.connect(self.focus_cell)
        f.addRow(self.table)
        lay.addWidget(g)

        # 5. image-level readouts: tube formation and collagen
        g, f = self._section("5  Tube formation and collagen")
        self.tubes_combo, self.collagen_combo = QComboBox(), QComboBox()
        self.tubes_combo.setToolTip(
            "channel of a tube-formation image (calcein/CD31/phase): network analysis"
        )
        self.collagen_combo.setToolTip("collagen channel (Col I IF, SHG): area and fibre analysis")
        f.addRow("tube network:", self.tubes_combo)
        f.addRow("collagen:", self.collagen_combo)
        self.readouts_label = QLabel("run step 4 to measure the enabled readouts")
        self.readouts_label.setWordWrap(True)
        self.readouts_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        f.addRow(self.readouts_label)
        lay.addWidget(g)

        # 6. save and export
        g, grid = self._section("6  Save and export", QGridLayout)
        self.load_cfg_btn = QPushButton("Load config…")
        self.save_cfg_btn = QPushButton("Save config…")
        self.export_btn = QPushButton("Export tables…")
        self.shot_btn = QPushButton("QC screenshot…")
        self.load_cfg_btn.clicked.connect(
            lambda: self._ask_path("load_config", "YAML (*.yaml *.yml)")
        )
        self.save_cfg_btn.clicked.connect(lambda: self._ask_path("save_config", "YAML (*.yaml)"))
        self.export_btn.clicked.connect(lambda: self._ask_path("export_tables", None))
        self.shot_btn.clicked.connect(lambda: self._ask_path("save_screenshot", "PNG (*.png)"))
        for k, b in enumerate(
            (self.load_cfg_btn, self.save_cfg_btn, self.export_btn, self.shot_btn)
        ):
            grid.addWidget(b, k // 2, k % 2)
        lay.addWidget(g)

        # 7. folder batch
        g, f = self._section("7  Run on folder")
        self.batch_in = QLineEdit()
        self.batch_in.setPlaceholderText("folder of images")
        self.batch_out = QLineEdit()
        self.batch_out.setPlaceholderText("output folder")
        self.batch_labels = QLineEdit()
        self.batch_labels.setPlaceholderText("optional: folder of <image>_cells.tif")
        for le, what in (
            (self.batch_in, "input"),
            (self.batch_out, "output"),
            (self.batch_labels, "labels"),
        ):
            b = QPushButton("…")
            b.setMaximumWidth(30)
            b.clicked.connect(lambda _=False, le=le: self._ask_dir(le))
            row = QHBoxLayout()
            row.addWidget(le, 1)
            row.addWidget(b)
            f.addRow(f"{what}:", self._wrap(row))
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 64)
        f.addRow("workers:", self.workers_spin)
        self.batch_btn = QPushButton("Run on folder")
        self.batch_btn.clicked.connect(self.run_batch)
        f.addRow(self.batch_btn)
        lay.addWidget(g)
        lay.addStretch(1)

        # progress, status, cancel
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_btn)
        outer.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        for combo in self.findChildren(QComboBox):
            self._compact(combo)
        # the dock must be at least as wide as the steps (no horizontal scrolling)
        self._body, self._scroll = body, scroll
        self._fit_width()
        self._run_buttons = [
            self.segment_btn,
            self.estimate_btn,
            self.measure_btn,
            self.batch_btn,
            self.load_cfg_btn,
        ]
        self.set_config(self._base)

    def _section(self, title: str, layout_cls: Any = QFormLayout) -> tuple[Any, Any]:
        """A collapsible step of the workflow and its layout (expanded)."""
        from superqt import QCollapsible

        box = QCollapsible(title)
        box.setDuration(0)
        content = QWidget()
        layout = layout_cls(content)
        layout.setContentsMargins(4, 0, 4, 4)
        box.addWidget(content)
        box.expand(animate=False)
        self.sections[title.split()[0]] = box
        return box, layout

    def _fit_width(self) -> None:
        """The dock is at least as wide as the steps (no horizontal scrolling)."""
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        self.setMinimumWidth(max(self._body.minimumSizeHint().width() + bar + 8, 380))

    @staticmethod
    def _compact(combo: QComboBox) -> None:
        """Let long layer names not widen the dock."""
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)

    @staticmethod
    def _wrap(layout: Any) -> QWidget:
        w = QWidget()
        layout.setContentsMargins(0, 0, 0, 0)
        w.setLayout(layout)
        return w

    def _ask_path(self, method: str, filt: str | None) -> None:
        if method == "export_tables":
            path = QFileDialog.getExistingDirectory(self, "Export tables to folder")
        elif method == "load_config":
            path, _ = QFileDialog.getOpenFileName(self, "Load assay config", "", filt or "")
        else:
            path, _ = QFileDialog.getSaveFileName(self, method.replace("_", " "), "", filt or "")
        if path:
            getattr(self, method)(path)

    def _ask_dir(self, line: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose folder")
        if path:
            line.setText(path)

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) != FILE_ITEM:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Cellpose model file")
        self.model_combo.setCurrentText(path or MODELS[0])

    def add_marker_row(
        self,
        name: str = "",
        channel: str | None = None,
        kind: str = "other",
        positivity: Any = None,
    ) -> None:
        """Add a marker (name, channel, kind) to section 1."""
        row = QHBoxLayout()
        name_edit = QLineEdit(name)
        name_edit.setMaximumWidth(90)
        name_edit.setPlaceholderText("name, e.g. cd31")
        combo = QComboBox()
        self._fill_combo(combo, [s.label for s in self._sources])
        if channel is not None:
            combo.setCurrentText(channel)
        kind_combo = QComboBox()
        kind_combo.addItems(KINDS)
        self._compact(combo)
        self._compact(kind_combo)
        kind_combo.setCurrentText(kind)
        remove = QPushButton("×")
        remove.setMaximumWidth(24)
        for w in (name_edit, combo, kind_combo, remove):
            row.addWidget(w)
        holder = self._wrap(row)
        entry = {
            "name": name_edit,
            "channel": combo,
            "kind": kind_combo,
            "widget": holder,
            "positivity": positivity,
        }
        remove.clicked.connect(lambda: self._remove_marker_row(entry))
        name_edit.textChanged.connect(self._push_settings)
        combo.currentTextChanged.connect(self._push_settings)
        kind_combo.currentTextChanged.connect(self._push_settings)
        self._marker_rows.append(entry)
        self.markers_box.addWidget(holder)
        QTimer.singleShot(0, self._fit_width)  # once the new row's size is known

    def _remove_marker_row(self, entry: dict) -> None:
        self._marker_rows.remove(entry)
        entry["widget"].setParent(None)
        entry["widget"].deleteLater()
        if hasattr(self, "state"):
            self._push_settings()
