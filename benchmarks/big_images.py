"""Big images: peak memory of lazy vs in-memory reading, and of overlap tiling vs whole image.

1. A tiled 3 x N x N uint16 OME-TIFF is written, then read in a fresh process that takes one
   channel as a numpy array: ``read_image(lazy=False)`` (the whole file into memory) against
   ``read_image(lazy=True)`` (dask over tifffile's zarr store: that channel's tiles only).
2. The tube readout's local preprocessing (Gaussian sigma 2, opening and box mean of 51 px) on
   an M x M float32 image, whole against ``_tiling.map_tiles`` (tile 1024, overlap 84 px).

3. ``--analyze S``: the whole analysis (puncta + per-cell table, given labels, no Cellpose) of
   a simulated S x S x 3-channel uint16 image (one simulated 2,048 x 2,048 block repeated, labels
   offset per block; written tile by tile, never held whole) as a tiled OME-TIFF and as an
   OME-Zarr, read lazily, so the big-image path runs (``big_image_px``); the baseline, in the
   same run, is the 2,048 x 2,048 block analysed whole. Prints seconds per megapixel and its
   ratio to the baseline, and the peak resident memory.

Each measurement is its own process; the peak resident memory (ru_maxrss) is printed with the
process's resident memory just before the measured step (imports and input made).

    python benchmarks/big_images.py                 # N = 8192, M = 6144
    python benchmarks/big_images.py --n 4096 --m 3072
    nice python benchmarks/big_images.py --analyze 16000 --skip-read --skip-filter

Measured (2 shared, busy cores; see docs/big_images.md):
``--analyze 16000`` (2026-12-06): writing the 16,000 x 16,000 x 3 image (tiled OME-TIFF
and OME-Zarr, with labels) took 71 s at 0.14 GB peak. Baseline 2,048 x 2,048 whole: 2.9 s
and 2.3 s (before / after; mean 0.621 s/Mpx), peak 0.35 GB. 16,000 x 16,000 from the tiled
OME-TIFF: 138.3 s (0.540 s/Mpx, x 0.87 the baseline), peak 0.84 GB; from the OME-Zarr:
137.6 s (0.537 s/Mpx, x 0.87), peak 0.94 GB; both 1,239,082 puncta and 166,104 cells.
(An earlier run under heavier load: 408 s / 233 s, peaks 0.82 / 0.96 GB.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READ = """
import resource, sys, time
import numpy as np, dask.array, zarr, tifffile
from napari_exouptake.io import read_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
img = read_image(sys.argv[1], lazy=sys.argv[2] == "lazy")
channel = np.asarray(img.channel(2))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"read {sys.argv[2]:5s}: {time.perf_counter() - t:5.1f} s, peak {peak:5.0f} MB "
      f"(before {before:.0f} MB), channel {channel.shape}")
"""

FILTER = """
import resource, sys, time
import numpy as np, dask.array
from scipy import ndimage
from napari_exouptake._tiling import map_tiles

def tube_background(img):
    sm = ndimage.gaussian_filter(img, 2.0)
    bg = ndimage.uniform_filter(ndimage.grey_opening(sm, size=(51, 51), mode="reflect"), 51)
    return sm - np.minimum(bg, sm)

m = int(sys.argv[1])
img = np.random.default_rng(0).random((m, m), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
if sys.argv[2] == "whole":
    out = tube_background(img)
else:
    out = map_tiles(tube_background, img, depth=84, tile=1024)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"filter {sys.argv[2]:5s} {m} x {m}: {time.perf_counter() - t:5.1f} s, peak {peak:5.0f} MB "
      f"(before {before:.0f} MB; input and output {img.nbytes / 1e6:.0f} MB each)")
"""


ANALYZE = """
import resource, sys, time
from napari_exouptake.config import AssayConfig
from napari_exouptake.io import read_image
from napari_exouptake.pipeline import analyze_image
def status(key):  # kB -> MB; VmHWM: this process's peak (ru_maxrss survives exec)
    return [int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith(key)][0]
before = status("VmRSS")
cfg = AssayConfig.from_dict(
    {"channels": {"exosome": 2, "markers": {"cellmask": {"channel": 1}}}, "pixel_size_um": 0.325,
     "big_image_px": int(sys.argv[4])}
)
t = time.perf_counter()
img = read_image(sys.argv[1], lazy=sys.argv[3] == "lazy")
res = analyze_image(img, cfg, labels=sys.argv[2])
dt = time.perf_counter() - t
peak = status("VmHWM")
mpx = img.data.shape[-1] * img.data.shape[-2] / 1e6
print(f"RESULT {dt:.2f} {mpx:.3f} {peak:.0f} {before:.0f} {len(res.spots)} {len(res.cells)}")
"""

BLOCK = 2048  # (--block)


SIMULATE = """
import sys, numpy as np
from napari_exouptake.simulate import simulate_image
n = int(sys.argv[2])
sim = simulate_image(17, shape=(n, n))
np.save(sys.argv[1] + "/block.npy", np.asarray(sim.image)[:3].astype(np.uint16))
np.save(sys.argv[1] + "/block_cells.npy", np.asarray(sim.cells).astype(np.uint32))
"""


def _block(tmp: Path):
    """One simulated block: 3 channels (uint16) and its cell labels. Simulated in its own
    process (the simulator peaks at 3.6 GB for 2,048 x 2,048; the measured processes are
    started from this one)."""
    import numpy as np

    subprocess.run([sys.executable, "-c", SIMULATE, str(tmp), str(BLOCK)], check=True)
    return np.load(tmp / "block.npy"), np.load(tmp / "block_cells.npy")


def _piece(block, labels, c, y0, x0, th, tw):
    """The ``th x tw`` piece at (y0, x0) of the repeated block (channel c; c < 0: labels)."""
    by, bx = y0 % BLOCK, x0 % BLOCK
    if c < 0:
        n_bx = 1 << 10
        off = ((y0 // BLOCK) * n_bx + x0 // BLOCK) * (int(labels.max()) + 1)
        part = labels[by : by + th, bx : bx + tw]
        return (part + off * (part > 0)).astype(labels.dtype)
    return block[c, by : by + th, bx : bx + tw]


def _write_big(tmp: Path, s: int) -> tuple[Path, Path, Path, Path, Path, Path]:
    """The baseline block and the S x S image as tiled OME-TIFF and OME-Zarr, with labels."""
    import numpy as np
    import tifffile
    import zarr

    block, labels = _block(tmp)
    meta = {"axes": "CYX", "Channel": {"Name": ["DAPI", "CellMask", "PKH26"]}}
    meta.update(PhysicalSizeX=0.325, PhysicalSizeY=0.325)
    base, base_lab = tmp / "base.ome.tif", tmp / "base_cells.tif"
    tifffile.imwrite(base, block, ome=True, metadata=meta)
    tifffile.imwrite(base_lab, labels)
    t = 512

    def tiles(channels):
        for c in channels:
            for y0 in range(0, s, t):
                for x0 in range(0, s, t):
                    yield _piece(block, labels, c, y0, x0, t, t)

    big = tmp / "big.ome.tif"
    tifffile.imwrite(
        big, tiles(range(3)), shape=(3, s, s), dtype=np.uint16, tile=(t, t), bigtiff=True,
        ome=True, metadata=meta,
    )  # fmt: skip
    big_lab = tmp / "big_cells.tif"
    tifffile.imwrite(
        big_lab, tiles([-1]), shape=(s, s), dtype=np.uint32, tile=(t, t), bigtiff=True
    )  # fmt: skip
    zpath, zlab = tmp / "big.ome.zarr", tmp / "big_cells.zarr"
    ch = 1024
    root = zarr.open_group(str(zpath), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(3, 1, s, s), dtype=np.uint16, chunks=(1, 1, ch, ch))
    lroot = zarr.open_group(str(zlab), mode="w", zarr_format=2)
    larr = lroot.create_array("0", shape=(s, s), dtype=np.uint32, chunks=(ch, ch))
    st = min(ch, BLOCK)  # pieces never cross a block
    for y0 in range(0, s, st):
        for x0 in range(0, s, st):
            h, w = min(st, s - y0), min(st, s - x0)
            for c in range(3):
                arr[c, 0, y0 : y0 + h, x0 : x0 + w] = _piece(block, labels, c, y0, x0, h, w)
            larr[y0 : y0 + h, x0 : x0 + w] = _piece(block, labels, -1, y0, x0, h, w)
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"
    ]
    scale = [1.0, 1.0, 0.325, 0.325]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            ],
        }
    ]
    root.attrs["omero"] = {"channels": [{"label": n} for n in ("DAPI", "CellMask", "PKH26")]}
    lroot.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space"} for a in "yx"],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}
            ],
        }
    ]
    return base, base_lab, big, big_lab, zpath, zlab


def _hwm_gb() -> float:
    """This process's peak resident memory (GB)."""
    with open("/proc/self/status") as fh:
        return [int(x.split()[1]) / 2**20 for x in fh if x.startswith("VmHWM")][0]


def _analyze(s: int, workdir: Path | None, big_px: int) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t = time.perf_counter()
        base, base_lab, big, big_lab, zpath, zlab = _write_big(Path(tmp), s)
        dt = time.perf_counter() - t
        print(f"wrote {s} x {s} x 3 (OME-TIFF, OME-Zarr) in {dt:.0f} s, peak {_hwm_gb():.2f} GB")
        base_name = f"baseline {BLOCK} x {BLOCK}, whole"
        runs = [
            (base_name, base, base_lab, "eager"),
            (f"{s} x {s} tiled OME-TIFF", big, big_lab, "lazy"),
            (f"{s} x {s} OME-Zarr", zpath, zlab, "lazy"),
            (base_name + " (again)", base, base_lab, "eager"),
        ]
        rows = []
        for name, img, lab, mode in runs:
            out = subprocess.run(
                [sys.executable, "-c", ANALYZE, str(img), str(lab), mode, str(big_px)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1].split()
            dt, mpx, peak, before, n_sp, n_cells = map(float, line[1:])
            rows.append((name, dt, dt / mpx, peak, before, n_sp, n_cells))
            print(
                f"{name:34s}: {dt:7.1f} s, {dt / mpx:6.3f} s/Mpx, peak RSS {peak / 1024:5.2f} GB "
                f"(before {before:.0f} MB), {int(n_sp)} puncta, {int(n_cells)} cells",
                flush=True,
            )
        # the baseline before and after the big runs (the machine's load drifts)
        per0 = 0.5 * (rows[0][2] + rows[-1][2])
        print(f"baseline: {per0:.3f} s/Mpx (mean of the two runs)")
        for name, _, per, peak, *_ in rows[1:-1]:
            print(
                f"{name:34s}: time per Mpx x {per / per0:4.2f} the baseline, "
                f"peak {peak / 1024:.2f} GB"
            )


def _write_tiff(path: Path, n: int) -> None:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)

    def tiles():
        for _ in range(3):
            for _ in range(0, n, 512):
                for _ in range(0, n, 512):
                    yield rng.integers(0, 4000, (512, 512), dtype=np.uint16)

    meta = {"axes": "CYX", "Channel": {"Name": ["DAPI", "CellMask", "PKH26"]}}
    tifffile.imwrite(
        path, tiles(), shape=(3, n, n), dtype=np.uint16, tile=(512, 512), bigtiff=True,
        ome=True, metadata={**meta, "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325},
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="side of the 3-channel TIFF (px)")
    ap.add_argument("--m", type=int, default=6144, help="side of the filtered image (px)")
    ap.add_argument("--analyze", type=int, default=0, help="side of the analysed image (px)")
    ap.add_argument("--workdir", type=Path, default=None, help="folder for the big files")
    ap.add_argument("--block", type=int, default=2048, help="simulated block (and baseline) side")
    ap.add_argument("--big-image-px", type=int, default=40_000_000, help="the config key")
    ap.add_argument("--skip-read", action="store_true")
    ap.add_argument("--skip-filter", action="store_true")
    args = ap.parse_args()
    if args.analyze:
        global BLOCK
        BLOCK = args.block
        _analyze(args.analyze, args.workdir, args.big_image_px)
    if args.skip_read:
        return _filters(args) if not args.skip_filter else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.ome.tif"
        _write_tiff(path, args.n)
        print(f"{path.name}: 3 x {args.n} x {args.n} uint16, {path.stat().st_size / 2**20:.0f} MiB")
        for mode in ("eager", "lazy"):
            subprocess.run([sys.executable, "-c", READ, str(path), mode], check=True)
    if not args.skip_filter:
        _filters(args)


def _filters(args) -> None:
    for mode in ("whole", "tiled"):
        subprocess.run([sys.executable, "-c", FILTER, str(args.m), mode], check=True)


if __name__ == "__main__":
    main()
