"""Detection of labelled-exosome puncta (PKH26, PKH67, DiI, CD63-GFP ...).

One small method, every step vectorised over pixels and puncta, 2D ``(Y, X)`` and 3D
``(Z, Y, X)``:

1. :mod:`.noise`: single-pixel spikes (hot pixels) removed; the band-passed image's robust
   noise sigma, global and local.
2. :mod:`.filters`: a matched difference-of-Gaussians band-pass, in amplitude units.
3. :mod:`.threshold`: blob-like local maxima, accepted by decoy false-discovery-rate control on
   the local signal-to-noise ratio, never below the Rose criterion (SNR 5).
4. :mod:`.localize`: sub-pixel position, width, local background, integrated intensity; the
   punctum size estimated from the image (``radius_px="auto"``).
5. :mod:`.decompose`: the cluster-aware count of bright aggregates.

:func:`detect_spots` runs them; :func:`detect_spots_tiled` gives the same puncta on a big (lazy)
image tile by tile; :func:`match_spots` scores detections against ground truth.
"""

from .detect import (
    SPOT_COLUMNS,
    detect_spots,
    detect_spots_from_config,
    estimate_psf_sigma,
    learn_threshold,
)
from .filters import filter_image
from .match import MatchCounts, SpotMatch, match_spots
from .tiled import detect_spots_tiled

__all__ = [
    "SPOT_COLUMNS",
    "MatchCounts",
    "SpotMatch",
    "detect_spots",
    "detect_spots_from_config",
    "detect_spots_tiled",
    "estimate_psf_sigma",
    "filter_image",
    "learn_threshold",
    "match_spots",
]
