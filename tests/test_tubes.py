"""Tests of the tube-formation (angiogenesis) network analysis."""

from __future__ import annotations

import numpy as np
import pytest

from napari_exouptake._synthetic_structures import synthetic_network
from napari_exouptake.tubes import TubeResult, analyze_tubes, tube_overlay

# exact binary input: no smoothing, no background subtraction, threshold between 0 and 1, the
# mask as drawn (no ridge growth: 1-px lines are narrower than the ridge filter's scales)
EXACT = {
    "smoothing_sigma_px": 0.0,
    "background_radius_px": None,
    "threshold": 0.5,
    "method": "intensity",
}

REQUIRED_KEYS = {"tube_total_length_um", "tube_junctions", "tube_meshes", "tube_length_unit"}


def _plus() -> np.ndarray:
    img = np.zeros((41, 41))
    img[20, 2:39] = 1  # 37 px -> 36 px long
    img[2:39, 20] = 1
    return img


def _rectangle() -> np.ndarray:
    img = np.zeros((31, 41))
    img[5, 5:36] = img[25, 5:36] = 1
    img[5:26, 5] = img[5:26, 35] = 1
    return img


def test_plus_sign_exact():
    r = analyze_tubes(_plus(), **EXACT)
    m = r.metrics
    assert isinstance(r, TubeResult)
    assert m["tube_junctions"] == 1
    assert m["tube_nodes"] == 1
    assert m["tube_extremities"] == 4
    assert m["tube_branches"] == 4
    assert m["tube_segments"] == 0
    assert m["tube_isolated_segments"] == 0
    assert m["tube_meshes"] == 0
    assert m["tube_total_length_um"] == pytest.approx(72.0)
    assert m["tube_length_unit"] == "px"
    assert m["tube_vessel_count"] == 1
    assert m["tube_vessel_area_fraction"] == pytest.approx(73 / 41**2)
    assert m["tube_mean_width_um"] == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(r.junctions, [[20, 20]], atol=0.5)
    assert sorted(map(tuple, r.extremities.astype(int).tolist())) == [
        (2, 20),
        (20, 2),
        (20, 38),
        (38, 20),
    ]


def test_rectangle_is_one_mesh_with_exact_area_and_units():
    r = analyze_tubes(_rectangle(), pixel_size_um=0.5, **EXACT)
    m = r.metrics
    assert m["tube_meshes"] == 1
    assert m["tube_mesh_total_area_um2"] == pytest.approx(19 * 29 * 0.25)
    assert m["tube_mesh_mean_area_um2"] == pytest.approx(19 * 29 * 0.25)
    assert m["tube_junctions"] == 0
    assert m["tube_isolated_segments"] == 1  # a closed loop without junction
    assert m["tube_length_unit"] == "um"
    # perimeter 100 px = 50 um. Measured 95.4 px: skeletonize cuts each 90-degree corner
    # (97.7 px) and the sigma-1 coordinate smoothing shortens each corner by another ~0.6 px
    assert m["tube_total_length_um"] == pytest.approx(50.0, rel=0.05)
    assert r.meshes.max() == 1
    assert (r.meshes > 0).sum() == 19 * 29


def test_theta_shape_segments_and_master_tree():
    img = _rectangle()
    img[5:26, 20] = 1  # middle bar: 2 junctions, 3 segments, 2 meshes
    m = analyze_tubes(img, **EXACT).metrics
    assert m["tube_junctions"] == 2
    assert m["tube_segments"] == 3
    assert m["tube_branches"] == 0
    assert m["tube_extremities"] == 0
    assert m["tube_meshes"] == 2
    assert m["tube_master_junctions"] == 2
    assert m["tube_master_segments"] == 3
    assert m["tube_master_segment_length_um"] == pytest.approx(m["tube_total_length_um"])


def test_spur_on_loop_is_a_branch_not_master():
    img = _rectangle()
    img[15, 35:40] = 0
    img[15, 36:40] = 1  # 4-px spur: pruned (shorter than min_segment_length_px)
    m = analyze_tubes(img, **EXACT).metrics
    assert m["tube_branches"] == 0 and m["tube_junctions"] == 0
    img2 = np.zeros((31, 61))
    img2[:, :41] = _rectangle()
    img2[15, 36:58] = 1  # 22-px branch off the right side
    m2 = analyze_tubes(img2, **EXACT).metrics
    assert m2["tube_junctions"] == 1
    assert m2["tube_branches"] == 1
    assert m2["tube_extremities"] == 1
    assert m2["tube_meshes"] == 1
    assert m2["tube_master_segments"] == 1  # the loop, passed through its only junction
    assert m2["tube_branching_interval_um"] > 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_network_clean_exact_counts(seed):
    img, truth = synthetic_network(seed)
    m = analyze_tubes(img).metrics
    assert m["tube_junctions"] == truth.n_junctions
    assert m["tube_meshes"] == truth.n_meshes
    assert m["tube_extremities"] == truth.n_extremities
    assert m["tube_total_length_um"] == pytest.approx(truth.total_length_px, rel=0.05)
    assert set(m) >= REQUIRED_KEYS
    assert all(k.startswith("tube_") for k in m)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_synthetic_network_noise_and_uneven_illumination(seed):
    img, truth = synthetic_network(seed, noise_sigma=0.3, illumination=0.5)
    m = analyze_tubes(img).metrics
    assert m["tube_total_length_um"] == pytest.approx(truth.total_length_px, rel=0.10)
    assert m["tube_meshes"] == truth.n_meshes
    assert abs(m["tube_junctions"] - truth.n_junctions) <= 1


def test_dark_tubes_and_pixel_size():
    img, truth = synthetic_network(1)
    bright = analyze_tubes(img).metrics
    dark = analyze_tubes(1.0 - img, bright_tubes=False, pixel_size_um=2.0).metrics
    assert dark["tube_junctions"] == bright["tube_junctions"] == truth.n_junctions
    assert dark["tube_meshes"] == bright["tube_meshes"]
    assert dark["tube_length_unit"] == "um"
    assert dark["tube_total_length_um"] == pytest.approx(2.0 * bright["tube_total_length_um"])
    assert dark["tube_mesh_total_area_um2"] == pytest.approx(
        4.0 * bright["tube_mesh_total_area_um2"]
    )


def test_all_zero_image_gives_zeros():
    r = analyze_tubes(np.zeros((64, 64)))
    m = r.metrics
    for k in (
        "tube_total_length_um",
        "tube_junctions",
        "tube_meshes",
        "tube_extremities",
        "tube_segments",
        "tube_branches",
        "tube_vessel_count",
        "tube_vessel_area_fraction",
    ):
        assert m[k] == 0, k
    assert not r.skeleton.any()
    assert r.junctions.shape == (0, 2)
    assert len(r.segments) == 0


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((3, 32, 32)), {}, "2D"),
        (np.zeros(32), {}, "2D"),
        (np.full((16, 16), np.nan), {}, "NaN"),
        (np.zeros((16, 16)), {"threshold": "otsu"}, "threshold"),
        (np.zeros((16, 16)), {"pixel_size_um": -1.0}, "pixel_size_um"),
        (np.zeros((16, 16)), {"min_mesh_area_px": -5}, "min_mesh_area_px"),
    ],
)
def test_errors(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        analyze_tubes(image, **kwargs)


def test_overlay():
    img, _ = synthetic_network(2)
    r = analyze_tubes(img)
    rgb = tube_overlay(img, r)
    assert rgb.shape == (*img.shape, 3)
    assert rgb.dtype == np.uint8
    iy, ix = np.round(r.junctions[0]).astype(int)
    assert tuple(rgb[iy, ix]) == (255, 30, 30)
    assert (rgb[r.meshes > 0] != rgb[r.meshes > 0][:, :1]).any()  # meshes are tinted
    with pytest.raises(ValueError, match="shape"):
        tube_overlay(img[:-1], r)
    empty = analyze_tubes(np.zeros((20, 20)))
    assert tube_overlay(np.zeros((20, 20)), empty).shape == (20, 20, 3)
