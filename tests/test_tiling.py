"""Overlap tiling of local filters: tile by tile equals the whole image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_exouptake._tiling import map_tiles


def _tube_background(img: np.ndarray) -> np.ndarray:
    """The tube readout's local preprocessing: Gaussian (sigma 2), then background removal by
    an opening + mean of a 51 px box (reach 8 + 50 + 25 = 83 px)."""
    sm = ndimage.gaussian_filter(img, 2.0)
    bg = ndimage.uniform_filter(ndimage.grey_opening(sm, size=(51, 51), mode="reflect"), 51)
    return sm - np.minimum(bg, sm)


@pytest.mark.parametrize("lazy_input", [False, True])
def test_tiled_filter_equals_whole_image(lazy_input):
    import dask.array as da

    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter(rng.random((700, 610)).astype(np.float32), 3)
    whole = _tube_background(img)
    src = da.from_array(img, chunks=100) if lazy_input else img
    # tiles of 256 leave thin last tiles (700 = 2 x 256 + 188, 610 = 2 x 256 + 98 < depth)
    tiled = map_tiles(_tube_background, src, depth=84, tile=256)
    assert isinstance(tiled, np.ndarray) and tiled.dtype == whole.dtype
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    # too little overlap is visibly different (the check can fail)
    short = map_tiles(_tube_background, img, depth=10, tile=256)
    assert np.abs(short - whole).max() > 1e-3


def test_map_tiles_checks_and_lazy():
    img = np.arange(30 * 40, dtype=np.float64).reshape(30, 40)
    out = map_tiles(lambda a: a * 2, img, depth=0, tile=16, lazy=True)
    assert hasattr(out, "compute") and np.array_equal(out.compute(), img * 2)
    with pytest.raises(ValueError, match="2-D"):
        map_tiles(lambda a: a, img[None], depth=1)
    with pytest.raises(ValueError, match="depth"):
        map_tiles(lambda a: a, img, depth=-1)
