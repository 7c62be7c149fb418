"""The fully commented default config that ``exouptake config --template`` prints."""

from __future__ import annotations

from .fields import DEFAULT_RADIUS_PX

TEMPLATE = """\
# napari-exouptake assay configuration (YAML).
# Load with `exouptake analyze IMAGES --config THIS_FILE --out DIR` or the napari widget.

channels:                 # 0-based channel index, or the channel name from the file's metadata
  nucleus: 0              # nuclear stain (DAPI/Hoechst); needed for modes nuclei and expand
  cell: 1                 # cytoplasm/membrane stain (CellMask, phalloidin); used by mode cells
  exosome: 2              # labelled-exosome channel (PKH26/PKH67/DiI/DiD or CD63-GFP)
  markers:                # optional immunofluorescence markers: name -> channel and kind
    cd31:
      channel: 3
      kind: angiogenesis  # angiogenesis | collagen | other
    col1:
      channel: 4
      kind: collagen
pixel_size_um: null       # um per pixel; null = read from the file's metadata
axes: null                # override the axis order read from the file, e.g. CYX, ZCYX, TCZYX

segmentation:
  mode: cells             # cells (cytoplasm + nucleus) | nuclei | expand (cells grown from nuclei)
                          # | none (image-level readouts only: tubes/collagen; implied when no
                          # nucleus/cell/exosome/marker channel is given)
  model: demo-cells       # demo-cells | demo-nuclei | cyto3 | nuclei | cpsam | path to a model file
  nuclei_model: null      # model for nuclei; null = demo-nuclei for demo models, else nuclei
  diameter_px: 30         # typical cell diameter in pixels; null = let Cellpose estimate it
  device: auto            # auto (CUDA > MPS > CPU) | cpu | cuda | cuda:N | mps
  expand_method: distance # mode expand: distance (fixed growth) | watershed (on cytoplasm signal)
  expand_um: 5.0          # mode expand: how far cells reach beyond the nucleus, in um
  do_3d: false            # z-stacks: true = 3D segmentation
  stitch_threshold: 0.0   # z-stacks: > 0 = 2D per plane, stitched at this IoU
  flow_threshold: 0.4     # Cellpose flow error threshold (higher = more, looser cells)
  cellprob_threshold: 0.0 # Cellpose cell probability threshold (lower = larger cells)
  batch_size: 8           # tiles per network pass (GPU memory)
  min_size_px: 15         # drop objects smaller than this many pixels
  resample: false         # Cellpose resample (slower, smoother outlines)
  tile_overlap: 0.1       # fraction of overlap between tiles
  normalize: true         # percentile-normalise channels before the network
  block_size_px: 4096     # bigger images: segmented in blocks of this size (+ 2 diameters of
                          # context) and stitched, bounding memory; null = always whole

spots:
  radius_px: {radius_px}          # punctum radius in pixels, sqrt(2) x the PSF's Gaussian sigma;
                          # auto = measured on the image's own puncta (recorded in run.json)
  threshold: auto         # auto (decoy false-discovery control, never below SNR 5), or a
                          # number (amplitude above local background, image units)
  fdr: 0.05               # sensitivity of the auto threshold: accepted false-discovery rate
  background_radius_px: null  # local background window; null = derived from radius_px
  min_distance_px: null   # minimum distance between puncta; null = derived from radius_px
  cluster_estimate: true  # estimate EVs per bright aggregate from the typical single punctum
  exclude_border_px: 0    # ignore puncta this close to the image border

positivity:                 # see docs/positivity.md
  control_condition: null   # e.g. dye_only: with no exosome rule below, EV-positive = more
                            # puncta than the 95th percentile of this condition's cells
  # exosome:                # uncomment to set the uptake rule yourself; default without a
  #   method: fixed         # control: exo_spot_count >= 1. fixed | auto | control
  #   value: 1
  #   metric: exo_spot_count  # or exo_spot_estimate, exo_integrated_intensity ...
  #   percentile: 95.0      # control: cut-off = this percentile of the control's cells
  markers:                  # default rule for every marker without its own positivity
    method: auto            # auto: two-population fit on log intensity (warns when the run
    value: null             # has no separate positive population); fixed; control
    metric: mean_intensity
    percentile: 95.0

tubes: null               # e.g. {channel: 3}: tube-formation network analysis on that channel;
                          # brightfield/phase contrast: {channel: 0, polarity: auto} (auto |
                          # bright | dark; the well's rim is excluded when found)
collagen: null            # e.g. {channel: 4}: collagen area and fibre architecture

conditions: {}            # file-name glob -> condition, e.g. {"*ctrl*": untreated, "*EV*": ev}
big_image_px: 40000000    # planes larger than this (pixels) are analysed tile by tile in
                          # bounded memory (puncta and per-cell table; docs/big_images.md)
"""


def template_config() -> str:
    """The fully commented default config printed by ``exouptake config --template``."""
    return TEMPLATE.replace("{radius_px}", f"{DEFAULT_RADIUS_PX:g}")
