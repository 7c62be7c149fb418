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
    assert near.sum() == 1  # one row: the aggregate is counted, not placed as guessed rows
    assert df.loc[~near, "n_estimate"].sum() == 6 and (df.loc[~near, "n_estimate"] == 1).all()
    # without the cluster estimate every peak counts 1
    df1 = detect_spots(img, cluster_estimate=False)
    assert len(df1) == 7 and (df1["n_estimate"] == 1).all()


def _pairs_image(sep, ratio, seed=0):
    """32 isolated puncta (to learn the model from) and 24 bright puncta each with a dimmer
    neighbour ``sep`` px away (``ratio`` x as bright), Poisson noise."""
    iso = [[16 + 32 * i, 16 + 32 * j] for i in range(8) for j in range(4)]
    bright = [[16 + 32 * i, 150 + 32 * j] for i in range(8) for j in range(3)]
    dim = [[y + 0.3, x + sep] for y, x in bright]
    amps = [600] * len(iso) + [1200] * len(bright) + [1200 * ratio] * len(dim)
    img = gaussians((256, 256), iso + bright + dim, amps)
    return np.random.default_rng(seed).poisson(img).astype(float), iso, bright, dim


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
    from napari_exouptake.config import SpotsConfig

    img = gaussians((64, 64), THREE, [1000] * 3)[None]
    df = detect_spots_from_config(img, SpotsConfig())
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
        ({"image": np.zeros((8, 8)), "radius_px": 0}, "radius_px"),
        ({"image": np.zeros((8, 8)), "radius_px": "big"}, "radius_px"),
        ({"image": np.zeros((8, 8)), "fdr": 0.0}, "fdr"),
        ({"image": np.zeros((8, 8)), "fdr": 1.5}, "fdr"),
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
    img = rng.normal(500, 20, (256, 256))
    assert len(detect_spots(img)) <= 1


@pytest.mark.parametrize("kind", ["poisson8", "hotpix", "pattern", "autofluor"])
def test_frames_without_puncta_give_at_most_three(kind):
    """Camera noise of four kinds and autofluorescent cells, no puncta (512 x 512): the
    automatic threshold keeps its false detections to <= 3 per frame (measured: 0 or 1 on
    seeds 0-2 of every kind; hot pixels are removed before filtering)."""
    from napari_exouptake.simulate import noise_frame

    for seed in (0, 1):
        df = detect_spots(noise_frame(kind, seed))
        assert len(df) <= 3, (kind, seed, len(df))


def test_hot_pixels_are_removed_but_puncta_kept():
    img = gaussians((64, 64), THREE, [300, 300, 300], sigma=0.75)
    img[5, 50] += 5000  # hot pixels
    img[50, 50] += 800
    df = detect_spots(img, radius_px=0.75 * np.sqrt(2))
    assert len(df) == 3 and df.attrs["n_spikes"] == 2
    assert match_spots(df, THREE, 0.5).tp == 3


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 64), 7.0),  # constant
        np.zeros((1, 1)),  # one pixel
        np.full((64, 64), 65535, np.uint16),  # saturated
        np.zeros((3, 64, 64)),  # empty stack
    ],
)
def test_degenerate_images_give_empty_tables(image):
    df = detect_spots(image)
    assert len(df) == 0 and "y" in df.columns
    assert len(detect_spots(image, radius_px="auto")) == 0


def test_auto_threshold_on_textured_background():
    """60 puncta of amplitude 250-400 on a punctum-scale texture (sd 60) plus shot noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(12)
    shape = (256, 256)
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    tex *= 60 / tex.std()
    centres = rng.uniform(8, 248, (60, 2))
    img = gaussians(shape, centres, rng.uniform(250, 400, 60), background=0) + 400 + tex
    img = rng.poisson(np.clip(img, 0, None)).astype(float)
    m = match_spots(detect_spots(img), centres, 2.0)
    assert m.recall >= 0.9 and m.precision >= 0.85, (m.precision, m.recall)


def test_radius_auto_measures_the_punctum_size():
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(5), np.arange(5), indexing="ij"), -1).reshape(-1, 2)
    centres = 14 + 24 * grid + rng.uniform(-3, 3, (25, 2))
    for sigma in (0.9, 1.6, 2.5):
        img = rng.poisson(gaussians((128, 128), centres, [400] * 25, sigma=sigma, background=50))
        df = detect_spots(img.astype(float), radius_px="auto")
        r = df.attrs["radius_px"]
        assert df.attrs["radius_auto"] is True
        assert abs(r / (np.sqrt(2) * sigma) - 1) <= 0.2, (sigma, r)
        assert match_spots(df, centres, 2.0).f1 >= 0.9


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
    """Target F1 >= 0.95 (one-to-one within 3 px) with radius_px 1.4 from the PROVENANCE's
    bead fits (measured: F1 0.970, precision 0.983, recall 0.958)."""
    img, truth = _beads()
    df = detect_spots(img, radius_px=1.4)
    m = match_spots(df, truth, 3.0)
    assert m.f1 >= 0.95, (m.f1, m.precision, m.recall)
    assert np.median(m.distances) < 0.5


def _real_set(folder, name, truth_dir="truth"):
    base = DATA / folder
    if not (base / "images" / f"{name}.tif").exists():
        pytest.skip(f"shared/data/{folder} not available")
    import tifffile

    truth = pd.read_csv(base / truth_dir / f"{name}.csv")[["y", "x"]].to_numpy()
    return tifffile.imread(base / "images" / f"{name}.tif"), truth


def test_real_piscis_autofluorescent_tissue_target():
    """799 manual points on tissue with strong autofluorescence: target F1 >= 0.70 (Big-FISH:
    0.63 at its best radius; measured here: F1 0.865, precision 0.81, recall 0.93)."""
    img, truth = _real_set("spots_piscis", "piscis_af_cy3")
    m = match_spots(detect_spots(img, radius_px=1.2), truth, 3.0)
    assert m.f1 >= 0.70, (m.f1, m.precision, m.recall)


@pytest.mark.xfail(
    strict=True,
    reason="target F1 >= 0.88 on the crowd truth not met: measured 0.851 (recall 0.98, "
    "precision 0.75: the 30 unmatched detections have SNR 20-150, most are visible spots "
    "fewer than 5 of 20 workers clicked; see the set's PROVENANCE caveat)",
)
def test_real_rca_target():
    img, truth = _real_set("spots_rca", "rca_cy5_300")
    m = match_spots(detect_spots(img, radius_px=1.65), truth, 3.0)
    assert m.recall >= 0.95, (m.precision, m.recall)
    assert m.f1 >= 0.88, (m.f1, m.precision, m.recall)


@pytest.mark.parametrize(
    ("loader", "radius", "psf_sigma"),
    [("beads", 1.4, 0.97), ("piscis", 1.2, 0.86), ("rca", 1.65, 1.17)],
)
def test_real_radius_auto(loader, radius, psf_sigma):
    """radius_px: auto lands within 20 % of the set's fitted PSF sigma (PROVENANCE) and loses
    at most 0.02 F1 against the given radius."""
    if loader == "beads":
        img, truth = _beads()
    elif loader == "piscis":
        img, truth = _real_set("spots_piscis", "piscis_af_cy3")
    else:
        img, truth = _real_set("spots_rca", "rca_cy5_300")
    auto = detect_spots(img, radius_px="auto")
    sigma = auto.attrs["radius_px"] / np.sqrt(2)
    assert abs(sigma / psf_sigma - 1) <= 0.2, sigma
    f1_auto = match_spots(auto, truth, 3.0).f1
    f1_given = match_spots(detect_spots(img, radius_px=radius), truth, 3.0).f1
    assert f1_auto >= f1_given - 0.02, (f1_auto, f1_given)


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
        f1.append(match_spots(spots, sim_mod.optical_puncta(sim.spots), 2.0).f1)
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
    """Measured on seeds 501/502 (optical puncta, 2 px): F1 0.846 / 0.532 (normal / hard),
    count r 0.914 / 0.806, marker mean vs true mean r 1.000 (target >= 0.99: met). Regression
    guards a little below the measured levels; the marker assertion is the target itself."""
    f1_n, r_n, rm_n = _sim_scores("normal")
    f1_h, r_h, rm_h = _sim_scores("hard")
    assert f1_n >= 0.82 and r_n >= 0.89, (f1_n, r_n)
    assert f1_h >= 0.50 and r_h >= 0.78, (f1_h, r_h)
    assert rm_n >= 0.99 and rm_h >= 0.99, (rm_n, rm_h)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="targets optical F1 >= 0.95 / count r >= 0.97 at normal not met: measured F1 0.876 / "
    "r 0.952 (seeds 601-604), 0.866 / 0.949 (1301-1304), 0.846 / 0.914 (501/502); precision "
    "0.996: EVs below SNR 5 (the Rose floor of the automatic threshold) and EVs within ~3 px "
    "of a brighter one are missed",
)
def test_simulated_normal_targets():
    f1, r, _ = _sim_scores("normal")
    assert f1 >= 0.95 and r >= 0.97


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="targets optical F1 >= 0.85 / count r >= 0.90 at hard not met: measured F1 0.558 / "
    "r 0.830 (seeds 601-604), 0.539 / 0.820 (1301-1304), 0.532 / 0.806 (501/502); precision "
    "0.996 but most of the hard setting's EVs lie below SNR 5 on granular autofluorescence",
)
def test_simulated_hard_targets():
    f1, r, _ = _sim_scores("hard")
    assert f1 >= 0.85 and r >= 0.90


def test_a_saturated_blob_does_not_set_the_threshold():
    """A clipped blob (a plateau at the camera's maximum) takes no part in setting the
    automatic threshold: the puncta found and the threshold are those of the image without
    it (within 10 %)."""
    rng = np.random.default_rng(5)
    centres = rng.uniform(10, 246, (60, 2))
    base = gaussians((256, 256), centres, rng.uniform(150, 300, 60), background=200)
    yy, xx = np.mgrid[:256, :256]
    blob = np.hypot(yy - 128, xx - 128) < 14
    clean = rng.poisson(base).astype(float)
    sat = clean.copy()
    sat[blob] += 20000
    sat = np.minimum(sat, 4095)  # a 12-bit camera clips the blob
    keep = np.hypot(centres[:, 0] - 128, centres[:, 1] - 128) > 25
    a, b = detect_spots(clean), detect_spots(sat)
    assert b.attrs["n_saturated"] == int(blob.sum()) and a.attrs["n_saturated"] == 0
    assert b.attrs["threshold"] == pytest.approx(a.attrs["threshold"], rel=0.1)
    assert match_spots(b, centres[keep], 2.0).recall >= 0.95
