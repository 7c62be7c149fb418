"""Tube analysis speed: the ridge/hysteresis method against the intensity-only method.

Both are timed in the same run on the same 2048 x 2048 synthetic network (uneven tubes, dim
thin links, clumps, Poisson noise), best of ``--repeat`` runs each; prints both times and
their ratio (issue 20 asks for <= 2x).

    python benchmarks/tubes.py [--size 2048] [--repeat 3] [--polarity bright]
"""

from __future__ import annotations

import argparse
import time

from napari_exouptake._synthetic_structures import synthetic_network_realistic
from napari_exouptake.tubes import analyze_tubes


def _best(img, repeat: int, **kw) -> tuple[float, dict]:
    best, m = float("inf"), {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        m = analyze_tubes(img, **kw).metrics
        best = min(best, time.perf_counter() - t0)
    return best, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--polarity", choices=("bright", "dark"), default="bright")
    a = ap.parse_args()
    img, truth = synthetic_network_realistic(0, (a.size, a.size), polarity=a.polarity)
    analyze_tubes(img[:256, :256])  # warm imports
    t_old, m_old = _best(img, a.repeat, method="intensity", polarity=a.polarity)
    t_new, m_new = _best(img, a.repeat, method="ridge", polarity=a.polarity)
    print(f"image {a.size}x{a.size} ({a.polarity}), truth length {truth.total_length_px:.0f} px")
    for name, t, m in (("intensity (old)", t_old, m_old), ("ridge (new)", t_new, m_new)):
        print(
            f"  {name:16s} {t:7.2f} s   length {m['tube_total_length_um']:9.0f}  "
            f"junctions {m['tube_junctions']:4d}/{truth.n_junctions}  "
            f"meshes {m['tube_meshes']:4d}/{truth.n_meshes}"
        )
    print(f"  ratio new/old   {t_new / t_old:7.2f}")


if __name__ == "__main__":
    main()
