"""Condition and difficulty parameters of the simulator, the image record, seeds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Assay conditions in the order ``write_dataset`` cycles through them.
CONDITIONS: tuple[str, ...] = ("untreated", "dye_only", "ev_low", "ev_high")

#: Named difficulty levels and the number in [0, 1] each stands for.
DIFFICULTIES: dict[str, float] = {"easy": 0.0, "normal": 0.5, "hard": 1.0}

# Mean truth puncta per cell at difficulty 0 (multiplied by 1 + 0.8 * difficulty: denser when
# harder), EV dose in ug/mL, and the marker positive fractions per condition.
_CONDITION_PARAMS: dict[str, dict] = {
    "untreated": {"spots_per_cell": 0.02, "dose": 0.0, "pos": {"angio": 0.10, "collagen": 0.12}},
    "dye_only": {"spots_per_cell": 0.5, "dose": 0.0, "pos": {"angio": 0.12, "collagen": 0.15}},
    "ev_low": {"spots_per_cell": 3.0, "dose": 10.0, "pos": {"angio": 0.35, "collagen": 0.40}},
    "ev_high": {"spots_per_cell": 9.0, "dose": 50.0, "pos": {"angio": 0.60, "collagen": 0.65}},
}
_OTHER_POS = {"untreated": 0.15, "dye_only": 0.15, "ev_low": 0.35, "ev_high": 0.55}
_ANGIO_MARKERS = {"CD31", "PECAM1", "VWF", "KDR", "VEGFR2", "CD34", "VECAD", "CDH5"}
_COLLAGEN_MARKERS = {"COL1", "COL1A1", "COL2", "COL3", "COL3A1", "COLI", "COLIII", "COLLAGEN"}

# Camera model: ADU = offset + gain * (Poisson(electrons) + Normal(0, read_noise)).
_GAIN_ADU_PER_E = 0.9
_READ_NOISE_E = 2.2
_OFFSET_ADU = 100.0
#: z step (um) written to the metadata of 3D simulated stacks.
_Z_STEP_UM = 1.0
# Autofluorescence texture in the exosome channel: granular (2.5 px, punctum-sized) and medium
# (4 px) scale. The granular part (lipofuscin-like granules) grows with difficulty as
# _AF_GRAN * difficulty**1.5: nearly smooth at punctum scale at "normal" (relative amplitude
# 0.028), as granular as before at "hard" (0.08).
_AF_GRAN = 0.08
_AF_MED = 0.10
# Fraction of truth puncta that sit in sub-resolution aggregates: 5 % + 25 % x difficulty
# (easy 5 %, normal 17.5 %, hard 30 %).
_AGG_FRAC_EASY = 0.05
_AGG_FRAC_SLOPE = 0.25


@dataclass(frozen=True)
class SimulatedImage:
    """One simulated multi-channel assay image with its ground truth.

    Attributes
    ----------
    image : (C, Y, X) or (C, Z, Y, X) uint16 ndarray
        Camera counts (ADU), offset included. Z is present only when ``n_z > 1``.
    channel_names : tuple of str
        One per C, e.g. ``("DAPI", "CellMask", "PKH26", "CD31", "COL1")``.
    pixel_size_um : float
        Lateral pixel size in micrometres.
    cells : (Y, X) or (Z, Y, X) uint16/uint32 ndarray
        Cell label image, 0 = background, labels 1..N.
    nuclei : (Y, X) or (Z, Y, X) uint16/uint32 ndarray
        Nucleus label image; each nucleus carries the label of the cell that contains it.
    spots : pandas.DataFrame
        Truth puncta, one row each: ``y``, ``x`` (sub-pixel rendering centres, image pixel
        coordinates; ``z`` too when 3D), ``cell_id`` (cell label at the rounded position,
        0 = extracellular), ``amplitude`` (noise-free peak height of the punctum above the
        local background, in ADU after illumination and gain), ``sigma_px`` (PSF Gaussian sigma,
        px), ``snr`` (amplitude / local noise sigma, both in ADU), ``cluster_id`` (0 = single
        punctum, otherwise the aggregate it belongs to).
    truth_cells : pandas.DataFrame
        One row per cell (including cells with 0 puncta): ``cell_id``, ``area_px``, ``n_spots``
        (count of truth puncta with that ``cell_id``; every EV of an aggregate counts), and per
        marker ``<marker lower>_level`` (biological relative expression, negative population
        median ~0.12, positive ~1.0), ``<marker lower>_positive`` (bool, the population the
        cell was drawn from) and ``<marker lower>_true_mean`` (noise-free expected mean of
        that channel over the cell's pixels in ADU, offset included: level x staining pattern
        x illumination + autofluorescence, before Poisson and read noise; what
        ``measure_cells``' ``<marker>_mean_intensity`` estimates. The level is only
        recovered after flat-field correction).
    condition : str
        One of :data:`CONDITIONS`.
    difficulty : float
        Difficulty in [0, 1] (easy 0, normal 0.5, hard 1).
    seed : int
        The seed the image was generated from.
    params : dict
        Image-level parameters (cell diameter, confluence, autofluorescence, ...), for reference.
    """

    image: np.ndarray
    channel_names: tuple[str, ...]
    pixel_size_um: float
    cells: np.ndarray
    nuclei: np.ndarray
    spots: pd.DataFrame
    truth_cells: pd.DataFrame
    condition: str
    difficulty: float = 0.5
    seed: int = 0
    params: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# small helpers


def difficulty_value(difficulty: str | float) -> float:
    """Map a difficulty name (``easy``, ``normal``, ``hard``) or a number to a float in [0, 1].

    Parameters
    ----------
    difficulty : str or float
        A name from :data:`DIFFICULTIES`, or a number between 0 (easy) and 1 (hard).

    Returns
    -------
    float
    """
    if isinstance(difficulty, str):
        key = difficulty.strip().lower()
        if key in DIFFICULTIES:
            return DIFFICULTIES[key]
        try:
            difficulty = float(key)
        except ValueError:
            raise ValueError(
                f"difficulty {difficulty!r} is not one of {sorted(DIFFICULTIES)} or a number "
                "between 0 and 1"
            ) from None
    value = float(difficulty)
    if not 0.0 <= value <= 1.0 or not np.isfinite(value):
        raise ValueError(f"difficulty {difficulty!r} must lie between 0 (easy) and 1 (hard)")
    return value


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` in a dataset made with ``seed`` (independent of dataset size).

    Parameters
    ----------
    seed : int
        Dataset seed (>= 0).
    index : int
        Image index (>= 0).

    Returns
    -------
    int
        A 63-bit seed derived from ``(seed, index)`` with :class:`numpy.random.SeedSequence`.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
