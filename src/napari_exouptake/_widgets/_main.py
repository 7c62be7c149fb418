"""The exosome-uptake dock widget: channels -> segmentation -> puncta -> measurement -> export.

The widget only gathers parameters into an :class:`~napari_exouptake.config.AssayConfig`, runs
the core (``segmentation.segment``, ``spots.detect_spots``, ``pipeline.analyze_image``,
``pipeline.finalize``, ``batch.analyze_batch``) in a worker thread (see :mod:`._workers`), and
turns results into layers tied, through ``layer.metadata["exouptake"]``, to the layers they
were computed from.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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

from ..config import DEFAULT_RADIUS_PX
from ._layers import (
    META_KEY,
    ChannelSource,
    image_from_sources,
    labels_layer_data,
    points_layer_data,
    value_colors,
)
from ._state import STALE_BANNER, WidgetState
from ._table import CellTable
from ._workers import Job, start_job

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..config import AssayConfig, SpotsConfig
    from ..pipeline import AnalysisResult
    from ..progress import Cancel, Progress

__all__ = ["ExoUptakeWidget"]

log = logging.getLogger(__name__)

NONE = "(none)"
MODELS = ("demo-cells", "demo-nuclei", "cyto3", "nuclei", "cpsam")
FILE_ITEM = "file…"
DEVICES = ("auto", "cpu", "cuda", "mps")
MODES = ("cells", "nuclei", "expand")
KINDS = ("angiogenesis", "collagen", "other")
#: channel-name patterns used to pre-fill the role dropdowns (case-insensitive)
ROLE_GUESSES = {
    "nucleus": r"dapi|hoechst|h33342|nuc|draq5|sytox|\bdna\b",
    "cell": r"cellmask|membrane|phalloidin|actin|cyto|wga|bright|tubulin",
    "exosome": r"pkh|\bdi[idor]\b|exo|\bevs?\b|cd63|\bcd9\b|cd81|gfp|mkate|tdtomato",
}
#: marker channels guessed from their names: pattern -> (marker name, kind)
MARKER_GUESSES = {
    r"cd31|pecam": ("cd31", "angiogenesis"),
    r"cd144|ve-?cad": ("vecad", "angiogenesis"),
    r"vwf": ("vwf", "angiogenesis"),
    r"col1|col-?i\b|collagen": ("col1", "collagen"),
}
#: per-cell columns shown first in the table, with the words used for them
KEY_COLUMNS = {
    "cell_id": "cell",
    "exo_spot_count": "EV puncta",
    "exo_positive": "EV-positive",
    "exo_spot_estimate": "EVs (estimate)",
}


# -- core calls run in the worker thread (plain functions, no Qt) -------------------------------


#: one worker at a time imports torch: two threads importing it at once deadlock (the device
#: check and a segmentation started right after a device change did)
_TORCH_IMPORT = threading.Lock()


def _resolve_device(spec: str) -> str:
    from ..segmentation import resolve_device

    with _TORCH_IMPORT:
        return resolve_device(spec)


def _job_segment(image: Any, config: AssayConfig, *, progress: Progress, cancel: Cancel) -> Any:
    from ..segmentation import segment

    progress(0.0, f"loading the model {config.segmentation.model}…")
    device = _resolve_device(config.segmentation.device)
    progress(0.0, f"loading the model {config.segmentation.model} on {device}…")
    return segment(image, config, progress=progress, cancel=cancel)


def _job_estimate(image: Any, config: AssayConfig, *, progress: Progress, cancel: Cancel) -> float:
    from ..segmentation import estimate_diameter

    progress(0.0, "loading the model…")
    _resolve_device(config.segmentation.device)
    progress(0.0, "estimating the diameter")
    return estimate_diameter(image, config)


def _job_device(spec: str, *, progress: Progress, cancel: Cancel) -> str:
    return _resolve_device(spec)


def detect_channel(data: Any, spots_cfg: SpotsConfig) -> tuple[Any, dict]:
    """The one puncta detection of an exosome channel, shared by the preview and the
    measurement: ``detect_spots_from_config`` on the whole channel as ``analyze_image`` runs it
    (float32, ``(Z, Y, X)``), plus the saturated-pixel count of the raw channel."""
    from ..spots import detect_spots_from_config
    from ._state import saturation

    raw = np.asarray(data)
    arr = np.asarray(raw, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if not np.isfinite(arr).all():
        raise ValueError("the EV channel contains NaN or infinite values; fix or crop the image")
    n_sat, level = saturation(raw)
    df = detect_spots_from_config(arr, spots_cfg)
    return df, {"n_saturated": n_sat, "saturation_level": level}


def _job_detect(
    data: Any, spots_cfg: SpotsConfig, *, progress: Progress, cancel: Cancel
) -> tuple[Any, dict]:
    progress(0.0, "detecting EV puncta on the whole image (once per image and settings)…")
    return detect_channel(data, spots_cfg)


def _job_analyze(
    image: Any,
    config: AssayConfig,
    labels: Any,
    nuclei: Any,
    name: str,
    detection: tuple[Any, dict] | None,
    exo_data: Any,
    *,
    progress: Progress,
    cancel: Cancel,
) -> tuple[AnalysisResult, tuple[Any, dict]]:
    from ..pipeline import analyze_image

    if detection is None:  # not previewed with these settings: the same detection, now
        progress(0.05, "detecting EV puncta")
        detection = detect_channel(exo_data, config.spots)
    result = analyze_image(
        image,
        config,
        labels,
        nuclei=nuclei,
        name=name,
        progress=progress,
        cancel=cancel,
        spots_table=detection[0],
    )
    return result, detection


def puncta_in_region(spots: Any, region: tuple[slice, ...], z: int | None = None) -> np.ndarray:
    """Bool mask of the puncta (rows of a spots table, pixel coordinates) inside ``region``
    (``(Y, X)`` slices: ``start <= round(coordinate) < stop``), on plane ``z`` when given."""
    keep = np.ones(len(spots), dtype=bool)
    for axis, sl in zip(("y", "x"), region[-2:], strict=True):
        v = np.round(spots[axis].to_numpy(dtype=float))
        keep &= (v >= sl.start) & (v < sl.stop)
    if z is not None and "z" in spots.columns:
        keep &= np.round(spots["z"].to_numpy(dtype=float)) == z
    return keep


def _job_batch(
    inputs: list[str],
    config: AssayConfig,
    out: str,
    workers: int,
    labels: str | None,
    *,
    progress: Progress,
    cancel: Cancel,
) -> int:
    from ..batch import analyze_batch

    progress(0.0, f"analysing {', '.join(inputs)}")
    res = analyze_batch(
        inputs,
        config,
        out,
        workers=workers,
        labels=labels or None,
        progress=progress,
        cancel=cancel,
    )
    return res.exit_code


def _layer_source(layer: Any) -> str | None:
    """File a layer was read from (``metadata["source"]`` or napari's ``layer.source.path``)."""
    src = layer.metadata.get("source") or getattr(layer.source, "path", None)
    return str(src) if src else None


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


def _is_multichannel(layer: Any) -> bool:
    """A ``(C, Y, X)`` / ``(C, Z, Y, X)`` image layer (named channels, or at most 8 planes)."""
    names = layer.metadata.get("channel_names")
    return layer.ndim >= 3 and (names is not None or layer.data.shape[0] <= 8)


def _channel_names(layer: Any) -> list[str]:
    """Channel names of a multichannel layer: ``metadata["channel_names"]``, else those of the
    file it was opened from (OME/ImageJ, read once and kept in the metadata), else ``C0``,
    ``C1`` ... as ``exouptake analyze`` names them."""
    n = int(layer.data.shape[0])
    names = layer.metadata.get("channel_names")
    if names is None and not layer.metadata.get("_exouptake_names_read"):
        layer.metadata = {**layer.metadata, "_exouptake_names_read": True}  # read once
        src = _layer_source(layer)
        if src and Path(src).is_file():
            try:
                from ..io import read_image

                img = read_image(src, lazy=True)
                if img.n_channels == n:
                    names = list(img.channel_names)
            except Exception as exc:  # unreadable by our reader: default names
                log.info("channel names of %s not read: %s", src, exc)
        if names is not None:
            layer.metadata = {**layer.metadata, "channel_names": list(names)}
    names = list(names or [])
    return [str(names[i]) if i < len(names) else f"C{i}" for i in range(n)]


def key_spots(key: tuple) -> SpotsConfig:
    """The ``SpotsConfig`` of a detection cache key."""
    from ..config import SpotsConfig

    return SpotsConfig.model_validate_json(key[-1])


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


# -- the widget ----------------------------------------------------------------------------------


class ExoUptakeWidget(QWidget):
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

    # -- results, as the state holds them ----------------------------------------------------
    @property
    def _result(self) -> AnalysisResult | None:
        return self.state.result

    @property
    def _result_config(self) -> AssayConfig | None:
        return self.state.result_config

    # ---------------------------------------------------------------------------------- UI --
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

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #e05555;" if error else "")
        (log.warning if error else log.info)("%s", text)

    # ------------------------------------------------------------------------------ state --
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

    def _image_pixel_size(self) -> float | None:
        ref = self._ref_source()
        if ref is None or ref.layer_name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[ref.layer_name]
        px = layer.metadata.get("pixel_size_um")
        if px is None and not np.isclose(layer.scale[-1], 1.0):
            px = float(layer.scale[-1])
        return px

    # -------------------------------------------------------------------- channel sources --
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [
            ly
            for ly in self.viewer.layers
            if isinstance(ly, Image) and not ly.rgb and META_KEY not in ly.metadata
        ]

    def _refresh_sources(self, event: Any = None) -> None:
        """Rebuild the channel and labels dropdowns from the viewer's layers."""
        from napari.layers import Labels

        sources: list[ChannelSource] = []
        layers = self._image_layers()
        multi_layers = [ly for ly in layers if _is_multichannel(ly)]
        for ly in layers:
            if ly not in multi_layers:  # a multichannel layer is offered channel by channel
                sources.append(ChannelSource(ly.name, ly.name, ly.name, None))
            else:
                names = _channel_names(ly)
                for i, cname in enumerate(names):
                    label = f"{i}: {cname}"
                    if len(multi_layers) > 1:
                        label += f" · {ly.name}"
                    sources.append(ChannelSource(label, cname, ly.name, i))
        self._sources = sources
        combos = [
            self.nucleus_combo,
            self.cell_combo,
            self.exosome_combo,
            self.tubes_combo,
            self.collagen_combo,
        ] + [r["channel"] for r in self._marker_rows]
        for combo in combos:
            self._fill_combo(combo, [s.label for s in sources])
        labels = [ly.name for ly in self.viewer.layers if isinstance(ly, Labels)]
        self._fill_combo(self.cells_combo, labels, none=False)
        self._fill_combo(self.nuclei_combo, labels)

    @staticmethod
    def _fill_combo(combo: QComboBox, items: list[str], none: bool = True) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        if none:
            combo.addItem(NONE)
        combo.addItems(items)
        if current in items or (none and current == NONE):
            combo.setCurrentText(current)
        combo.blockSignals(False)

    def _guess_roles(self) -> None:
        """Pre-fill the roles from channel names (DAPI, Hoechst, CellMask, PKH26, CD31 ...)."""
        candidates = self._channel_candidates()
        taken = set()
        for role, combo in (
            ("nucleus", self.nucleus_combo),
            ("cell", self.cell_combo),
            ("exosome", self.exosome_combo),
        ):
            if combo.currentText() != NONE:
                taken.add(combo.currentText())
                continue
            for s in candidates:
                if s.label not in taken and re.search(ROLE_GUESSES[role], s.name, re.IGNORECASE):
                    combo.setCurrentText(s.label)
                    taken.add(s.label)
                    break
        if self._marker_rows:
            return
        for s in candidates:
            if s.label in taken:
                continue
            for pattern, (name, kind) in MARKER_GUESSES.items():
                if re.search(pattern, s.name, re.IGNORECASE):
                    self.add_marker_row(name, s.label, kind)
                    taken.add(s.label)
                    break

    def _ref_source(self) -> ChannelSource | None:
        """The channel that picks the image: the EV channel, else the cell or nucleus one
        (segmentation needs no EV channel)."""
        for combo in (self.exosome_combo, self.cell_combo, self.nucleus_combo):
            s = self._source(combo.currentText())
            if s is not None:
                return s
        return None

    def _source(self, label: str) -> ChannelSource | None:
        for s in self._sources:
            if s.label == label:
                return s
        return None

    def _find_source(self, ref: int | str | None) -> ChannelSource | None:
        """Source for a config channel reference: a name, or an index into the channels."""
        if ref is None:
            return None
        plain = self._channel_candidates()
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            i = int(ref)
            return plain[i] if i < len(plain) else None
        for s in self._sources:
            if s.name.casefold() == str(ref).casefold() or s.label == ref:
                return s
        return None

    def _channel_candidates(self) -> list[ChannelSource]:
        """Channels in image order: the channels of a multichannel layer, else plain layers."""
        multi = [s for s in self._sources if s.index is not None]
        if multi:
            first = multi[0].layer_name
            return [s for s in multi if s.layer_name == first]
        return [s for s in self._sources if s.index is None]

    def _source_array(self, s: ChannelSource) -> np.ndarray:
        data = np.asarray(self.viewer.layers[s.layer_name].data)
        return data if s.index is None else data[s.index]

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

    # ----------------------------------------------------------------------------- config --
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

    # ---------------------------------------------------------------------------- image --
    def current_image(self) -> tuple[Any, Any]:
        """The image the roles point at, as ``(ImageData, exosome layer)``.

        The channels of the exosome layer's image go in, in layer order, named after their
        layers, so the config's channel names and indices resolve as on the file: for a
        multichannel layer its channels; else every layer of the same shape from the same file
        (all same-shape layers when the file is unknown), plus the layers the roles name.
        """
        exo = self._ref_source()
        if exo is None:
            raise ValueError("pick the channel roles in section 1 first")
        ref_layer = self.viewer.layers[exo.layer_name]
        src = _layer_source(ref_layer)
        if exo.index is not None:
            chosen = [
                s for s in self._sources if s.layer_name == exo.layer_name and s.index is not None
            ]
        else:
            shape = np.shape(ref_layer.data)
            roles = {
                c.currentText()
                for c in [self.nucleus_combo, self.cell_combo, self.exosome_combo]
                + [r["channel"] for r in self._marker_rows]
            }
            chosen = []
            for s in self._sources:
                layer = self.viewer.layers[s.layer_name]
                if s.index is not None or np.shape(layer.data) != shape:
                    continue
                if s.label in roles or src is None or _layer_source(layer) == src:
                    chosen.append(s)
        px = ref_layer.metadata.get("pixel_size_um")
        if px is None and not np.isclose(ref_layer.scale[-1], 1.0):
            px = float(ref_layer.scale[-1])
        image = image_from_sources(
            [self._source_array(s) for s in chosen],
            [s.name for s in chosen],
            pixel_size_um=px,
            source=src,
        )
        return image, ref_layer

    def _geometry(self, layer: Any) -> dict[str, Any]:
        """Spatial ndim, scale and translate of the image layer results are drawn over."""
        ref = self._ref_source()
        multichannel = ref is not None and ref.layer_name == layer.name and ref.index is not None
        n = layer.ndim - (1 if multichannel else 0)
        n = 3 if n >= 3 else 2
        return {
            "ndim": n,
            "scale": tuple(layer.scale[-n:]),
            "translate": tuple(layer.translate[-n:]),
        }

    # ----------------------------------------------------------------------------- jobs --
    @property
    def busy(self) -> bool:
        """True while a segmentation, measurement, estimate or batch job runs."""
        return self._job is not None

    def _start(self, what: str, fn: Any, *args: Any, on_done: Any, **kwargs: Any) -> Job | None:
        if self._job is not None:
            self._say("another job is running: wait or press Cancel", error=True)
            return None
        for b in self._run_buttons:
            b.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setVisible(True)
        self.progress.setValue(0)
        self._say(f"{what}…")

        def returned(value: Any) -> None:
            try:
                on_done(value)
            except Exception as exc:  # a bad result must not leave the widget locked
                self._say(f"{what} failed: {exc}", error=True)

        def errored(exc: BaseException) -> None:
            job = self._job
            if job is not None and job.cancelled:
                self._say(f"{what} cancelled")
            else:
                self._say(f"{what} failed: {exc}", error=True)

        try:
            self._job = start_job(
                fn,
                *args,
                on_progress=self._on_progress,
                on_returned=returned,
                on_errored=errored,
                on_finished=self._finished,
                **kwargs,
            )
        except Exception:
            self._finished()
            raise
        return self._job

    def _on_progress(self, fraction: float, message: str) -> None:
        if fraction > 0 and self.progress.maximum() == 0:
            self.progress.setRange(0, 100)  # leave the busy indicator once numbers arrive
        self.progress.setValue(int(round(100 * fraction)))
        if message:
            self.status.setText(_plain_words(message))

    def _finished(self) -> None:
        self._job = None
        for b in self._run_buttons:
            b.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setVisible(False)
        self.progress.setRange(0, 100)

    def cancel(self) -> None:
        """Ask the running job to stop at its next check point."""
        if self._job is not None:
            self._job.cancel()
            self._say("cancelling…")

    def _prepare(self, task: str) -> tuple[Any, Any, AssayConfig] | None:
        from ..config import ConfigError

        try:
            cfg = self.current_config()
            image, layer = self.current_image()
            cfg.check_roles(task)  # type: ignore[arg-type]
            cfg.channels.resolve(image.channel_names)
        except (ConfigError, ValueError) as exc:
            self._say(str(exc), error=True)
            return None
        return image, layer, cfg

    def _load_torch(self) -> bool:
        """Import torch and Cellpose on the Qt thread, once, before a worker needs them:
        imported from a worker thread, torch has hung on its import lock (seen on the real
        Cell Painting crop). The viewer pauses for the few seconds of this first import."""
        import sys

        if "torch" in sys.modules and "cellpose" in sys.modules:
            return True
        self._say("loading torch and Cellpose (first use: a few seconds)…")
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        try:
            import cellpose  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            self._say(
                f"segmentation needs Cellpose and torch ({exc}): "
                "pip install 'napari-exouptake[cellpose]'",
                error=True,
            )
            return False
        return True

    def _check_device(self, spec: str) -> None:
        """Show which device ``spec`` resolves to (torch imported here first, see
        :meth:`_load_torch`; the check itself runs in a worker)."""
        if not self._load_torch():
            self.device_label.setText("unavailable: Cellpose is not installed")
            return
        self.device_label.setText("…")

        def finished() -> None:
            self._device_job = None

        self._device_job = start_job(
            _job_device,
            spec,
            on_returned=lambda d: self.device_label.setText(f"uses {d}"),
            on_errored=lambda e: self.device_label.setText(f"unavailable: {e}"),
            on_finished=finished,
        )

    @property
    def idle(self) -> bool:
        """True when no job of this widget (main, preview or device check) is running."""
        return self._job is None and self._preview_job is None and self._device_job is None

    def run_estimate_diameter(self) -> Job | None:
        """Estimate the cell diameter with the model on a central crop (worker thread)."""
        prep = self._prepare("segment")
        if prep is None:
            return None
        image, _, cfg = prep

        def done(d: float) -> None:
            if np.isfinite(d):
                self.diameter_spin.setValue(d)
                self._say(f"estimated diameter {d:.1f} px")
            else:
                self._say("no objects found: the diameter could not be estimated", error=True)

        if not self._load_torch():
            return None
        return self._start("estimating diameter", _job_estimate, image, cfg, on_done=done)

    def run_segmentation(self) -> Job | None:
        """Segment the current image (worker thread); adds ``<image> cells`` Labels layers."""
        prep = self._prepare("segment")
        if prep is None:
            return None
        image, layer, cfg = prep
        source_names = list(image.channel_names)

        def done(seg: Any) -> None:
            geo = self._geometry(layer)
            meta = {
                META_KEY: {
                    "kind": "cells",
                    "image": image.name,
                    "computed_from": source_names,
                    "image_layer": layer.name,
                    "config": cfg.to_dict(),
                    "device": seg.device,
                    "model": seg.model_id,
                }
            }

            def put(data: np.ndarray, kind: str, metadata: dict, **kwargs: Any) -> Any:
                return self._put_layer(
                    labels_layer_data(
                        data,
                        None,
                        name=f"{image.name} {kind}",
                        ndim=geo["ndim"],
                        scale=geo["scale"],
                        translate=geo["translate"],
                        metadata=metadata,
                        **kwargs,
                    )
                )

            cells = put(seg.cells, "cells", meta, opacity=0.8)
            cells.contour = 1  # outlines: the stains stay visible
            if seg.nuclei is not None:
                nmeta = {META_KEY: {**meta[META_KEY], "kind": "nuclei"}}
                nuc = put(seg.nuclei, "nuclei", nmeta, opacity=0.6)
                nuc.contour = 1
                nuc.visible = False
                self.nuclei_combo.setCurrentText(nuc.name)
            self.cells_combo.setCurrentText(cells.name)
            self.viewer.layers.selection.active = cells
            self.device_label.setText(f"used {seg.device}")
            note = ""
            if cfg.segmentation.mode == "expand" and not (cfg.pixel_size_um or image.pixel_size_um):
                note = f"; no pixel size: grown {cfg.segmentation.expand_um:g} px from nuclei"
            self._say(f"{seg.n_cells} cells, model {seg.model_id} on {seg.device}{note}")

        if not self._load_torch():
            return None
        job = self._start("segmenting", _job_segment, image, cfg, on_done=done)
        if job is not None:
            self.progress.setRange(0, 0)  # busy while the model loads, before the first tile
            self._say(f"loading the model {cfg.segmentation.model}…")
        return job

    def run_measurement(self) -> Job | None:
        """Detect puncta and measure every cell of the chosen labels (worker thread).

        The labels layer gets the per-cell table as ``features``; a ``<image> puncta`` Points
        layer gets the per-punctum table.
        """
        prep = self._prepare("quantify")
        if prep is None:
            return None
        image, layer, cfg = prep
        from napari.layers import Labels

        cells_name = self.cells_combo.currentText()
        if cells_name not in self.viewer.layers or not isinstance(
            self.viewer.layers[cells_name], Labels
        ):
            self._say("no cell labels: segment first, or pick a Labels layer", error=True)
            return None
        cells_layer = self.viewer.layers[cells_name]
        nuc_name = self.nuclei_combo.currentText()
        nuclei = (
            np.asarray(self.viewer.layers[nuc_name].data)
            if nuc_name != NONE and nuc_name in self.viewer.layers
            else None
        )
        labels = np.asarray(cells_layer.data)
        source_names = list(image.channel_names)
        key, exo_data, _ = self._detection_request(cfg.spots)
        cached = self.state.cached_detection(key)
        self._push_settings()  # the state's settings are the ones measured

        def done(out: tuple[AnalysisResult, tuple[Any, dict]]) -> None:
            result, detection = out
            self.state.store_detection(key, *detection)
            self._detection_info = detection[1]
            self._show_result(result, cfg, cells_layer, layer, source_names)

        return self._start(
            "measuring",
            _job_analyze,
            image,
            cfg,
            labels,
            nuclei,
            image.name,
            cached,
            None if cached is not None else exo_data,
            on_done=done,
        )

    def run_batch(self) -> Job | None:
        """Run ``batch.analyze_batch`` over the input folder with the current config."""
        from ..config import ConfigError

        src, out = self.batch_in.text().strip(), self.batch_out.text().strip()
        if not src or not out:
            self._say("give an input folder and an output folder", error=True)
            return None
        try:
            cfg = self.current_config()
        except ConfigError as exc:
            self._say(str(exc), error=True)
            return None
        labels = self.batch_labels.text().strip() or None

        def done(code: int) -> None:
            msg = {0: "done", 1: "done; some images failed (failures.csv)"}.get(
                code, f"exit {code}"
            )
            self._say(f"folder run {msg}: results in {out}", error=code != 0)

        job = self._start(
            f"running on {src}",
            _job_batch,
            [src],
            cfg,
            out,
            self.workers_spin.value(),
            labels,
            on_done=done,
        )
        if job is not None:
            self.progress.setRange(0, 0)  # busy indicator until the engine reports numbers
        return job

    # ---------------------------------------------------------------------------- layers --
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

    # ------------------------------------------------------------------------- positivity --
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

    # ------------------------------------------------------------------------------ colour --
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

    # ----------------------------------------------------------------------------- export --
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

    # ---------------------------------------------------------------------------- preview --
    def _on_preview_toggled(self, on: bool) -> None:
        if on:
            self._schedule_preview()
        elif "puncta preview" in self.viewer.layers:
            self.viewer.layers.remove(self.viewer.layers["puncta preview"])

    def _schedule_preview(self, *args: Any) -> None:
        if self.preview_check.isChecked():
            self._preview_timer.start()  # restarts: debounced

    def visible_region(self, layer: Any) -> tuple[slice, ...]:
        """Pixel slices of ``layer`` shown in the canvas (Y, X; the whole image if unknown)."""
        shape = np.shape(layer.data)[-2:]
        try:
            corners = np.asarray(layer.corner_pixels)[:, -2:]
        except Exception:  # pragma: no cover - older napari
            corners = np.array([[0, 0], shape])
        lo = np.clip(corners[0], 0, shape)
        hi = np.clip(corners[1] + 1, 0, shape)
        if np.any(hi - lo < 8):
            lo, hi = np.zeros(2, int), np.asarray(shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    def _current_z(self, data: Any) -> int | None:
        if np.ndim(data) != 3:
            return None
        z = int(self.viewer.dims.current_step[-3]) if self.viewer.dims.ndim >= 3 else 0
        return min(max(z, 0), np.shape(data)[0] - 1)

    def _detection_request(self, spots_cfg: SpotsConfig | None = None) -> tuple[Any, Any, Any]:
        """``(cache key, EV channel array, its layer)`` of the current settings."""
        exo = self._source(self.exosome_combo.currentText())
        if exo is None:
            raise ValueError("pick the EV (exosome) channel in section 1 to preview puncta")
        if spots_cfg is None:
            spots_cfg = self.current_config().spots
        layer = self.viewer.layers[exo.layer_name]
        key = self.state.detection_key(layer.name, layer.data, exo.index, spots_cfg)
        return key, self._source_array(exo), layer

    def update_preview(self) -> Job | None:
        """Show the EV puncta in the visible region, from the detection on the whole EV
        channel (run once per image, channel and settings in a worker thread, then cached;
        the measurement reuses it)."""
        if not self.preview_check.isChecked():
            return None
        try:
            key, data, layer = self._detection_request()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        hit = self.state.cached_detection(key)
        if hit is not None:
            self._show_preview(layer, data, *hit)
            return None
        if self._preview_job is not None:
            self._preview_pending = True
            return None

        def done(out: tuple[Any, dict]) -> None:
            self.state.store_detection(key, *out)
            self._show_preview(layer, data, *out)

        def finished() -> None:
            self._preview_job = None
            if self._preview_pending:
                self._preview_pending = False
                self._schedule_preview()

        self._say("detecting EV puncta on the whole image (once per image and settings)…")
        self._preview_job = start_job(
            _job_detect,
            data,
            key_spots(key),
            on_returned=done,
            on_errored=lambda e: self._say(f"preview: {e}", error=True),
            on_finished=finished,
        )
        return self._preview_job

    def _show_preview(self, layer: Any, data: Any, df: Any, info: dict) -> None:
        region = self.visible_region(layer)
        keep = puncta_in_region(df, region, self._current_z(data))
        sub = df.loc[keep]
        geo = {"scale": tuple(layer.scale[-2:]), "translate": tuple(layer.translate[-2:])}
        self._put_layer(
            points_layer_data(
                sub,
                name="puncta preview",
                ndim=2,
                radius_px=float(df.attrs.get("radius_px", DEFAULT_RADIUS_PX)),
                metadata={META_KEY: {"kind": "preview", "image_layer": layer.name}},
                **geo,
            )
        )
        active = self._cells_layer if self._cells_layer in self.viewer.layers else layer
        self.viewer.layers.selection.active = active
        self.preview_counts = (int(keep.sum()), len(df))
        self._detection_info = info
        if self._result is not None and not self.state.stale and self._result_status:
            # a fresh measurement's line stays; the preview adds its count in view
            self._say(f"{self._result_status} · {int(keep.sum())} EV puncta in view")
            return
        self._say(
            f"preview: {int(keep.sum())} EV puncta in view, {len(df)} in the whole image"
            f"{detector_note(df.attrs, info)}"
        )

    # --------------------------------------------------------------------------- teardown --
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        if self._job is not None:
            self._job.cancel()
        super().closeEvent(event)
