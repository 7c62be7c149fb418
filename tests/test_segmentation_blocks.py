"""Block-wise segmentation of big images (napari_exouptake.segmentation.blocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_exouptake import segmentation as S
from napari_exouptake.config import AssayConfig
from napari_exouptake.io import from_array
from napari_exouptake.progress import Cancelled
from napari_exouptake.segmentation.blocks import block_grid, needs_blocks, segment_in_blocks

STARDIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei_stardist"


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images are the same up to renumbering."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _tessellation(shape=(300, 420), n=260, seed=3) -> np.ndarray:
    """Touching cells (~18 px across) filling the image, many on every block seam."""
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    yx = rng.integers(0, shape, size=(n, 2))
    seeds[yx[:, 0], yx[:, 1]] = np.arange(1, n + 1)
    lab = expand_labels(seeds, 9)
    return lab


def test_block_grid_covers_the_image_once_and_pads_inside_it():
    blocks = block_grid((1000, 2500), 1024, 60)
    assert [b.index for b in blocks] == [(0, 0), (0, 1), (0, 2)]
    cover = np.zeros((1000, 2500), int)
    for b in blocks:
        cover[b.core] += 1
        assert b.padded[1].start == max(0, b.core[1].start - 60)
        assert b.padded[1].stop == min(2500, b.core[1].stop + 60)
        assert b.core[1].stop - b.core[1].start <= 1024
    assert (cover == 1).all()
    assert needs_blocks((1000, 2500), 2048) and not needs_blocks((1000, 2500), 2500)
    assert not needs_blocks((10**6, 10**6), None)


def test_stitched_blocks_equal_whole_image_with_touching_cells_on_seams():
    """A 'segmenter' that returns the true cells of any region, renumbered at random: the
    stitched result must be the true partition exactly, with no cell cut in two at a seam and
    no two touching neighbours merged (Cellpose's touch-across-the-face rule would merge them)."""
    truth = _tessellation()
    rng = np.random.default_rng(0)
    calls = []

    def region(sl):
        calls.append(sl)
        lab = truth[sl]
        perm = np.concatenate([[0], rng.permutation(np.arange(1, truth.max() + 1)) + 1000])
        return perm[lab]

    out = segment_in_blocks(region, truth.shape, block_size_px=100, overlap_px=40)
    assert len(calls) == 3 * 5
    assert out.dtype == np.int32
    # cells straddling a seam (x = 84, 168, ...; y = 100, 200) exist and stay whole
    straddling = np.unique(truth[:, 83:85][truth[:, 83] != truth[:, 84]])
    assert len(straddling) > 5
    assert _same_partition(out, truth)
    assert sorted(np.unique(out)[1:]) == list(range(1, len(np.unique(truth)[1:]) + 1))


def test_progress_and_cancel_between_blocks():
    seen = []
    truth = _tessellation((200, 200), 60)

    out = segment_in_blocks(
        lambda sl: truth[sl],
        truth.shape,
        block_size_px=100,
        overlap_px=30,
        progress=lambda f, m: seen.append((f, m)),
    )
    assert _same_partition(out, truth)
    assert seen[0] == (0.0, "segmenting block 1 of 4") and seen[-1][0] == 1.0
    with pytest.raises(Cancelled):
        segment_in_blocks(
            lambda sl: truth[sl], truth.shape, block_size_px=100, overlap_px=30, cancel=lambda: True
        )


def test_bad_block_labels_shape_is_an_error():
    with pytest.raises(ValueError, match="block labels of shape"):
        segment_in_blocks(
            lambda sl: np.zeros((3, 3), int), (300, 300), block_size_px=100, overlap_px=10
        )


def test_block_size_config_key():
    assert AssayConfig().segmentation.block_size_px == 4096
    cfg = AssayConfig.model_validate({"segmentation": {"block_size_px": None}})
    assert cfg.segmentation.block_size_px is None
    with pytest.raises(ValueError):
        AssayConfig.model_validate({"segmentation": {"block_size_px": 10}})


# ------------------------------------------------------------------ with the demo network

needs_demo = pytest.mark.skipif(
    S.cellpose_major_version() != 3 or not (S._MODELS_DIR / S.DEMO_MODELS["demo-nuclei"]).is_file(),
    reason="needs Cellpose 3 and the bundled demo-nuclei weights",
)


def _cfg(block):
    return AssayConfig.model_validate(
        {
            "channels": {"nucleus": 0},
            "segmentation": {
                "mode": "nuclei",
                "model": "demo-nuclei",
                "diameter_px": 24,
                "device": "cpu",
                "block_size_px": block,
            },
        }
    )


def _match_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every label of ``a``: its best IoU with a label of ``b``, and its centroid x, y."""
    ids = np.unique(a)[1:]
    m = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[m], b[m]]), axis=1, return_counts=True)
    area_a = np.bincount(a.ravel())
    area_b = np.bincount(b.ravel())
    best = np.zeros(a.max() + 1)
    for (i, j), c in zip(pairs.T, counts, strict=True):
        iou = c / (area_a[i] + area_b[j] - c)
        best[i] = max(best[i], iou)
    cy = np.array(ndi.center_of_mass(a > 0, a, ids))
    return best[ids], cy


@pytest.mark.slow
@needs_demo
def test_demo_network_in_blocks_matches_whole_image():
    import tifffile

    path = STARDIST / "img2d.tif"
    if not path.is_file():
        pytest.skip("shared nuclei_stardist data absent")
    img = tifffile.imread(path)  # 512 x 512, ~120 nuclei of ~24 px
    image = from_array(img[None], axes="CYX", channel_names=["DAPI"])
    whole = S.segment(image, _cfg(None)).cells
    blocks = S.segment(image, _cfg(256)).cells
    assert blocks.shape == whole.shape and blocks.dtype == np.int32
    best, cyx = _match_iou(whole, blocks)
    away = (np.abs(cyx - 256) > 24).all(axis=1)  # not within a diameter of a seam
    assert away.sum() > 60
    assert (best[away] >= 0.5).mean() >= 0.95
    # near the seams too, most cells match (block normalisation differs slightly)
    assert (best >= 0.5).mean() >= 0.85


@pytest.mark.slow
@needs_demo
def test_demo_network_does_not_cut_cells_on_seams():
    """Bright round nuclei placed across the block seams: each comes out as one label."""
    from skimage.draw import disk

    h = w = 384
    img = np.full((h, w), 100.0)
    truth = np.zeros((h, w), np.int32)
    centres = [(y, 192) for y in range(30, 370, 40)] + [(192, x) for x in range(30, 370, 40)]
    centres = list(dict.fromkeys(centres))
    for k, (y, x) in enumerate(centres, 1):
        rr, cc = disk((y + 3 * (k % 3), x + 4 * (k % 2) - 2), 11, shape=(h, w))
        truth[rr, cc] = k
        img[rr, cc] = 1000.0
    img = ndi.gaussian_filter(img, 1.5) + np.random.default_rng(1).normal(0, 10, (h, w))
    image = from_array(img[None].astype(np.float32), axes="CYX", channel_names=["DAPI"])
    lab = S.segment(image, _cfg(192)).cells  # blocks of 192: seams at x = 192 and y = 192
    n_whole = 0
    for k in range(1, len(centres) + 1):
        got = lab[truth == k]
        ids, counts = np.unique(got[got > 0], return_counts=True)
        assert len(ids), f"nucleus {k} not found"
        # one label covers the nucleus; no second label takes more than a sliver of it
        assert counts.max() >= 0.8 * (truth == k).sum()
        n_whole += len(ids) == 1 or np.sort(counts)[-2] < 0.05 * counts.sum()
    assert n_whole == len(centres)
