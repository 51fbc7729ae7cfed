"""The ratio of a transit's depths in two colours (ASTEP+'s blue and red cameras): a pure function on the
two light curves' arrays.

A planet's transit is nearly achromatic (blue/red ~ 1: limb darkening moves it by a few per cent), a
blended eclipsing binary's usually is not: the check ASTEP+'s two colours exist for, done on site.

Method: both colours see the same event, so one transit shape serves both — a trapezoid (ingress and
egress each :data:`INGRESS_FRACTION` of the duration) at the ephemeris' mid-time and duration when the
target has one, else at the mid-time and duration that minimise the two curves' summed chi-square over a
grid (dips only). With the shape fixed, each colour's curve is ``level * (1 - depth * shape)``: a weighted
linear least-squares fit of ``level`` and ``level * depth``, whose covariance, scaled by the reduced
chi-square when the scatter exceeds the error bars (red noise, clouds), gives the depth's error. The
ratio's error is propagated from the two depths' (the shape's own uncertainty moves both depths alike and
largely cancels in the ratio; it is not added).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INGRESS_FRACTION = 0.15  # ingress (and egress) time as a fraction of the duration
MID_STEP_D = 2.0 / 1440  # grid step of the mid-time search (days)
DURATIONS_H = tuple(np.arange(0.5, 6.01, 1.0 / 12))  # durations searched (hours, 5-min steps)
MIN_POINTS = 3  # points in transit (on the flat bottom half) and out of it, per colour, for a fit
SIGNIFICANT = 3.0  # a depth below this many of its sigmas is no transit: the ratio is not judged


@dataclass(frozen=True)
class Curve:
    """One colour's light curve: times (BJD_TDB, days), relative flux and its 1-sigma error (good points)."""

    t: np.ndarray
    flux: np.ndarray
    err: np.ndarray


@dataclass(frozen=True)
class Depth:
    depth: float  # fractional flux lost on the flat bottom
    error: float
    n_in: int  # points with the shape > 0.5
    n_out: int  # points out of transit
    rms: float  # scatter of the residuals


@dataclass(frozen=True)
class DepthRatio:
    status: str  # "ok", "no_transit" (a depth not significant), "too_few_points"
    ratio: float | None  # blue / red
    error: float | None
    blue: Depth | None
    red: Depth | None
    mid_bjd: float | None
    duration_h: float | None
    method: str  # "ephemeris" or "fit"


def transit_shape(t: np.ndarray, mid: float, duration_d: float) -> np.ndarray:
    """Fraction of the depth at each time: 0 out of transit, 1 on the flat bottom, linear in between."""
    ramp = max(INGRESS_FRACTION * duration_d, 1e-9)
    return np.clip((duration_d / 2 - np.abs(np.asarray(t, float) - mid)) / ramp, 0.0, 1.0)


def fit_depth(curve: Curve, shape: np.ndarray) -> Depth | None:
    """The depth (and its error) of one colour for a given transit shape; None without points in and out."""
    n_in, n_out = int(np.sum(shape > 0.5)), int(np.sum(shape == 0))
    if n_in < MIN_POINTS or n_out < MIN_POINTS:
        return None
    w = 1.0 / curve.err ** 2
    design = np.column_stack([np.ones_like(shape), shape])
    normal = design.T @ (design * w[:, None])
    level, slope = np.linalg.solve(normal, design.T @ (w * curve.flux))  # flux = level + slope * shape
    residual = curve.flux - (level + slope * shape)
    dof = max(len(shape) - 2, 1)
    scale = max(1.0, float(np.sum(w * residual ** 2)) / dof)
    cov = np.linalg.inv(normal) * scale
    depth = -slope / level
    gradient = np.array([slope / level ** 2, -1.0 / level])  # d depth / d (level, slope)
    return Depth(float(depth), float(np.sqrt(gradient @ cov @ gradient)), n_in, n_out, float(np.std(residual)))


def _grid_chi2(curve: Curve, mid: float, durations_d: np.ndarray) -> np.ndarray:
    """Chi-square of the best ``level + slope * shape`` for each duration at one mid-time (inf where the
    shape has too few points in or out, or the fit is a bump, not a dip)."""
    shapes = np.clip((durations_d[:, None] / 2 - np.abs(curve.t[None, :] - mid))
                     / (INGRESS_FRACTION * durations_d[:, None]), 0.0, 1.0)
    w, y = 1.0 / curve.err ** 2, curve.flux
    s, sx, sxx = w.sum(), shapes @ w, (shapes ** 2) @ w
    sy, sxy, syy = float(w @ y), shapes @ (w * y), float(w @ y ** 2)
    det = s * sxx - sx ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        level = (sxx * sy - sx * sxy) / det
        slope = (s * sxy - sx * sy) / det
        chi2 = syy - level * sy - slope * sxy
    usable = ((shapes > 0.5).sum(axis=1) >= MIN_POINTS) & ((shapes == 0).sum(axis=1) >= MIN_POINTS) & (slope < 0)
    return np.where(usable & (det > 0), chi2, np.inf)


def find_transit(curves: list[Curve]) -> tuple[float, float] | None:
    """(mid-time, duration in days) of the trapezoid that best fits all curves at once; None if none fits."""
    t_all = np.concatenate([c.t for c in curves])
    durations = np.asarray(DURATIONS_H) / 24.0
    best = (np.inf, None, None)
    for mid in np.arange(t_all.min(), t_all.max() + MID_STEP_D, MID_STEP_D):
        chi2 = sum(_grid_chi2(curve, mid, durations) for curve in curves)
        index = int(np.argmin(chi2))
        if chi2[index] < best[0]:
            best = (float(chi2[index]), float(mid), float(durations[index]))
    return None if best[1] is None else (best[1], best[2])


def ephemeris_transit(t: np.ndarray, t0: float, period: float, duration_h: float) -> tuple[float, float]:
    """The ephemeris' transit nearest the night's middle: (mid-time, duration in days)."""
    middle = float(np.median(t))
    return t0 + round((middle - t0) / period) * period, duration_h / 24.0


def depth_ratio(blue: Curve, red: Curve, ephemeris: tuple[float, float, float] | None = None) -> DepthRatio:
    """Blue/red transit depth ratio with its error. ``ephemeris``: (t0 BJD_TDB, period d, duration h)."""
    method = "ephemeris" if ephemeris is not None else "fit"
    if ephemeris is not None:
        found = ephemeris_transit(np.concatenate([blue.t, red.t]), *ephemeris)
    else:
        found = find_transit([blue, red]) if min(len(blue.t), len(red.t)) >= 2 * MIN_POINTS else None
    depths = [fit_depth(c, transit_shape(c.t, *found)) for c in (blue, red)] if found else [None, None]
    if found is None or None in depths:
        return DepthRatio("too_few_points", None, None, *depths, *(found or (None, None)), method=method)
    b, r = depths
    mid, duration_d = found
    significant = b.depth > SIGNIFICANT * b.error and r.depth > SIGNIFICANT * r.error
    if b.depth <= 0 or r.depth <= 0:  # a colour without a dip: no ratio to speak of
        return DepthRatio("no_transit", None, None, b, r, mid, duration_d * 24, method)
    ratio = b.depth / r.depth
    error = ratio * float(np.hypot(b.error / b.depth, r.error / r.depth))
    return DepthRatio("ok" if significant else "no_transit", ratio, error, b, r, mid, duration_d * 24, method)
