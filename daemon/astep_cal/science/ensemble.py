"""Differential photometry against a weighted ensemble of comparison stars (Broeg, Fernandez &
Neuhauser 2005): weights from each star's own scatter, iterated, so variable comparisons weigh little."""

from __future__ import annotations

import warnings

import numpy as np


def robust_std(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """1.4826 x the median absolute deviation (NaN ignored): a cloud or a cosmic ray does not count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(values, axis=axis, keepdims=True)
        return 1.4826 * np.nanmedian(np.abs(values - median), axis=axis)


def broeg_weights(norm: np.ndarray, norm_err: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Weights of the comparison stars (Broeg et al. 2005), from their normalised fluxes (frames x stars).

    Start from the photometric errors; then, in turn, each star's light curve is divided by the
    weighted ensemble of the *others* and its weight becomes 1/scatter^2, until no weight moves by more
    than 0.1 %. A star more than 3 times noisier than the median star (variable, blended) gets 0.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        weights = 1.0 / np.nanmedian(norm_err, axis=0) ** 2
    weights = np.where(np.isfinite(weights), weights, 0.0)
    if norm.shape[1] < 2:
        return np.ones(norm.shape[1])
    present = np.isfinite(norm)
    values = np.where(present, norm, 0.0)
    for _ in range(iterations):
        total, mass = values @ weights, present @ weights
        others = (total[:, None] - values * weights) / (mass[:, None] - present * weights)
        scatter = robust_std(np.where(present, norm / others, np.nan), axis=0)
        new = np.where(scatter > 0, 1.0 / np.maximum(scatter, 1e-9) ** 2, 0.0)
        settled = np.allclose(new, weights, rtol=1e-3)
        weights = new
        if settled:
            break
    scatter = 1.0 / np.sqrt(np.maximum(weights, 1e-300))
    weights[scatter > 3.0 * np.median(scatter)] = 0.0
    return weights


def ensemble_flux(norm: np.ndarray, norm_err: np.ndarray,
                  weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weighted ensemble per frame and its error; a star more than 4 sigma off it in one frame (a
    cosmic-ray residue, a satellite) is left out of that frame, and the ensemble computed again."""
    present = np.isfinite(norm)
    for _ in range(2):
        mass = present @ weights
        ensemble = np.where(present, norm, 0.0) @ weights / mass
        sigma = 1.0 / np.sqrt(np.maximum(weights, 1e-300))
        present &= ~(np.abs(norm / ensemble[:, None] - 1.0) > 4.0 * sigma)
    mass = present @ weights
    ensemble = np.where(present, norm, 0.0) @ weights / mass
    ensemble_err = np.sqrt(np.where(present, norm_err, 0.0) ** 2 @ weights ** 2) / mass
    return ensemble, ensemble_err


def differential(flux: np.ndarray, err: np.ndarray, target: int,
                 comparisons: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Relative flux of the target, its error, the ensemble's normalised flux and the weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmedian(flux[:, comparisons], axis=0)
        norm, norm_err = flux[:, comparisons] / level, err[:, comparisons] / level
        weights = broeg_weights(norm, norm_err)
        ensemble, ensemble_err = ensemble_flux(norm, norm_err, weights)
        target_norm = flux[:, target] / np.nanmedian(flux[:, target])
        rel = target_norm / ensemble
        rel_err = np.abs(rel) * np.hypot(err[:, target] / flux[:, target], ensemble_err / ensemble)
    return rel, rel_err, ensemble, weights


def point_to_point(values: np.ndarray) -> float:
    """Scatter of one point from successive differences (robust; a transit's slow change is ignored)."""
    values = values[np.isfinite(values)]
    return float(robust_std(np.diff(values)) / np.sqrt(2.0)) if len(values) > 2 else float("inf")
