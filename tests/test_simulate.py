"""Tests for the assay simulator (napari_exouptake.simulate) and the bundled sample data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_exouptake import simulate as sim_mod
from napari_exouptake.commands.simulate import main_simulate
from napari_exouptake.simulate import (
    CONDITIONS,
    difficulty_value,
    image_seed,
    simulate_image,
    write_dataset,
)

SHAPE = (192, 192)


@pytest.fixture(scope="module")
def sims() -> dict[str, sim_mod.SimulatedImage]:
    """One image per condition, same seed (so same cells), normal difficulty."""
    return {c: simulate_image(11, condition=c, shape=SHAPE) for c in CONDITIONS}


def test_determinism_same_seed_identical():
    a = simulate_image(3, condition="ev_low", shape=(128, 128))
    b = simulate_image(3, condition="ev_low", shape=(128, 128))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    pd.testing.assert_frame_equal(a.spots, b.spots)
    pd.testing.assert_frame_equal(a.truth_cells, b.truth_cells)


def test_different_seed_differs():
    a = simulate_image(3, condition="ev_low", shape=(128, 128))
    b = simulate_image(4, condition="ev_low", shape=(128, 128))
    assert not np.array_equal(a.cells, b.cells)
    assert not np.array_equal(a.image, b.image)


def test_no_global_rng_use():
    np.random.seed(0)  # noqa: NPY002
    before = np.random.random()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    simulate_image(1, shape=(96, 96))
    assert np.random.random() == before  # noqa: NPY002


def test_image_layout_and_dtypes(sims):
    s = sims["ev_high"]
    assert s.image.shape == (5, *SHAPE)
    assert s.image.dtype == np.uint16
    assert s.channel_names == ("DAPI", "CellMask", "PKH26", "CD31", "COL1")
    assert s.pixel_size_um == pytest.approx(0.325)
    assert s.cells.shape == SHAPE and s.cells.dtype in (np.uint16, np.uint32)
    assert s.nuclei.shape == SHAPE and s.nuclei.dtype == s.cells.dtype
    assert {"y", "x", "cell_id", "amplitude"} <= set(s.spots.columns)
    assert {"cell_id", "n_spots", "cd31_level", "col1_level"} <= set(s.truth_cells.columns)
    # camera offset present, no saturation
    assert s.image.min() > 50 and s.image.max() < 65535


def test_ground_truth_consistency(sims):
    for s in sims.values():
        cells, sp, tc = s.cells, s.spots, s.truth_cells
        n = int(cells.max())
        # labels are 1..N, every cell listed once (including cells with no puncta)
        assert set(np.unique(cells)) - {0} == set(range(1, n + 1))
        assert tc["cell_id"].tolist() == list(range(1, n + 1))
        # each truth punctum's cell_id is the label at its rounded position
        ry, rx = np.round(sp["y"]).astype(int), np.round(sp["x"]).astype(int)
        assert (sp["y"].between(0, SHAPE[0] - 1)).all() and (sp["x"].between(0, SHAPE[1] - 1)).all()
        np.testing.assert_array_equal(cells[ry, rx], sp["cell_id"].to_numpy())
        # truth_cells.n_spots counts the puncta list exactly
        counts = np.bincount(sp["cell_id"], minlength=n + 1)[1:]
        np.testing.assert_array_equal(tc["n_spots"].to_numpy(), counts)
        assert tc["n_spots"].sum() == (sp["cell_id"] > 0).sum()
        # positions are sub-pixel (not snapped to the grid)
        if len(sp) > 10:
            assert np.abs(sp["y"] - np.round(sp["y"])).max() > 0.1


def test_one_nucleus_per_cell_inside_it(sims):
    from skimage.measure import label as cc_label

    s = sims["ev_low"]
    cells, nuclei = s.cells, s.nuclei
    n = int(cells.max())
    # every nucleus pixel lies in the cell with the same id
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])
    # every cell has exactly one nucleus, and it is one connected piece
    assert set(np.unique(nuclei)) - {0} == set(range(1, n + 1))
    comp = cc_label(nuclei, background=0, connectivity=1)
    assert comp.max() == n
    # nuclei are a plausible fraction of the cell (not the whole cell, not a speck)
    frac = (
        np.bincount(nuclei.ravel(), minlength=n + 1)[1:]
        / np.bincount(cells.ravel(), minlength=n + 1)[1:]
    )
    assert 0.08 < np.median(frac) < 0.5


def test_cells_touch_and_are_irregular(sims):
    cells = sims["ev_high"].cells.astype(np.int64)
    right = (cells[:, :-1] > 0) & (cells[:, 1:] > 0) & (cells[:, :-1] != cells[:, 1:])
    down = (cells[:-1] > 0) & (cells[1:] > 0) & (cells[:-1] != cells[1:])
    pairs = set(zip(cells[:, :-1][right], cells[:, 1:][right], strict=True)) | set(
        zip(cells[:-1][down], cells[1:][down], strict=True)
    )
    assert len(pairs) >= int(cells.max())  # confluent: many touching pairs
    # gaps of background exist too
    assert 0.03 < (cells == 0).mean() < 0.7
    # not discs: solidity spread and elongation
    from skimage.measure import regionprops

    props = regionprops(cells)
    ecc = np.array([p.eccentricity for p in props])
    sol = np.array([p.solidity for p in props])
    assert ecc.std() > 0.05 and np.median(sol) < 0.97


def test_cell_diameter_matches_request():
    """Median equivalent-circle diameter (the Cellpose convention) is close to the request."""
    for d in (30.0, 45.0):
        s = simulate_image(1, shape=(256, 256), cell_diameter_px=d)
        eq = 2 * np.sqrt(s.truth_cells["area_px"] / np.pi)
        assert np.median(eq) == pytest.approx(d, rel=0.15)


def test_conditions_order_of_uptake(sims):
    means = [sims[c].truth_cells["n_spots"].mean() for c in CONDITIONS]
    assert means[0] < means[1] < means[2] < means[3], means
    assert means[0] < 0.1  # untreated: rare specks at most
    assert means[3] > 5.0
    # more marker-positive cells with EVs
    pos = [sims[c].truth_cells["cd31_positive"].mean() for c in ("untreated", "ev_high")]
    assert pos[1] > pos[0]


def test_aggregates_and_extracellular_puncta(sims):
    sp = sims["ev_high"].spots
    assert (sp["cell_id"] == 0).sum() >= 1
    sizes = sp.loc[sp["cluster_id"] > 0].groupby("cluster_id").size()
    assert len(sizes) > 0 and sizes.between(2, 6).all()
    # members of an aggregate lie within a few pixels of each other
    spread = sp.loc[sp["cluster_id"] > 0].groupby("cluster_id")[["y", "x"]].std().max(axis=1)
    assert spread.median() < 3.0


def test_signal_matches_truth(sims):
    """Exosome channel is brighter at truth puncta than at random cell pixels."""
    s = sims["ev_high"]
    exo = s.image[2].astype(float)
    ry, rx = np.round(s.spots["y"]).astype(int), np.round(s.spots["x"]).astype(int)
    yy, xx = np.nonzero(s.cells > 0)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, yy.size, 500)
    assert np.median(exo[ry, rx]) > np.median(exo[yy[pick], xx[pick]]) + 50
    # nuclei brighter in DAPI than cytoplasm
    dapi = s.image[0].astype(float)
    assert dapi[s.nuclei > 0].mean() > 3 * dapi[(s.cells > 0) & (s.nuclei == 0)].mean()


def test_hard_is_lower_snr_but_detectable():
    normal = simulate_image(5, condition="ev_high", difficulty="normal", shape=SHAPE)
    hard = simulate_image(5, condition="ev_high", difficulty="hard", shape=SHAPE)
    easy = simulate_image(5, condition="ev_high", difficulty="easy", shape=SHAPE)
    p10 = {
        k: np.percentile(v.spots["snr"], 10)
        for k, v in (("easy", easy), ("normal", normal), ("hard", hard))
    }
    assert p10["easy"] > p10["normal"] > p10["hard"]
    # hard: the dimmest typical punctum sits ~3-5x above the noise
    assert 2.5 < p10["hard"] < 6.5, p10
    # the SNR column is honest: measured noise in a flat region matches the model
    assert hard.params["illumination_min"] < normal.params["illumination_min"] + 0.05
    assert hard.params["autofluorescence_e"] > normal.params["autofluorescence_e"]


def test_snr_column_matches_measured_noise():
    """The noise model behind ``snr`` agrees with the pixel noise measured in background."""
    from scipy import ndimage as ndi

    s = simulate_image(8, condition="untreated", difficulty="hard", shape=(256, 256))
    # background far from cells and puncta, so only noise varies between neighbouring pixels
    far = ndi.distance_transform_edt(s.cells == 0) > 6
    exo = s.image[2].astype(float)
    pair = far[:, 1:] & far[:, :-1]
    assert pair.sum() > 500
    diff = (exo[:, 1:] - exo[:, :-1])[pair]
    measured = diff.std() / np.sqrt(2)
    gain, read = s.params["gain_adu_per_e"], s.params["read_noise_e"]
    level_e = (ndi.uniform_filter(exo, 9)[:, 1:][pair] - s.params["offset_adu"]) / gain
    model = np.sqrt(np.mean(gain**2 * (np.clip(level_e, 0, None) + read**2)))
    assert measured == pytest.approx(model, rel=0.15)


def test_difficulty_values_and_errors():
    assert difficulty_value("easy") == 0.0
    assert difficulty_value("HARD") == 1.0
    assert difficulty_value(0.3) == 0.3
    with pytest.raises(ValueError, match="difficulty"):
        difficulty_value("extreme")
    with pytest.raises(ValueError, match="difficulty"):
        difficulty_value(1.5)
    with pytest.raises(ValueError, match="condition"):
        simulate_image(0, condition="treated")
    with pytest.raises(ValueError, match="shape"):
        simulate_image(0, shape=(32, 32))
    with pytest.raises(ValueError, match="cell_diameter_px"):
        simulate_image(0, cell_diameter_px=5)
    with pytest.raises(ValueError, match="n_images"):
        write_dataset("unused", n_images=0)


def test_custom_markers_and_3d():
    s = simulate_image(2, shape=(96, 96), markers=("VWF",), n_z=5, condition="ev_high")
    assert s.channel_names == ("DAPI", "CellMask", "PKH26", "VWF")
    assert s.image.shape == (4, 5, 96, 96)
    assert s.cells.shape == (5, 96, 96) and s.nuclei.shape == (5, 96, 96)
    assert "z" in s.spots.columns and "vwf_level" in s.truth_cells.columns
    rz, ry, rx = (np.round(s.spots[c]).astype(int) for c in ("z", "y", "x"))
    np.testing.assert_array_equal(s.cells[rz, ry, rx], s.spots["cell_id"].to_numpy())
    inside = s.nuclei > 0
    np.testing.assert_array_equal(s.cells[inside], s.nuclei[inside])


def test_image_seed_independent_of_size():
    assert image_seed(0, 3) == image_seed(0, 3)
    assert image_seed(0, 3) != image_seed(1, 3) != image_seed(0, 4)


def test_write_dataset_layout(tmp_path):
    out = write_dataset(tmp_path / "ds", n_images=4, seed=1, shape=(96, 96))
    names = [f"{c}_{i:03d}" for i, c in enumerate(CONDITIONS)]
    for name in names:
        assert (out / "images" / f"{name}.ome.tif").is_file()
        assert (out / "labels" / f"{name}_cells.tif").is_file()
        assert (out / "labels" / f"{name}_nuclei.tif").is_file()
    for f in ("truth_spots.csv", "truth_cells.csv", "config.yaml", "conditions.csv"):
        assert (out / f).is_file()

    spots = pd.read_csv(out / "truth_spots.csv")
    cells = pd.read_csv(out / "truth_cells.csv")
    conds = pd.read_csv(out / "conditions.csv")
    assert list(spots.columns[:5]) == ["image", "y", "x", "cell_id", "amplitude"]
    assert {"image", "cell_id", "n_spots", "cd31_level", "col1_level"} <= set(cells.columns)
    assert conds["image"].tolist() == names
    assert conds["condition"].tolist() == list(CONDITIONS)
    assert {"image", "condition", "dose"} <= set(conds.columns)

    # the image file reads back with channel names and pixel size, equal to the simulation
    name = names[3]
    with tifffile.TiffFile(out / "images" / f"{name}.ome.tif") as tif:
        data = tif.asarray()
        xml = tif.ome_metadata
    sim = simulate_image(image_seed(1, 3), condition="ev_high", shape=(96, 96))
    np.testing.assert_array_equal(data.reshape(sim.image.shape), sim.image)
    for ch in sim.channel_names:
        assert f'Name="{ch}"' in xml
    assert 'PhysicalSizeX="0.325"' in xml
    labels = tifffile.imread(out / "labels" / f"{name}_cells.tif")
    np.testing.assert_array_equal(labels, sim.cells)
    sub = cells[cells["image"] == name]
    np.testing.assert_array_equal(sub["n_spots"].to_numpy(), sim.truth_cells["n_spots"].to_numpy())
    # image i does not depend on n_images
    out2 = write_dataset(tmp_path / "ds2", n_images=1, seed=1, shape=(96, 96))
    np.testing.assert_array_equal(
        tifffile.imread(out2 / "images" / "untreated_000.ome.tif"),
        tifffile.imread(out / "images" / "untreated_000.ome.tif"),
    )


def test_config_yaml_loads(tmp_path):
    out = write_dataset(tmp_path / "ds", n_images=1, seed=0, shape=(96, 96))
    config = pytest.importorskip("napari_exouptake.config")
    cfg = config.load_config(out / "config.yaml")
    resolved = cfg.channels.resolve(("DAPI", "CellMask", "PKH26", "CD31", "COL1"))
    assert (resolved.nucleus, resolved.cell, resolved.exosome) == (0, 1, 2)
    assert resolved.markers == {"cd31": 3, "col1": 4}
    assert cfg.pixel_size_um == pytest.approx(0.325)
    assert cfg.segmentation.model == "demo-cells"
    assert cfg.segmentation.diameter_px == pytest.approx(36)
    assert cfg.positivity.control_condition == "dye_only"
    assert cfg.conditions["ev_high_*"] == "ev_high"
    assert cfg.channels.markers["cd31"].kind == "angiogenesis"
    assert cfg.channels.markers["col1"].kind == "collagen"


def test_main_simulate_summary(tmp_path):
    text = main_simulate(tmp_path / "cli", n_images=2, seed=0, difficulty="easy", size=96)
    assert "untreated" in text and "dye_only" in text and str(tmp_path / "cli") in text
    assert len(list((tmp_path / "cli" / "images").glob("*.ome.tif"))) == 2


def test_bundled_sample_data_and_hook():
    from napari_exouptake._sample_data import SAMPLE_DIR, make_sample_data

    if not (SAMPLE_DIR / "images").is_dir():
        pytest.skip("bundled sample data not generated (scripts/make_sample_data.py)")
    conds = pd.read_csv(SAMPLE_DIR / "conditions.csv")
    assert set(conds["condition"]) == set(CONDITIONS)
    size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert size < 8.5e6
    layers = make_sample_data()
    kinds = [lt[2] for lt in layers]
    assert kinds.count("image") == 5 and kinds[-1] == "labels"
    names = [lt[1]["name"] for lt in layers]
    assert names[:5] == ["DAPI", "CellMask", "PKH26", "CD31", "COL1"]
    for data, meta, kind in layers:
        assert data.ndim == 2
        assert meta["scale"] == pytest.approx((0.325, 0.325))
        if kind == "image":
            assert meta["blending"] == "additive"


def test_aggregate_fraction_grows_with_difficulty():
    """Some clustered puncta at normal (10-25 % of puncta in aggregates), more at hard."""
    frac = {}
    for d in ("easy", "normal", "hard"):
        s = simulate_image(21, condition="ev_high", difficulty=d, shape=(256, 256))
        frac[d] = float((s.spots["cluster_id"] > 0).mean())
        assert s.params["aggregate_fraction"] == pytest.approx(0.05 + 0.25 * difficulty_value(d))
    assert frac["easy"] < frac["normal"] < frac["hard"], frac
    assert 0.08 < frac["normal"] < 0.3 and 0.2 < frac["hard"] < 0.42, frac


def test_true_mean_is_noise_free_cell_mean(sims):
    """``<marker>_true_mean`` is the expected cell mean; the measured mean of the noisy image
    agrees with it (Poisson noise averages out over a cell), not with the biological level
    (multiplied by illumination)."""
    s = sims["ev_high"]
    tc = s.truth_cells
    lab = s.cells.ravel().astype(np.int64)
    area = np.bincount(lab)[1:]
    for k, name in enumerate(("cd31", "col1")):
        img = s.image[3 + k].ravel().astype(float)
        meas = np.bincount(lab, weights=img)[1:] / area
        true = tc[f"{name}_true_mean"].to_numpy()
        assert np.corrcoef(meas, true)[0, 1] > 0.995
        # a cell's mean differs from the truth by about the shot noise over the cell
        assert np.median(np.abs(meas - true) / true) < 0.01
        assert np.corrcoef(meas, tc[f"{name}_level"])[0, 1] < 0.99


def test_spots_per_cell_override():
    s = simulate_image(22, condition="ev_low", shape=(256, 256), spots_per_cell=30)
    assert s.truth_cells["n_spots"].mean() == pytest.approx(30, rel=0.3)
    with pytest.raises(ValueError, match="spots_per_cell"):
        simulate_image(0, shape=(96, 96), spots_per_cell=-1)


def test_normal_autofluorescence_smoother_than_hard():
    """Punctum-scale texture of the autofluorescence (band-passed exosome channel inside cells
    of a no-EV image) is well below a typical punctum at normal, comparable at hard."""
    from napari_exouptake.spots import filter_image

    out = {}
    for d in ("normal", "hard"):
        s = simulate_image(23, condition="untreated", difficulty=d, shape=(256, 256))
        f = filter_image(s.image[2].astype(float))[s.cells > 0]
        mad = 1.4826 * np.median(np.abs(f - np.median(f)))
        amp = 0.9 * s.params["punctum_amplitude_median_e"]  # ADU at full illumination
        out[d] = mad / amp
    assert out["normal"] < 0.06 and out["hard"] > 1.5 * out["normal"], out
