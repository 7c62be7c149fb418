"""Marker thresholds: Otsu on log values, a two-population mixture fit, a control percentile."""

from __future__ import annotations

from typing import Any

import numpy as np


def auto_threshold(values: np.ndarray, *, log: bool = True, nbins: int = 256) -> float:
    """Two-population threshold: Otsu's method on log values.

    Marker intensities of negative and positive cells are roughly log-normal, so the split is
    found on ``log(value - min + small)``. Returns ``+inf`` (nobody positive) when fewer than
    two distinct finite values exist.

    Parameters
    ----------
    values : (N,) array
        Per-cell metric.
    log : bool, default True
        Work on log values (False: linear Otsu).
    nbins : int, default 256
        Histogram bins.

    Returns
    -------
    float
        Threshold in the units of ``values``; positive means ``value >= threshold``.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or v.min() == v.max():
        return float("inf")
    if log:
        lo = v.min()
        eps = max((np.median(v) - lo) * 1e-3, 1e-12)
        t = np.log(v - lo + eps)
    else:
        lo, eps = 0.0, 0.0
        t = v
    hist, edges = np.histogram(t, bins=nbins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(np.argmax(between[:-1]))
    thr_t = edges[k + 1]
    return float(np.exp(thr_t) + lo - eps) if log else float(thr_t)


#: fewer cells than this in an ``auto`` fit: the threshold is reported with a warning
MIN_AUTO_CELLS = 100
#: a two-population fit is accepted when Ashman's D between its components is at least this
#: (D > 2: the two populations are cleanly separated) ...
MIN_SEPARATION_D = 2.0
#: ... and the smaller population holds at least this fraction of the cells
MIN_MINOR_FRACTION = 0.02
#: fallback when no second population separates: median + this many robust SD (log scale)
FALLBACK_ROBUST_SD = 3.0


def _em_two_gaussians(t: np.ndarray, iters: int = 300) -> tuple[np.ndarray, ...]:
    """1D two-component Gaussian mixture by expectation-maximisation.

    Started from the lower and upper halves of the sorted values. Returns weights, means,
    standard deviations (components sorted by mean) and the log-likelihood.
    """
    t = np.sort(t)
    n = t.size
    k = n // 2
    w = np.array([0.5, 0.5])
    mu = np.array([t[:k].mean(), t[k:].mean()])
    floor = max(1e-3 * float(t.std()), 1e-9)
    sd = np.maximum(np.array([t[:k].std(), t[k:].std()]), floor)
    ll_old = -np.inf
    ll = -np.inf
    for _ in range(iters):
        dens = w / (sd * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((t[:, None] - mu) / sd) ** 2)
        tot = dens.sum(axis=1) + 1e-300
        ll = float(np.log(tot).sum())
        resp = dens / tot[:, None]
        nk = np.maximum(resp.sum(axis=0), 1e-12)
        w = nk / n
        mu = (resp * t[:, None]).sum(axis=0) / nk
        sd = np.maximum(np.sqrt((resp * (t[:, None] - mu) ** 2).sum(axis=0) / nk), floor)
        if ll - ll_old < 1e-9 * max(1.0, abs(ll)):
            break
        ll_old = ll
    order = np.argsort(mu)
    return w[order], mu[order], sd[order], ll


def mixture_threshold(values: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Marker threshold from a two-population fit, with a documented fallback.

    Marker intensities of negative and positive cells are roughly log-normal, so a mixture of
    two Gaussians is fitted to ``log(value)`` (values shifted to be positive when needed).
    The fit is accepted when it separates: the two-component model beats one component by
    BIC (by more than 10), Ashman's D between the components is at least
    :data:`MIN_SEPARATION_D` and the smaller component holds at least
    :data:`MIN_MINOR_FRACTION` of the cells. The threshold is then where a cell is equally
    likely to belong to either component. Unlike Otsu's method, this does not assume two
    populations of similar size, so a run of controls (say 10 % positive cells) is not split
    in the middle of its negative population.

    When no second population separates, the cells are taken as one (negative) population and
    cells above ``median + 3 x 1.4826 x MAD`` of the log values are positive (about 0.1 % of
    a log-normal population), with a warning.

    Parameters
    ----------
    values : (N,) array
        Per-cell metric (e.g. ``cd31_mean_intensity``).

    Returns
    -------
    (float, dict)
        The threshold (positive means ``value >= threshold``; ``+inf`` when fewer than two
        distinct finite values exist) and what it was fitted on: ``rule`` (``mixture``,
        ``single_population`` or ``none``), ``n_cells``, ``separation_d``,
        ``positive_component_fraction`` and ``warnings`` (a list of sentences).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    info: dict[str, Any] = {"rule": "none", "n_cells": int(v.size), "warnings": []}
    if v.size < 2 or v.min() == v.max():
        info["warnings"].append(
            f"{v.size} cell(s) with distinct values: nobody can be called positive"
        )
        return float("inf"), info
    if v.size < MIN_AUTO_CELLS:
        info["warnings"].append(
            f"fitted on {v.size} cells (fewer than {MIN_AUTO_CELLS}): the automatic threshold "
            "is unreliable; set a fixed value or a control rule"
        )
    lo = float(v.min())
    shift = 0.0 if lo > 0 else -lo + max((np.median(v) - lo) * 1e-3, 1e-12)
    t = np.log(v + shift)
    n = t.size
    s1 = max(float(t.std()), 1e-12)
    ll1 = float(np.sum(-0.5 * ((t - t.mean()) / s1) ** 2 - np.log(s1 * np.sqrt(2 * np.pi))))
    w, mu, sd, ll2 = _em_two_gaussians(t)
    d = float(np.sqrt(2.0) * abs(mu[1] - mu[0]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2))
    dbic = (-2 * ll1 + 2 * np.log(n)) - (-2 * ll2 + 5 * np.log(n))
    info["separation_d"] = round(d, 2)
    separates = dbic > 10 and d >= MIN_SEPARATION_D and w.min() >= MIN_MINOR_FRACTION
    if separates:
        grid = np.linspace(mu[0], mu[1], 4001)
        logp = np.log(w / sd) - 0.5 * ((grid[:, None] - mu) / sd) ** 2
        above = np.flatnonzero(logp[:, 1] >= logp[:, 0])
        thr_t = grid[above[0]] if above.size else mu[1]
        info["rule"] = "mixture"
        info["positive_component_fraction"] = round(float(w[1]), 3)
        return float(np.exp(thr_t) - shift), info
    med = float(np.median(t))
    rsd = 1.4826 * float(np.median(np.abs(t - med)))
    info["rule"] = "single_population"
    info["warnings"].append(
        "no separate positive population (two-population fit: D = "
        f"{d:.2f}, needs >= {MIN_SEPARATION_D:g}): cells above median + "
        f"{FALLBACK_ROBUST_SD:g} robust SD are called positive; include positive cells in the "
        "run or set a fixed value or a control rule"
    )
    return float(np.exp(med + FALLBACK_ROBUST_SD * rsd) - shift), info


def control_threshold(control_values: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of the control cells' values, taken as an observed value.

    numpy's ``method="higher"``: the threshold is one of the control cells' values, so with
    ``value > threshold`` at most ``100 - percentile`` % of the control cells are positive,
    also for counts with ties (an interpolated percentile would not promise that).
    """
    cv = np.asarray(control_values, dtype=float)
    cv = cv[np.isfinite(cv)]
    return float(np.percentile(cv, percentile, method="higher"))
