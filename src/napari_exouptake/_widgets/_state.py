"""The widget's state, Qt-free and evented: settings, results, staleness and the puncta cache.

:class:`WidgetState` is what the dock widget shows; the Qt side only pushes the settings the
controls describe (:meth:`WidgetState.set_settings`) and listens to the ``psygnal`` signals.
Keeping the rules here (what makes a result stale, when an export is refused, which detection
table a measurement may reuse) lets them be tested without a display.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..config import AssayConfig, SpotsConfig
    from ..pipeline import AnalysisResult

__all__ = ["STALE_BANNER", "DetectionKey", "WidgetState", "saturation", "settings_diff"]

#: text of the banner shown over stale results
STALE_BANNER = "settings changed: measure again"

#: (layer name, id of the layer's data, channel index or -1, shape, spots settings as JSON)
DetectionKey = tuple


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def settings_diff(old: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs between two settings dicts (sorted)."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def saturation(data: np.ndarray) -> tuple[int, float | None]:
    """Pixels at the saturation level of an integer image: ``(count, level)``.

    The level is the dtype's maximum (e.g. 65535 for uint16); a 16-bit image whose maximum is
    exactly 4095 or 16383 is taken as a 12- or 14-bit camera's output and that value is the
    level. Float images have no defined level: ``(0, None)``.
    """
    arr = np.asarray(data)
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return 0, None
    top = int(arr.max())
    level = int(np.iinfo(arr.dtype).max)
    if top in (4095, 16383) and level > top:
        level = top
    return int(np.count_nonzero(arr == level)), float(level)


class WidgetState:
    """Roles and settings (an :class:`AssayConfig` plus the chosen label layers), the last
    result and the config that produced it, whether it is stale, and cached puncta tables.

    Signals
    -------
    settings_changed(object)
        The new settings config (or None when the controls hold an invalid value).
    stale_changed(bool, str)
        True with the changed settings keys (comma separated) when the shown result no longer
        matches the settings; False when a new result arrives.
    result_changed(object)
        A new :class:`~napari_exouptake.pipeline.AnalysisResult` (or None).
    """

    settings_changed = Signal(object)
    stale_changed = Signal(bool, str)
    result_changed = Signal(object)

    def __init__(self, cache_size: int = 4) -> None:
        self.config: AssayConfig | None = None
        self.extra: dict[str, Any] = {}
        self.result: AnalysisResult | None = None
        self.result_config: AssayConfig | None = None
        self.result_extra: dict[str, Any] = {}
        self.stale = False
        self.stale_keys: list[str] = []
        self._cache: OrderedDict[DetectionKey, Any] = OrderedDict()
        self._cache_size = int(cache_size)

    # -- settings and results ---------------------------------------------------------------
    def _measured_settings(self, cfg: AssayConfig | None, extra: dict) -> dict:
        """What a result depends on: the config less positivity (re-classified in place by
        ``pipeline.finalize``), plus the label layers measured."""
        if cfg is None:
            return {"invalid": True, **extra}
        d = cfg.to_dict()
        d.pop("positivity", None)
        d.get("segmentation", {}).pop("device", None)  # where it ran changes no number
        for marker in (d.get("channels", {}).get("markers") or {}).values():
            if isinstance(marker, dict):
                marker.pop("positivity", None)  # re-classified in place too
        return {**d, **extra}

    def set_settings(self, config: AssayConfig | None, **extra: Any) -> None:
        """The controls now describe ``config`` (None: invalid) and ``extra`` (label layers)."""
        self.config, self.extra = config, dict(extra)
        self.settings_changed.emit(config)
        self._update_stale()

    def _update_stale(self) -> None:
        if self.result is None:
            stale, keys = False, []
        else:
            keys = settings_diff(
                self._measured_settings(self.result_config, self.result_extra),
                self._measured_settings(self.config, self.extra),
            )
            stale = bool(keys)
        if stale != self.stale or keys != self.stale_keys:
            self.stale, self.stale_keys = stale, keys
            self.stale_changed.emit(stale, ", ".join(keys))

    def set_result(self, result: AnalysisResult | None, config: AssayConfig | None) -> None:
        """A measurement finished with ``config`` (on the label layers of the current extra)."""
        self.result, self.result_config = result, config
        self.result_extra = dict(self.extra)
        if config is not None and self.config is None:
            self.config = config
        self.result_changed.emit(result)
        self._update_stale()

    def check_export(self) -> tuple[AnalysisResult, AssayConfig]:
        """The result to export and the config that produced it.

        Raises
        ------
        ValueError
            No result yet, or the settings changed since it was measured.
        """
        if self.result is None or self.result_config is None:
            raise ValueError("nothing to export: run 'Detect puncta and measure' first")
        if self.stale:
            raise ValueError(
                f"{STALE_BANNER} before exporting (changed: {', '.join(self.stale_keys)})"
            )
        return self.result, self.result_config

    # -- puncta detection cache ---------------------------------------------------------------
    @staticmethod
    def detection_key(
        layer_name: str, data: Any, index: int | None, spots: SpotsConfig
    ) -> DetectionKey:
        """Key of one detection: the layer's data object, the channel and the settings."""
        return (
            layer_name,
            id(data),
            -1 if index is None else int(index),
            tuple(np.shape(data)),
            spots.model_dump_json(),
        )

    def cached_detection(self, key: DetectionKey) -> tuple[pd.DataFrame, dict] | None:
        """``(puncta table, info)`` stored for ``key``, or None."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def store_detection(self, key: DetectionKey, table: pd.DataFrame, info: dict) -> None:
        self._cache[key] = (table, dict(info))
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
