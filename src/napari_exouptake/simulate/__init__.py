"""Synthetic exosome-uptake assay images with exact ground truth.

The simulator is the project's only reference for whole-cell segmentation and EV-uptake puncta
with known answers, so it aims at images a microscopist would believe:

* irregular, elongated and *touching* cells (an anisotropic, domain-warped Voronoi tessellation
  whose orientations follow a smooth swirl field, as in confluent MSC / fibroblast cultures),
  grown in confluent patches with gaps of bare substrate;
* one irregular elliptical nucleus per cell, strictly inside it;
* a membrane / cytoplasm channel ("CellMask") with per-cell brightness, thickness profile,
  texture and brighter cell-cell junctions;
* an exosome channel ("PKH26") with diffraction-limited puncta (Gaussian PSF, sigma 1.0-1.6 px,
  log-normal brightness), a few extracellular puncta, perinuclear enrichment, and diffuse
  cytoplasmic autofluorescence. Some puncta are sub-resolution aggregates of 2-6 EVs
  (members jittered by ~1.1 px, below the optical resolution, so one aggregate is one optical
  object; the truth keeps every EV for counting): 5 % of puncta at easy, 17.5 % at normal
  ("some clustered puncta"), 30 % at hard. The autofluorescence has a medium-scale (4 px)
  texture and a punctum-scale granular one whose amplitude grows as difficulty**1.5 (relative
  amplitude 0.028 at normal: smooth-ish at punctum scale, as cytoplasmic flavin / NAD(P)H
  autofluorescence is in healthy cultured cells; 0.08 at hard: lipofuscin-like granules as in
  aged or stressed cells, punctum-sized and comparable to dim puncta);
* marker channels (e.g. CD31, angiogenesis: junctional membrane pattern; COL1, collagen:
  perinuclear granules plus extracellular fibres) whose per-cell levels come from a negative and
  a positive population, the positive fraction depending on the condition;
* a smooth multiplicative illumination field, Poisson shot noise, Gaussian read noise, a camera
  offset, and uint16 output.

Everything is drawn from ``np.random.default_rng(seed)``: the same seed gives identical arrays
and tables. Puncta positions in the truth table are the exact sub-pixel centres used to render.

Modules: ``image`` (:func:`simulate_image`), ``dataset`` (:func:`write_dataset`), ``noise``
(:func:`noise_frame`, :func:`optical_puncta`), ``_params`` (condition and camera parameters),
``_cells`` (cells, nuclei and puncta).
"""

from __future__ import annotations

from ._params import CONDITIONS, DIFFICULTIES, SimulatedImage, difficulty_value, image_seed
from .dataset import write_dataset
from .image import simulate_image
from .noise import NOISE_KINDS, noise_frame, optical_puncta

__all__ = [
    "CONDITIONS",
    "DIFFICULTIES",
    "SimulatedImage",
    "difficulty_value",
    "image_seed",
    "NOISE_KINDS",
    "noise_frame",
    "optical_puncta",
    "simulate_image",
    "write_dataset",
]
