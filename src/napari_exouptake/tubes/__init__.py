"""Tube-formation (angiogenesis) network analysis of one 2D image.

Readouts follow the vocabulary of ImageJ's *Angiogenesis Analyzer* (G. Carpentier):
junctions, nodes, extremities, segments, branches, isolated segments, master
segments, meshes, total length, total branching length, branching interval;
plus the percentage vessel area and vessel count used for CD31/vWF
immunofluorescence. See ``docs/readouts.md`` for definitions and measured
accuracy.

Pipeline: (optionally inverted) image -> Gaussian smoothing -> background
subtraction (grey opening) -> threshold (Otsu or a number) -> small-object and
small-hole clean-up -> skeleton -> spur pruning -> skan graph -> junction
clustering -> segment classification -> master tree -> meshes.

Modules: :mod:`.analyze` (:func:`analyze_tubes`, the steps in order), :mod:`.illumination`
(polarity, the well, background correction), :mod:`.mask` (ridge response and hysteresis,
bridged gaps, clean-up), :mod:`.clumps` (cell clumps), :mod:`.graph` (skeleton graph,
junctions, master tree, meshes), :mod:`.result` (:class:`TubeResult`, metrics) and
:mod:`.overlay` (:func:`tube_overlay`, :data:`OVERLAY_COLOURS`).
"""

from .analyze import analyze_tubes
from .overlay import OVERLAY_COLOURS, tube_overlay
from .result import TubeResult

__all__ = ["OVERLAY_COLOURS", "TubeResult", "analyze_tubes", "tube_overlay"]
