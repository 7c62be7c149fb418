"""Accuracy of puncta detection and per-cell measurement against ground truth.

Usage::

    python scripts/eval_spots.py [--seeds 601 602 603 604] [--png DIR] [--detect '{"k": v}']
    python scripts/eval_spots.py --seeds 601 602 603 604 --detect '{"split_merged": true}'

Prints, per difficulty (normal, hard; conditions ev_high / ev_low alternate over the seeds):
punctum precision / recall / F1 (one-to-one within 2 px, :func:`match_spots`; every EV of the
truth, aggregate members included), ``f1_optical`` (the detected peaks against the optical
puncta: each sub-resolution aggregate one punctum at its centroid), the false
positives among detected peaks and among decomposition rows, per-cell count Pearson r
(cluster-aware ``exo_spot_estimate`` and raw ``exo_spot_count`` vs truth ``n_spots``, truth
labels given), marker ``<m>_mean_intensity`` vs the truth ``<m>_true_mean`` (noise-free image
mean) and vs the biological ``<m>_level``, auto-positivity agreement; then the F1 on the real
beads (shared/data/spots_beads, -2 px offset) and the puncta found on the two spotiflow images
(no truth: a sanity count). Use seeds you did not tune on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_exouptake.measure import apply_positivity, measure_cells
from napari_exouptake.simulate import simulate_image
from napari_exouptake.spots import detect_spots, match_spots

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONDITIONS = ("ev_high", "ev_low")


def match_scores(m) -> dict:
    """Counts, precision / recall / F1 and localisation error of a :class:`SpotMatch`."""
    return {
        "n_truth": m.n_truth,
        "n_pred": m.n_pred,
        "precision": m.precision,
        "recall": m.recall,
        "f1": m.f1,
        "loc_err_px": m.mean_distance,
    }


def evaluate_sim(seed: int, difficulty: str, condition: str, detect_kw: dict | None = None) -> dict:
    """Scores of one simulated image (see the module docstring)."""
    detect_kw = detect_kw or {}
    sim = simulate_image(seed, condition=condition, difficulty=difficulty)
    names = [n.lower() for n in sim.channel_names]
    exo = sim.image[names.index("pkh26")]
    t0 = time.perf_counter()
    spots = detect_spots(exo, **detect_kw)
    t_det = time.perf_counter() - t0
    m = match_spots(spots, sim.spots, 2.0)
    tp = np.zeros(len(spots), bool)
    tp[m.pred_index] = True
    det = spots["detected"].to_numpy(bool)
    markers = {
        n: sim.image[i] for i, n in enumerate(names) if n not in ("dapi", "cellmask", "pkh26")
    }
    cells = measure_cells(
        sim.cells,
        {"exosome": exo, **markers},
        spots,
        nuclei=sim.nuclei,
        pixel_size_um=sim.pixel_size_um,
    )
    truth = sim.truth_cells.set_index("cell_id").loc[cells["cell_id"]]
    # optical puncta: an aggregate's EVs (jittered ~1.1 px, below the resolution) are one
    # optical object; its truth is their brightness-weighted centroid, and only the detected
    # peaks (not the cluster-estimate rows) are scored against it
    t = sim.spots
    w = t["amplitude"] * t["sigma_px"] ** 2
    agg = t[t["cluster_id"] > 0].assign(w=w)
    cen = (
        agg.assign(wy=agg["y"] * agg["w"], wx=agg["x"] * agg["w"])
        .groupby("cluster_id")[["wy", "wx", "w"]]
        .sum()
    )
    optical = np.r_[
        t.loc[t["cluster_id"] == 0, ["y", "x"]].to_numpy(),
        np.c_[cen["wy"] / cen["w"], cen["wx"] / cen["w"]],
    ]
    m_opt = match_spots(spots[det], optical, 2.0)
    out = {
        "difficulty": difficulty,
        "condition": condition,
        "seed": seed,
        **match_scores(m),
        "f1_optical": m_opt.f1,
        "fp_detected": int((~tp & det).sum()),
        "fp_split": int((~tp & ~det).sum()),
        "n_split": int((~det).sum()),
        "sum_est_over_truth": float(spots["n_estimate"].sum() / max(m.n_truth, 1)),
        "r_count_estimate": np.corrcoef(cells["exo_spot_estimate"], truth["n_spots"])[0, 1],
        "r_count_raw": np.corrcoef(cells["exo_spot_count"], truth["n_spots"])[0, 1],
        "t_detect_s": t_det,
    }
    called, _ = apply_positivity(cells, None, list(markers))
    for name in markers:
        meas = cells[f"{name}_mean_intensity"]
        out[f"r_{name}_true_mean"] = np.corrcoef(meas, truth[f"{name}_true_mean"])[0, 1]
        out[f"r_{name}_level"] = np.corrcoef(meas, truth[f"{name}_level"])[0, 1]
        out[f"{name}_pos_agree"] = float(
            (called[f"{name}_positive"].to_numpy() == truth[f"{name}_positive"].to_numpy()).mean()
        )
    return out


def beads() -> tuple[np.ndarray, np.ndarray] | None:
    """The real bead image and its 118 annotated positions (documented -2 px offset)."""
    folder = DATA / "spots_beads"
    if not (folder / "beads_300pxroi.png").exists():
        return None
    import imageio.v3 as iio

    img = iio.imread(folder / "beads_300pxroi.png")
    ann = pd.read_csv(folder / "bead_annotations_20180517.csv")
    return img, np.c_[ann["row"] - 2, ann["col"] - 2]


def evaluate_beads(detect_kw: dict | None = None) -> dict | None:
    """Scores on the real beads."""
    b = beads()
    if b is None:
        return None
    img, truth = b
    spots = detect_spots(img, **(detect_kw or {}))
    return match_scores(match_spots(spots, truth, 2.0))


def spotiflow_counts(detect_kw: dict | None = None) -> dict:
    """Puncta found on the spotiflow images (no truth)."""
    out = {}
    for name in ("img_hybiss_2d.tif", "img_terra_2d.tif"):
        f = DATA / "spots_spotiflow" / name
        if f.exists():
            import tifffile

            im = tifffile.imread(f)
            out[f.stem] = len(detect_spots(im, **(detect_kw or {})))
    return out


def overlay_png(path: Path, image: np.ndarray, spots: pd.DataFrame, truth=None, title="") -> None:
    """Image with detections (red) and truth (green circles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = np.percentile(image, [1, 99.8])
    fig, ax = plt.subplots(figsize=(9, 9))
    ax.imshow(np.clip((image - lo) / max(hi - lo, 1e-9), 0, 1), cmap="gray")
    if truth is not None:
        ax.scatter(
            truth[:, 1],
            truth[:, 0],
            s=50,
            facecolors="none",
            edgecolors="lime",
            linewidths=0.8,
            label="truth",
        )
    ax.scatter(spots["x"], spots["y"], s=6, c="red", label="detected")
    ax.legend(loc="upper right")
    ax.set_title(title)
    ax.set_axis_off()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[601, 602, 603, 604])
    ap.add_argument("--png", type=Path, default=None, help="write overlay PNGs into DIR")
    ap.add_argument(
        "--detect", type=json.loads, default={}, help="JSON dict of detect_spots keyword arguments"
    )
    ap.add_argument("--difficulties", nargs="+", default=["normal", "hard"])
    args = ap.parse_args()
    rows = [
        evaluate_sim(s, d, CONDITIONS[i % 2], args.detect)
        for d in args.difficulties
        for i, s in enumerate(args.seeds)
    ]
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(df.round(3).to_string(index=False))
    print("\nmeans per difficulty:")
    print(df.drop(columns=["condition", "seed"]).groupby("difficulty").mean().round(3).T)
    b = evaluate_beads(args.detect)
    print(
        "\nreal beads (118 annotated, -2 px offset):",
        {k: round(v, 3) for k, v in (b or {}).items()},
    )
    print("spotiflow images, puncta found (no truth):", spotiflow_counts(args.detect))
    if args.png is not None:
        args.png.mkdir(parents=True, exist_ok=True)
        sim = simulate_image(args.seeds[0], condition="ev_high", difficulty="hard")
        exo = sim.image[2]
        sp = detect_spots(exo, **args.detect)
        m = match_spots(sp, sim.spots, 2.0)
        overlay_png(
            args.png / "sim_hard.png",
            exo,
            sp,
            sim.spots[["y", "x"]].to_numpy(),
            f"simulated hard, F1 {m.f1:.3f}",
        )
        bd = beads()
        if bd is not None:
            sp = detect_spots(bd[0], **args.detect)
            overlay_png(
                args.png / "beads.png",
                bd[0],
                sp,
                bd[1],
                f"beads, F1 {match_spots(sp, bd[1], 2.0).f1:.3f}",
            )
        for name in ("img_hybiss_2d.tif", "img_terra_2d.tif"):
            f = DATA / "spots_spotiflow" / name
            if f.exists():
                import tifffile

                im = tifffile.imread(f)
                sp = detect_spots(im, **args.detect)
                overlay_png(
                    args.png / f"{f.stem}.png", im, sp, title=f"{name}: {len(sp)} puncta (no truth)"
                )


if __name__ == "__main__":
    main()
