"""Channel roles from the viewer's layers: the dropdowns' sources, role guesses from channel
names, and the :class:`~napari_exouptake.io.ImageData` the roles point at."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
)

from ._layers import (
    META_KEY,
    ChannelSource,
    image_from_sources,
)
from ._panel import NONE

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger(__name__)


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


def _layer_source(layer: Any) -> str | None:
    """File a layer was read from (``metadata["source"]`` or napari's ``layer.source.path``)."""
    src = layer.metadata.get("source") or getattr(layer.source, "path", None)
    return str(src) if src else None


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


class ChannelsMixin:
    """Which layers and channels the roles of :class:`~._main.ExoUptakeWidget` point at."""

    def _image_pixel_size(self) -> float | None:
        ref = self._ref_source()
        if ref is None or ref.layer_name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[ref.layer_name]
        px = layer.metadata.get("pixel_size_um")
        if px is None and not np.isclose(layer.scale[-1], 1.0):
            px = float(layer.scale[-1])
        return px

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
