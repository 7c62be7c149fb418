"""Accuracy of puncta detection and per-cell measurement: real annotated sets, frames without
puncta, and the simulator.

Usage::

    python scripts/eval_spots.py [--seeds 601 602 603 604] [--difficulties normal hard]
                                 [--png DIR] [--detect '{"fdr": 0.05}'] [--no-sim]

Prints, with the default settings (only ``radius_px`` per real set, as its PROVENANCE gives,
and ``radius_px="auto"`` beside it):

* real sets (``../shared/data``: beads, spots_piscis, spots_rca): precision / recall / F1,
  one-to-one within 3 px; with ``auto`` the estimated PSF sigma against the set's fitted one;
* the two unlabelled spotiflow images: number of puncta (look at ``--png`` overlays);
* frames without puncta (:func:`napari_exouptake.simulate.noise_frame`, four kinds, seeds 0-2):
  false puncta per 512 x 512 frame;
* the simulator (ev_high / ev_low alternate over the seeds): F1 on optical puncta
  (:func:`napari_exouptake.simulate.optical_puncta`, within 2 px), per-cell count Pearson r of
  the cluster-aware ``exo_spot_estimate`` against the true EV count (truth labels given),
  marker mean vs the noise-free ``<m>_true_mean``, the radius estimate against the truth.

Use seeds you did not tune on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_exouptake.measure import measure_cells
from napari_exouptake.reference_sets import SPOT_SETS, load_spot_set, load_spotiflow
from napari_exouptake.simulate import NOISE_KINDS, noise_frame, optical_puncta, simulate_image
from napari_exouptake.spots import detect_spots, match_spots

CONDITIONS = ("ev_high", "ev_low")


def evaluate_real(detect_kw: dict) -> list[dict]:
    """Scores on the real annotated sets, given radius and ``auto``."""
    rows = []
    for name in SPOT_SETS:
        s = load_spot_set(name)
        if s is None:
            continue
        for radius in (s.radius_px, "auto"):
            t0 = time.perf_counter()
            df = detect_spots(s.image, radius_px=radius, **detect_kw)
            dt = time.perf_counter() - t0
            m = match_spots(df, s.truth, 3.0)
            rows.append(
                {
                    "set": name,
                    "radius_px": radius,
                    "n_truth": m.n_truth,
                    "n_pred": m.n_pred,
                    "precision": m.precision,
                    "recall": m.recall,
                    "f1": m.f1,
                    "psf_sigma_used": df.attrs["radius_px"] / np.sqrt(2),
                    "psf_sigma_truth": s.psf_sigma_px,
                    "t_s": dt,
                }
            )
    return rows


def noise_counts(detect_kw: dict, seeds=(0, 1, 2)) -> dict[str, list[int]]:
    """False puncta on frames without puncta, per kind and seed."""
    return {
        k: [len(detect_spots(noise_frame(k, s), **detect_kw)) for s in seeds] for k in NOISE_KINDS
    }


def evaluate_sim(seed: int, difficulty: str, condition: str, detect_kw: dict) -> dict:
    """Scores of one simulated image (see the module docstring)."""
    sim = simulate_image(seed, condition=condition, difficulty=difficulty)
    names = [n.lower() for n in sim.channel_names]
    exo = sim.image[names.index("pkh26")]
    t0 = time.perf_counter()
    spots = detect_spots(exo, **detect_kw)
    t_det = time.perf_counter() - t0
    m_opt = match_spots(spots, optical_puncta(sim.spots), 2.0)
    markers = {
        n: sim.image[i] for i, n in enumerate(names) if n not in ("dapi", "cellmask", "pkh26")
    }
    cells = measure_cells(sim.cells, {"exosome": exo, **markers}, spots, nuclei=sim.nuclei)
    truth = sim.truth_cells.set_index("cell_id").loc[cells["cell_id"]]
    out = {
        "difficulty": difficulty,
        "condition": condition,
        "seed": seed,
        "n_optical": m_opt.n_truth,
        "n_pred": m_opt.n_pred,
        "precision_opt": m_opt.precision,
        "recall_opt": m_opt.recall,
        "f1_optical": m_opt.f1,
        "sum_est_over_truth": float(spots["n_estimate"].sum() / max(len(sim.spots), 1)),
        "r_count_estimate": np.corrcoef(cells["exo_spot_estimate"], truth["n_spots"])[0, 1],
        "t_detect_s": t_det,
    }
    for name in markers:
        out[f"r_{name}_true_mean"] = np.corrcoef(
            cells[f"{name}_mean_intensity"], truth[f"{name}_true_mean"]
        )[0, 1]
    auto = detect_spots(exo, radius_px="auto", **detect_kw)
    out["psf_sigma_auto"] = auto.attrs["radius_px"] / np.sqrt(2)
    out["psf_sigma_truth"] = float(np.median(sim.spots["sigma_px"]))
    out["f1_optical_auto"] = match_spots(auto, optical_puncta(sim.spots), 2.0).f1
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
            truth[:, 1], truth[:, 0], s=50, facecolors="none", edgecolors="lime", label="truth"
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
    ap.add_argument("--difficulties", nargs="+", default=["normal", "hard"])
    ap.add_argument("--png", type=Path, default=None, help="write overlay PNGs into DIR")
    ap.add_argument(
        "--detect", type=json.loads, default={}, help="JSON dict of detect_spots keyword arguments"
    )
    ap.add_argument("--no-sim", action="store_true", help="skip the simulator")
    args = ap.parse_args()
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    real = pd.DataFrame(evaluate_real(args.detect))
    print("== real annotated sets (3 px, one-to-one) ==")
    print(real.round(3).to_string(index=False) if len(real) else "shared/data absent")
    print("\n== spotiflow images (no truth): puncta ==")
    for name, img in load_spotiflow().items():
        print(f"{name}: {len(detect_spots(img, **args.detect))}")
    print("\n== frames without puncta (512 x 512, seeds 0-2): false puncta ==")
    for kind, n in noise_counts(args.detect).items():
        print(f"{kind:10s} {n}")
    if not args.no_sim:
        rows = [
            evaluate_sim(s, d, CONDITIONS[i % 2], args.detect)
            for d in args.difficulties
            for i, s in enumerate(args.seeds)
        ]
        df = pd.DataFrame(rows)
        print("\n== simulator ==")
        print(df.round(3).to_string(index=False))
        print("\nmeans per difficulty:")
        print(df.drop(columns=["condition", "seed"]).groupby("difficulty").mean().round(3).T)
    if args.png is not None:
        args.png.mkdir(parents=True, exist_ok=True)
        for name in SPOT_SETS:
            s = load_spot_set(name)
            if s is not None:
                sp = detect_spots(s.image, radius_px=s.radius_px, **args.detect)
                f1 = match_spots(sp, s.truth, 3.0).f1
                overlay_png(args.png / f"{name}.png", s.image, sp, s.truth, f"{name}, F1 {f1:.3f}")
        for name, img in load_spotiflow().items():
            sp = detect_spots(img, **args.detect)
            overlay_png(args.png / f"{name}.png", img, sp, title=f"{name}: {len(sp)} puncta")


if __name__ == "__main__":
    main()
