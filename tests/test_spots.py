"""Tests of napari_exouptake.spots: tiny hand-built images with exact expected values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from napari_exouptake.spots import (
    SPOT_COLUMNS,
    detect_spots,
    detect_spots_from_config,
    filter_image,
    learn_threshold,
    match_spots,
)

DATA = Path(__file__).parents[2] / "shared" / "data"
SIGMA = 1.8 / np.sqrt(2.0)  # PSF sigma that matches the default radius_px=1.8


def gaussians(shape, centres, amps, sigma=SIGMA, background=100.0):
    """Sum of Gaussian puncta (peak ``amp``) on a constant background, float64."""
    grids = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    img = np.full(shape, float(background))
    for c, a in zip(centres, amps, strict=False):
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=False))
        img += a * np.exp(-r2 / (2 * sigma**2))
    return img


THREE = np.array([[20.3, 20.7], [30.5, 40.2], [45.1, 15.9]])


def test_three_puncta_exact_positions_and_intensities():
    img = gaussians((64, 64), THREE, [1000, 1000, 1000])
    df = detect_spots(img)
    assert len(df) == 3
    df = df.sort_values("y").reset_index(drop=True)
    np.testing.assert_allclose(df[["y", "x"]].to_numpy(), THREE, atol=0.01)
    # amplitude: fitted peak above background; intensity: disc of 2 x radius (97-98 % of
    # the Gaussian's total 2 pi sigma^2 A)
    np.testing.assert_allclose(df["amplitude"], 1000, rtol=0.02)
    total = 1000 * 2 * np.pi * SIGMA**2
    np.testing.assert_allclose(df["intensity"], total, rtol=0.05)
    np.testing.assert_allclose(df["background"], 100, atol=1)
    np.testing.assert_allclose(df["sigma_px"], SIGMA, rtol=0.05)
    assert (df["n_estimate"] == 1).all()
    assert list(df.columns) == list(SPOT_COLUMNS[1:])
    assert df.attrs["threshold"] > 0


def test_three_puncta_with_noise_and_uneven_background():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64].astype(float)
    # a strong illumination gradient and a broad autofluorescent "cell" blob
    bg = 200 + 6 * xx + 400 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 12.0**2))
    img = gaussians((64, 64), THREE, [600, 600, 600], background=0) + bg
    img = rng.poisson(img).astype(float)
    df = detect_spots(img)
    assert len(df) == 3
    m = match_spots(df, THREE, 0.5)
    assert m.tp == 3
    assert m.distances.max() < 0.3


def test_3d_puncta():
    centres = np.array([[6.2, 10.4, 12.7], [9.6, 25.3, 30.1], [4.0, 30.0, 8.5]])
    img = gaussians((14, 40, 40), centres, [800, 800, 800])
    df = detect_spots(img)
    assert list(df.columns) == list(SPOT_COLUMNS)
    assert len(df) == 3
    df = df.sort_values("y").reset_index(drop=True)
    np.testing.assert_allclose(df[["z", "y", "x"]].to_numpy(), centres, atol=0.05)
    np.testing.assert_allclose(df["amplitude"], 800, rtol=0.03)


def test_aggregate_of_four_is_estimated_as_four():
    singles = [[10, 10], [10, 50], [50, 10], [30, 30], [50, 50], [10, 30]]
    agg = [[39.3, 39.5], [41.0, 39.6], [39.5, 41.1], [41.0, 41.0]]
    img = gaussians((64, 64), singles + agg, [1000] * 10)
    df = detect_spots(img)
    near = np.hypot(df.y - 40.3, df.x - 40.3) < 3
    assert df.loc[near, "n_estimate"].sum() == 4
    assert df.loc[near, "detected"].sum() == 1  # one peak, decomposed into 4 puncta
    assert (df.loc[near, "cluster_id"] > 0).all()
    assert df.loc[~near, "n_estimate"].sum() == 6
    # without the cluster estimate every peak counts 1
    df1 = detect_spots(img, cluster_estimate=False)
    assert len(df1) == 7 and (df1["n_estimate"] == 1).all()


def test_merged_pair_is_split_into_two_resolved_puncta():
    """Two puncta of the same PSF 3 px apart make one band-passed peak; the multi-Gaussian
    fit resolves them (both rows detected=True, within 0.3 px of truth); a single punctum of
    the same brightness stays one row; without split_merged (the default) one merged peak."""
    pair = [[24.2, 22.6], [24.2, 25.6]]
    others = [[8, 8], [8, 40], [40, 8], [40, 40]]
    img = gaussians((48, 48), pair + others, [1000] * 6)
    df = detect_spots(img, split_merged=True)
    near = np.hypot(df.y - 24.2, df.x - 24.1) < 4
    assert near.sum() == 2 and df.loc[near, "detected"].all()
    m = match_spots(df[near], pair, 0.3)
    assert m.tp == 2, df[near]
    assert len(df) == 6 and (df["n_estimate"] == 1).all()
    merged = detect_spots(img)
    assert (np.hypot(merged.y - 24.2, merged.x - 24.1) < 4).sum() == 1
    # a single punctum (with shot noise; also a 1.5x brighter one) stays one detected row
    rng = np.random.default_rng(3)
    for amp in (1000, 1500):
        one = gaussians((48, 48), [[24.3, 23.8]] + others, [amp] + [1000] * 4)
        d1 = detect_spots(rng.poisson(one).astype(float), split_merged=True)
        d1 = d1[d1["detected"]]
        assert len(d1) == 5 and (np.hypot(d1.y - 24.3, d1.x - 23.8) < 4).sum() == 1


def _pairs_image(sep, ratio, seed=0):
    """32 isolated puncta (to learn the model from) and 24 bright puncta each with a dimmer
    neighbour ``sep`` px away (``ratio`` x as bright), Poisson noise."""
    iso = [[16 + 32 * i, 16 + 32 * j] for i in range(8) for j in range(4)]
    bright = [[16 + 32 * i, 150 + 32 * j] for i in range(8) for j in range(3)]
    dim = [[y + 0.3, x + sep] for y, x in bright]
    amps = [600] * len(iso) + [1200] * len(bright) + [1200 * ratio] * len(dim)
    img = gaussians((256, 256), iso + bright + dim, amps)
    return np.random.default_rng(seed).poisson(img).astype(float), iso, bright, dim


@pytest.mark.parametrize(("sep", "ratio", "min_found"), [(3.0, 0.5, 24), (3.5, 0.25, 12)])
def test_residual_pass_finds_dim_neighbours(sep, ratio, min_found):
    """A dim punctum 3-3.5 px from a bright one sits in its wing and makes no peak of its own;
    after subtracting the model of the bright ones it is found (measured over noise seeds 0-2:
    24/24 and 13-19/24, against 0 and 1-3 without the pass), with no extra detections (80
    truth puncta)."""
    img, iso, bright, dim = _pairs_image(sep, ratio)
    off = detect_spots(img, residual_pass=False)
    on = detect_spots(img)  # "auto"
    assert on.attrs["residual_pass"] and on.attrs["model_halo"] < 0.05
    assert not off.attrs["residual_pass"]
    d_off, d_on = off[off["detected"]], on[on["detected"]]
    assert match_spots(d_off, dim, 1.0).tp <= 3
    assert match_spots(d_on, dim, 1.0).tp >= min_found
    assert match_spots(d_on, bright, 1.0).tp == 24 and match_spots(d_on, iso, 1.0).tp == 32
    assert len(d_on) <= 80


def test_residual_pass_skipped_when_puncta_have_a_halo():
    """Puncta with a ring 3.5 px out (15 % of the peak, as out-of-focus beads) do not fit the
    Gaussian model: "auto" skips the pass and reports the halo; True runs it anyway."""
    centres = [[16 + 32 * i, 16 + 32 * j] for i in range(8) for j in range(8)]
    img = gaussians((256, 256), centres, [1000] * len(centres))
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    for cy, cx in centres:
        r = np.hypot(yy - cy, xx - cx)
        img += 150 * np.exp(-((r - 3.5) ** 2) / (2 * 0.8**2))
    img = np.random.default_rng(1).poisson(img).astype(float)
    auto = detect_spots(img)
    assert not auto.attrs["residual_pass"] and auto.attrs["model_halo"] > 0.05
    forced = detect_spots(img, residual_pass=True)
    assert forced.attrs["residual_pass"]


def _textured(seed, amp_median, texture_sigma, n=150, shape=(256, 256)):
    """Puncta on a background with punctum-scale texture (Gaussian-filtered noise, 2.5 px)
    plus Poisson noise; returns the image and the true centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(6, shape[0] - 6, (n, 2))
    amps = rng.lognormal(np.log(amp_median), 0.3, n)
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 2.5)
    tex *= texture_sigma / tex.std()
    img = gaussians(shape, centres, amps, background=300.0) + tex
    return rng.poisson(np.clip(img, 0, None)).astype(float), centres


def test_whitened_detection_finds_dim_puncta_on_texture():
    """Dim puncta (peak ~80 over Poisson noise ~17) on punctum-scale texture (sd 25): the
    whitened filter discounts the texture, so "auto" uses it and finds more puncta.

    Measured: recall 0.847 vs 0.753, F1 0.836 vs 0.807. Its selection runs at 1.4 x ``fdr``
    (near the detection limit that gains F1 on the simulator's hard images), which costs
    precision here: 0.825 vs 0.869 (at 1 x ``fdr`` it was 0.886, F1 0.855)."""
    img, centres = _textured(0, 80.0, 25.0)
    auto = detect_spots(img)
    plain = detect_spots(img, whiten=False)
    assert auto.attrs["whitened"] and auto.attrs["whiten_gain"] >= 1.05
    assert not plain.attrs["whitened"]
    m_auto, m_plain = match_spots(auto, centres, 2.0), match_spots(plain, centres, 2.0)
    assert m_auto.recall >= m_plain.recall + 0.07
    assert m_auto.precision >= m_plain.precision - 0.06
    assert m_auto.f1 >= m_plain.f1 + 0.02


def test_whitened_detection_adds_no_side_lobe_puncta_beside_bright_ones():
    """The whitened filter rings: bright puncta (60 x the noise) on texture have a positive
    side lobe ~6 px out. Each maximum is corrected for its brighter neighbours' response,
    so forcing the whitened filter finds the 60 puncta with no more false points than the
    band-pass (without the correction it found 306 points here). "auto" keeps the band-pass
    for bright puncta (far from the detection limit)."""
    rng = np.random.default_rng(1)
    centres = rng.uniform(5, 250, (60, 2))
    amps = rng.lognormal(np.log(800), 0.4, 60)
    tex = 150 * np.clip(
        1 + 2.4 * ndi.gaussian_filter(rng.standard_normal((256, 256)), 2.5), 0, None
    )
    img = rng.poisson(gaussians((256, 256), centres, amps) + tex).astype(float)
    forced = detect_spots(img, whiten=True)
    assert forced.attrs["whitened"]
    m = match_spots(forced, centres, 2.0)
    plain = detect_spots(img, whiten=False)
    assert m.recall >= 0.95 and m.fp <= match_spots(plain, centres, 2.0).fp + 1
    assert not detect_spots(img).attrs["whitened"]


def test_empty_and_flat_images_give_empty_tables():
    for img in (np.zeros((32, 32)), np.full((32, 32), 7, np.uint16), np.zeros((3, 16, 16))):
        df = detect_spots(img)
        assert len(df) == 0
        want = SPOT_COLUMNS if img.ndim == 3 else SPOT_COLUMNS[1:]
        assert list(df.columns) == list(want)


def test_fixed_threshold_units_are_amplitude():
    img = gaussians((48, 48), [[12, 12], [30, 30]], [300, 1000])
    assert len(detect_spots(img, threshold=250)) == 2
    assert len(detect_spots(img, threshold=400)) == 1
    np.testing.assert_allclose(filter_image(img).max(), 1000, rtol=0.02)


def test_mask_and_border():
    img = gaussians((48, 48), [[4, 24], [24, 24]], [1000, 1000])
    assert len(detect_spots(img)) == 2
    assert len(detect_spots(img, exclude_border_px=5)) == 1
    mask = np.zeros((48, 48), bool)
    mask[:10] = True
    df = detect_spots(img, mask=mask)
    assert len(df) == 1 and abs(df.y.iloc[0] - 4) < 0.1


def test_min_distance_merges_close_peaks():
    img = gaussians((48, 48), [[24, 20], [24, 26]], [1000, 1000])
    assert len(detect_spots(img, cluster_estimate=False)) == 2
    assert len(detect_spots(img, min_distance_px=7, cluster_estimate=False)) == 1


def test_learn_threshold_from_controls():
    rng = np.random.default_rng(1)
    controls = [rng.normal(100, 10, (128, 128)) for _ in range(3)]
    thr = learn_threshold(controls, max_false_per_mpx=100)
    assert thr > 0
    n_false = sum(int(detect_spots(c, threshold=thr)["detected"].sum()) for c in controls)
    assert n_false <= 100 * 3 * 128 * 128 / 1e6 + 1e-9
    img = gaussians((128, 128), [[30, 30], [90, 60]], [200, 200], background=0)
    img = img + rng.normal(100, 10, img.shape)
    df = detect_spots(img, threshold=thr)
    assert match_spots(df, [[30, 30], [90, 60]], 1.0).recall == 1.0


def test_from_config_squeezes_single_plane():
    class Cfg:
        radius_px = 1.8
        threshold = "auto"
        threshold_k = 5.0
        background_radius_px = None
        min_distance_px = None
        cluster_estimate = True
        exclude_border_px = 0

    img = gaussians((64, 64), THREE, [1000] * 3)[None]
    df = detect_spots_from_config(img, Cfg())
    assert "z" not in df.columns and len(df) == 3
    assert len(detect_spots_from_config(img, None)) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": np.full((8, 8), np.nan)}, "NaN"),
        ({"image": np.zeros(8)}, "2D"),
        ({"image": np.zeros((2, 2, 2, 2))}, "2D"),
        ({"image": np.array([["a"]])}, "numeric"),
        ({"image": np.zeros((8, 8)), "threshold": "otsu"}, "auto"),
        ({"image": np.zeros((8, 8)), "threshold": -1.0}, ">= 0"),
        ({"image": np.zeros((8, 8)), "threshold_k": 0}, "threshold_k"),
        ({"image": np.zeros((8, 8)), "radius_px": 0}, "radius_px"),
        ({"image": np.zeros((8, 8)), "background_radius_px": 1.0}, "larger"),
        ({"image": np.zeros((8, 8)), "mask": np.ones((4, 4), bool)}, "mask shape"),
        ({"image": np.zeros((8, 8)), "exclude_border_px": -1}, "exclude_border"),
    ],
)
def test_detect_errors(kwargs, match):
    image = kwargs.pop("image")
    with pytest.raises(ValueError, match=match):
        detect_spots(image, **kwargs)


def test_learn_threshold_errors():
    with pytest.raises(ValueError, match="at least one"):
        learn_threshold([])
    with pytest.raises(ValueError, match="flat"):
        learn_threshold([np.zeros((16, 16))])
    with pytest.raises(ValueError, match="masks"):
        learn_threshold([np.zeros((16, 16))], masks=[None, None])


def test_match_spots_one_to_one():
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    pred = np.array([[0.5, 0.0], [0.0, 0.6], [10.0, 11.5], [40.0, 40.0]])
    m = match_spots(pred, truth, 2.0)
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)
    assert m.f1 == pytest.approx(4 / 7)
    # the Hungarian matching keeps the closer of two candidates
    assert sorted(zip(m.pred_index, m.truth_index, strict=False)) == [(0, 0), (2, 1)]
    df = pd.DataFrame(pred, columns=["y", "x"])
    assert match_spots(df, truth, 2.0).tp == 2
    assert match_spots(np.empty((0, 2)), truth).f1 == 0.0
    assert match_spots(np.empty((0, 2)), np.empty((0, 2))).f1 == 1.0
    with pytest.raises(ValueError, match="coordinates"):
        match_spots(np.zeros((2, 4)), truth)
    with pytest.raises(ValueError, match="max_dist"):
        match_spots(pred, truth, 0)


def test_auto_threshold_on_pure_noise_finds_almost_nothing():
    rng = np.random.default_rng(11)
    for method in ("snr", "fdr"):
        img = rng.normal(500, 20, (256, 256))
        df = detect_spots(img, auto_method=method)
        # the decoy count equals the maxima count at every threshold: nothing passes 5 % FDR
        assert len(df) <= 3, (method, len(df))


def test_auto_threshold_on_textured_background():
    """Puncta of amplitude 250-400 on a strong punctum-scale texture (sigma 60 px-wise, bumps
    as bright as puncta) plus shot noise: the decoy-FDR threshold finds the puncta; the real
    false-discovery rate is higher than the nominal 5 % here (measured 0.21), and falls
    with ``fdr`` (0.09 at fdr=0.01)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(12)
    shape = (256, 256)
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    tex *= 60 / tex.std()
    centres = rng.uniform(8, 248, (60, 2))
    img = gaussians(shape, centres, rng.uniform(250, 400, 60), background=0) + 400 + tex
    img = rng.poisson(np.clip(img, 0, None)).astype(float)
    for method in ("snr", "fdr"):
        df = detect_spots(img, auto_method=method)
        m = match_spots(df, centres, 2.0)
        assert m.recall >= 0.95 and m.precision >= 0.75, (method, m.precision, m.recall)
    m = match_spots(detect_spots(img, fdr=0.01), centres, 2.0)
    assert m.recall >= 0.95 and m.precision >= 0.88, (m.precision, m.recall)
    # the old k x MAD rule on the same image, for reference, also works here
    assert match_spots(detect_spots(img, auto_method="mad"), centres, 2.0).recall >= 0.8


def test_width_and_relative_amplitude_tests():
    centres = [[12, 12], [12, 40], [40, 12], [40, 40], [26, 26], [12, 26]]
    img = gaussians((64, 64), centres, [1000] * 6)
    # a broad, dim bump (sigma 4 px, total < one punctum) and a faint PSF-sized speck
    img += gaussians((64, 64), [[52, 52]], [120], sigma=4.0, background=0)
    img += gaussians((64, 64), [[52, 26]], [60], background=0)
    df = detect_spots(img, threshold=30)
    assert match_spots(df, centres, 1.0).tp == 6 and len(df) == 6
    kept = detect_spots(img, threshold=30, max_width_factor=None, min_relative_amplitude=0)
    assert len(kept) == 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"auto_method": "otsu"}, "auto_method"),
        ({"fdr": 0.0}, "fdr"),
        ({"fdr": 1.5}, "fdr"),
        ({"max_width_factor": 0.5}, "max_width_factor"),
        ({"min_relative_amplitude": 1.0}, "min_relative_amplitude"),
        ({"residual_pass": "sometimes"}, "residual_pass"),
        ({"whiten": "always"}, "whiten"),
    ],
)
def test_new_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_spots(np.zeros((8, 8)), **kwargs)


# ----------------------------------------------------------------------------- real data
def _beads():
    folder = DATA / "spots_beads"
    if not (folder / "beads_300pxroi.png").exists():
        pytest.skip("shared/data/spots_beads not available")
    import imageio.v3 as iio

    img = iio.imread(folder / "beads_300pxroi.png")
    ann = pd.read_csv(folder / "bead_annotations_20180517.csv")
    truth = np.c_[ann["row"] - 2, ann["col"] - 2]  # documented -2 px offset
    return img, truth


def test_real_beads_f1_target():
    """Target F1 >= 0.95 within 2 px (measured with the defaults: 0.958, precision 0.95,
    recall 0.966). Caveat: the width and relative-amplitude tests were designed with this
    image in view (its false positives were wide or ~1/10-brightness blobs)."""
    img, truth = _beads()
    df = detect_spots(img)
    m = match_spots(df, truth, 2.0)
    assert m.f1 >= 0.95, (m.f1, m.precision, m.recall)
    assert m.recall >= 0.95
    assert np.median(m.distances) < 0.5


# ------------------------------------------------------------------ simulator accuracy
# Seeds 501/502 were not used to tune anything (tuning: 401-404; report: 601-604).
def _sim_scores(difficulty, seeds=(501, 502)):
    sim_mod = pytest.importorskip("napari_exouptake.simulate")
    from napari_exouptake.measure import measure_cells

    f1, r, r_marker = [], [], []
    for i, seed in enumerate(seeds):
        sim = sim_mod.simulate_image(
            seed, condition=("ev_high", "ev_low")[i % 2], difficulty=difficulty
        )
        names = list(sim.channel_names)
        exo = sim.image[names.index("PKH26")]
        spots = detect_spots(exo)
        f1.append(match_spots(spots, sim.spots, 2.0).f1)
        chans = {
            "exosome": exo,
            "cd31": sim.image[names.index("CD31")],
            "col1": sim.image[names.index("COL1")],
        }
        cells = measure_cells(sim.cells, chans, spots)
        truth = sim.truth_cells.set_index("cell_id").loc[cells["cell_id"]]
        r.append(np.corrcoef(cells["exo_spot_estimate"], truth["n_spots"])[0, 1])
        for m in ("cd31", "col1"):
            r_marker.append(
                np.corrcoef(cells[f"{m}_mean_intensity"], truth[f"{m}_true_mean"])[0, 1]
            )
    return float(np.mean(f1)), float(np.mean(r)), float(np.min(r_marker))


@pytest.mark.slow
def test_simulated_regression_levels_and_marker_target():
    """Measured on seeds 501/502: F1 0.893 / 0.789 (normal / hard), count r 0.952 / 0.859,
    marker mean vs true mean r 1.000 (target >= 0.99: met). Regression guards below the
    measured levels; the marker assertion is the target itself."""
    f1_n, r_n, rm_n = _sim_scores("normal")
    f1_h, r_h, rm_h = _sim_scores("hard")
    assert f1_n >= 0.83 and r_n >= 0.90, (f1_n, r_n)
    assert f1_h >= 0.72 and r_h >= 0.82, (f1_h, r_h)
    assert rm_n >= 0.99 and rm_h >= 0.99, (rm_n, rm_h)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="targets F1 >= 0.95 / count r >= 0.98 at normal not met: "
    "measured F1 0.902 / r 0.968 (seeds 601-604), 0.902 / 0.972 (1201-1204), "
    "0.893 / 0.952 (501/502); "
    "puncta closer than ~2.5 px merge and unresolved ones are counted by brightness; "
    "scripts/spot_bounds.py: an ideal detector resolving everything >= 1.5 px apart "
    "scores F1 0.938, count r 0.977",
)
def test_simulated_normal_targets():
    f1, r, _ = _sim_scores("normal")
    assert f1 >= 0.95 and r >= 0.98


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="target F1 >= 0.80 at hard not met on every seed set: measured 0.801 (seeds "
    "601-604), 0.802 (1201-1204), 0.799 (1301-1304), 0.784 (1401-1404), 0.789 (501/502, "
    "these tests); count r 0.933 / 0.918 / 0.925 / 0.893 / 0.859 vs target 0.90; misses are "
    "unresolved neighbours and aggregate members (counted by brightness) and dim isolated "
    "puncta on granular autofluorescence (recall 0.72-0.74)",
)
def test_simulated_hard_targets():
    f1, r, _ = _sim_scores("hard")
    assert f1 >= 0.80 and r >= 0.90
