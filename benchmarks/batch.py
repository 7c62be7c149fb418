"""Batch throughput: serial vs 2 local worker processes vs a Dask LocalCluster.

Quantification only (the simulator's label images are given, so no Cellpose runs). Each
configuration is a fresh ``exouptake analyze`` process on a fresh output folder, so every one
pays its own imports and first-call compilation, as a user's run does; the wall time is the
whole command. The tables of every run are checked to be identical.

    python benchmarks/batch.py                      # 16 images of 1024 x 1024, 1 repeat
    python benchmarks/batch.py --n-images 8 --size 512 --repeats 3

Targets (issue 6): >= 1.6x speed-up of 2 processes over serial on a 2-core machine; Dask
local-cluster wall time within 15% of the process pool. Run on an otherwise idle machine
(the 1-minute load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(data: Path, config: Path, out: Path, extra: list[str]) -> float:
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        "-m",
        "napari_exouptake.cli",
        "analyze",
        str(data / "images"),
        "--config",
        str(config),
        "--out",
        str(out),
        "--labels",
        str(data / "labels"),
        *extra,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def _cpu(out: Path) -> tuple[float, float]:
    """(total CPU seconds of the image tasks, the largest CPU sum of one worker process)."""
    import json

    per_worker: dict[str, float] = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        per_worker[rec["worker"]] = per_worker.get(rec["worker"], 0.0) + rec["cpu_s"]
    return sum(per_worker.values()), max(per_worker.values())


def _same(a: Path, b: Path) -> bool:
    return all(
        (a / f).read_bytes() == (b / f).read_bytes()
        for f in ("cells.csv", "spots.csv", "images.csv")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="best of N per configuration")
    p.add_argument("--workdir", type=Path, help="keep data and results here")
    p.add_argument(
        "--no-readouts",
        action="store_true",
        help="drop the collagen/tube readouts (puncta + per-cell measurement only)",
    )
    args = p.parse_args(argv)

    from napari_exouptake.simulate import write_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="exouptake_bench_"))
    data = work / "data"
    if not (data / "config.yaml").is_file():
        t0 = time.perf_counter()
        write_dataset(data, n_images=args.n_images, seed=args.seed, shape=(args.size, args.size))
        print(
            f"simulated {args.n_images} images of {args.size}x{args.size} in "
            f"{time.perf_counter() - t0:.1f} s -> {data}"
        )
    config = data / "config.yaml"
    if args.no_readouts:
        from napari_exouptake.config import load_config, save_config

        cfg = load_config(config).to_dict()
        cfg.pop("collagen", None)
        cfg.pop("tubes", None)
        config = save_config(load_config(cfg), work / "config_no_readouts.yaml")
    print(f"config: {config}")
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    configs = {
        "serial": [],
        "processes x2": ["--workers", "2"],
        "dask local x2": ["--workers", "2", "--scheduler", "local"],
    }
    walls: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}
    for name, extra in configs.items():
        times = [
            _run(data, config, work / name.replace(" ", "_"), extra) for _ in range(args.repeats)
        ]
        walls[name] = min(times)
        cpu_total, cpu_max = _cpu(work / name.replace(" ", "_"))
        print(
            f"{name:>14}: {walls[name]:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)}"
            f"; {args.n_images / walls[name]:.2f} images/s; task CPU {cpu_total:.1f} s, "
            f"busiest worker {cpu_max:.1f} s)"
        )
        cpu[name] = (cpu_total, cpu_max)
    same = all(_same(work / "serial", work / n.replace(" ", "_")) for n in configs)
    speedup = walls["serial"] / walls["processes x2"]
    dask_ratio = walls["dask local x2"] / walls["processes x2"]
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"speed-up, 2 processes vs serial: {speedup:.2f}x (target >= 1.6x)")
    print(f"Dask local / process pool wall time: {dask_ratio:.2f} (target <= 1.15)")
    print(f"tables identical across executors: {same}")
    # load-independent view: CPU seconds of the image tasks (a shared machine inflates walls)
    eff = cpu["serial"][0] / (2 * cpu["processes x2"][1])
    print(
        f"CPU-time view: serial tasks {cpu['serial'][0]:.1f} s; 2 processes: busiest worker "
        f"{cpu['processes x2'][1]:.1f} s -> task-level speed-up bound "
        f"{cpu['serial'][0] / cpu['processes x2'][1]:.2f}x (parallel efficiency {eff:.0%})"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
