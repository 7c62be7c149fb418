"""The puncta preview: one detection per image, channel and settings (cached, reused by
the measurement), shown for the region in view."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DEFAULT_RADIUS_PX
from ._jobs import _job_detect
from ._layers import (
    META_KEY,
    points_layer_data,
)
from ._text import detector_note
from ._workers import Job, start_job

if TYPE_CHECKING:  # pragma: no cover
    from ..config import SpotsConfig

log = logging.getLogger(__name__)


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


def key_spots(key: tuple) -> SpotsConfig:
    """The ``SpotsConfig`` of a detection cache key."""
    from ..config import SpotsConfig

    return SpotsConfig.model_validate_json(key[-1])


class PreviewMixin:
    """The live puncta preview of :class:`~._main.ExoUptakeWidget`."""

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
