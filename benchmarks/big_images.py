"""Big images: peak memory of lazy vs in-memory reading, and of overlap tiling vs whole image.

1. A tiled 3 x N x N uint16 OME-TIFF is written, then read in a fresh process that takes one
   channel as a numpy array: ``read_image(lazy=False)`` (the whole file into memory) against
   ``read_image(lazy=True)`` (dask over tifffile's zarr store: that channel's tiles only).
2. The tube readout's local preprocessing (Gaussian sigma 2, opening and box mean of 51 px) on
   an M x M float32 image, whole against ``_tiling.map_tiles`` (tile 1024, overlap 84 px).

Each measurement is its own process; the peak resident memory (ru_maxrss) is printed with the
process's resident memory just before the measured step (imports and input made).

    python benchmarks/big_images.py                 # N = 8192, M = 6144
    python benchmarks/big_images.py --n 4096 --m 3072
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.ome.tif"
        _write_tiff(path, args.n)
        print(f"{path.name}: 3 x {args.n} x {args.n} uint16, {path.stat().st_size / 2**20:.0f} MiB")
        for mode in ("eager", "lazy"):
            subprocess.run([sys.executable, "-c", READ, str(path), mode], check=True)
    for mode in ("whole", "tiled"):
        subprocess.run([sys.executable, "-c", FILTER, str(args.m), mode], check=True)


if __name__ == "__main__":
    main()
