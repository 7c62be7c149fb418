"""The widget's jobs: the core calls each one runs in the worker thread (plain functions, no
Qt; ``progress(fraction, message)`` and ``cancel()`` of :mod:`napari_exouptake.progress` handed
down as they are) and the widget's methods that start them and show their progress."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ._layers import (
    META_KEY,
    labels_layer_data,
)
from ._panel import NONE
from ._text import _plain_words
from ._workers import Job, start_job

if TYPE_CHECKING:  # pragma: no cover
    from ..config import AssayConfig, SpotsConfig
    from ..pipeline import AnalysisResult
    from ..progress import Cancel, Progress

log = logging.getLogger(__name__)


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


class JobsMixin:
    """Starting, following and cancelling the jobs of :class:`~._main.ExoUptakeWidget`."""

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
