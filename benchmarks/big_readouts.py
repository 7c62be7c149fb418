"""Big images: peak memory and time of the tube and collagen readouts and of one Cellpose block.

Each measurement runs in its own process and prints its peak resident memory (ru_maxrss) and
wall time:

* ``tubes`` / ``collagen``: ``pipeline.analyze_image`` with a tube-only or collagen-only config
  (no segmentation) on the real whole-well bright-field image (5888 x 4711, 8-bit JPEG,
  ``../shared/data/tubes_brightfield``) and on a 16,000 x 16,000 uint16 mosaic made from it,
  written as a tiled OME-TIFF and read lazily (dask over tifffile's zarr store).
* ``segment N``: ``segmentation.segment`` (demo-nuclei, CPU, diameter 24 px) of one N x N
  image, i.e. one block of a block-wise segmentation (N = block_size_px + 2 x overlap;
  default 4096 + 2 x 48 for this diameter). The image is the StarDist nuclei crop
  (``../shared/data/nuclei_stardist``) mirrored to N x N.

    python benchmarks/big_readouts.py readouts           # well and 16k mosaic, both readouts
    python benchmarks/big_readouts.py segment 2144 4192  # one block each
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WELL = DATA / "tubes_brightfield" / "28052019_angioE02_page_0012.jpg"

READOUT = """
import resource, sys, time
from napari_exouptake.config import AssayConfig
from napari_exouptake.io import read_image
from napari_exouptake.pipeline import analyze_image
path, kind = sys.argv[1], sys.argv[2]
cfg = AssayConfig.from_dict({kind: {"channel": 0}})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
img = read_image(path, lazy=len(sys.argv) > 3)
r = analyze_image(img, cfg)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
keys = {"tubes": ("tube_analysis_binning", "tube_junctions", "tube_meshes"),
        "collagen": ("collagen_analysis_binning", "collagen_area_fraction",
                     "collagen_mean_angle_deg")}[kind]
print(f"{kind:8s} {img.shape_yx[0]} x {img.shape_yx[1]} ({type(img.data).__module__}): "
      f"{time.perf_counter() - t:6.1f} s, peak {peak:6.0f} MB (before {before:.0f} MB); "
      + ", ".join(f"{k}={r.summary.get(k)}" for k in keys), flush=True)
"""

MOSAIC = """
import sys
import numpy as np, imageio.v3 as iio, tifffile
n = int(sys.argv[2])
well = iio.imread(sys.argv[1]).astype(np.uint16) * 257
reps = (-(-n // well.shape[0]), -(-n // well.shape[1]))
def tiles():  # 512 x 512 tiles in TIFF order, from a mirrored mosaic of the well
    big_rows = []
    for ty in range(0, n, 512):
        ys = np.arange(ty, min(ty + 512, n))
        rows = np.where((ys // well.shape[0]) % 2, well.shape[0] - 1 - ys % well.shape[0],
                        ys % well.shape[0])
        band = well[rows]
        for tx in range(0, n, 512):
            xs = np.arange(tx, min(tx + 512, n))
            cols = np.where((xs // well.shape[1]) % 2, well.shape[1] - 1 - xs % well.shape[1],
                            xs % well.shape[1])
            tile = np.zeros((512, 512), np.uint16)
            tile[: len(ys), : len(xs)] = band[:, cols]
            yield tile
tifffile.imwrite(sys.argv[3], tiles(), shape=(n, n), dtype=np.uint16, tile=(512, 512),
                 ome=True, metadata={"axes": "YX"}, compression="zlib", bigtiff=True)
print("wrote", sys.argv[3], flush=True)
"""

SEGMENT = """
import resource, sys, time
import numpy as np, tifffile
from napari_exouptake import segmentation as S
from napari_exouptake.config import AssayConfig
from napari_exouptake.io import from_array
n = int(sys.argv[2])
img = tifffile.imread(sys.argv[1])
img = np.pad(img, ((0, n - img.shape[0]), (0, n - img.shape[1])), mode="symmetric")
cfg = AssayConfig.model_validate({"channels": {"nucleus": 0}, "segmentation": {
    "mode": "nuclei", "model": "demo-nuclei", "diameter_px": 24, "device": "cpu",
    "block_size_px": None}})
image = from_array(img[None], axes="CYX", channel_names=["DAPI"])
S.segment(from_array(img[None, :64, :64], axes="CYX"), cfg)  # model loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
seg = S.segment(image, cfg)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"segment {n} x {n} (one block): {time.perf_counter() - t:6.1f} s, peak {peak:6.0f} MB "
      f"(before {before:.0f} MB, image {img.nbytes / 1e6:.0f} MB), {seg.n_cells} nuclei",
      flush=True)
"""


def _run(code: str, *args: str) -> None:
    subprocess.run([sys.executable, "-c", code, *args], check=True)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "readouts"
    if what == "segment":
        for n in argv[1:] or ["4192"]:
            _run(SEGMENT, str(DATA / "nuclei_stardist" / "img2d.tif"), n)
        return
    if what in ("readouts", "well"):
        for kind in ("tubes", "collagen"):
            _run(READOUT, str(WELL), kind)
    if what == "well":
        return
    with tempfile.TemporaryDirectory() as tmp:
        big = str(Path(tmp) / "mosaic16k.ome.tif")
        _run(MOSAIC, str(WELL), "16000", big)
        for kind in ("tubes", "collagen"):
            _run(READOUT, big, kind, "lazy")


if __name__ == "__main__":
    main(sys.argv[1:])
