"""A transiting star and a changing sky for synthetic nights (used by ``synthetic``).

The light curve of a night can only be judged against a known transit: one real Tycho-2 star of the
field is given a trapezoid transit (depth, mid-time, duration), and every frame a transparency (thin
cirrus: all stars dimmed alike, the sky unchanged), optionally a cloud that dims one frame a lot.
Each frame's draws come from their own stream, ``(seed, 99, index)``, so a night without these options
is exactly the night it was before they existed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from astropy.table import Table


@dataclass(frozen=True)
class TransitSpec:
    """The transit of one field star; the star is chosen by ``mag`` (the Tycho-2 star of the central
    part of the field closest to it, isolated) unless ``ra``/``dec`` name it."""

    name: str = "SYN-1"  # the OBJECT header of the science frames, and the target's name
    depth: float = 0.01  # fractional flux lost at mid-transit
    mid_time: str = "2026-07-01T21:30:00"  # UTC, ISO
    duration_h: float = 1.5  # first to last contact
    ingress_fraction: float = 0.15  # ingress (and egress) time as a fraction of the duration
    mag: float = 8.0  # MAG_VT wanted for the target
    ra: float | None = None  # explicit target (degrees), e.g. a saturated or off-frame one
    dec: float | None = None


def choose_target(stars: Table, spec: TransitSpec, centre_xy: tuple[float, float], half_width_px: float,
                  isolation_px: float, avoid_column: int | None = None) -> int:
    """Row of ``stars`` (with pixel ``x``/``y``) carrying the transit.

    An explicit ``ra``/``dec`` gives the nearest star; else the star closest to ``spec.mag`` within
    ``half_width_px`` of the centre with no star brighter than 3 mag fainter within ``isolation_px``,
    nor ``avoid_column`` (the sensor's dead column: a target on it is another test).
    """
    ra, dec, mag = (np.asarray(stars[k], float) for k in ("ra", "dec", "mag"))
    if spec.ra is not None and spec.dec is not None:
        distance = np.hypot((ra - spec.ra) * np.cos(np.deg2rad(spec.dec)), dec - spec.dec)
        return int(np.argmin(distance))
    x, y = np.asarray(stars["x"], float), np.asarray(stars["y"], float)
    central = (np.abs(x - centre_xy[0]) < half_width_px) & (np.abs(y - centre_xy[1]) < half_width_px)
    if avoid_column is not None:
        central &= np.abs(x - avoid_column) > isolation_px
    separation = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    neighbour = (separation < isolation_px) & (mag[None, :] < mag[:, None] + 3.0)
    isolated = neighbour.sum(axis=1) == 1  # itself only
    score = np.where(central & isolated, np.abs(mag - spec.mag), np.inf)
    if not np.isfinite(score).any():
        raise ValueError("no isolated star in the central part of the field to carry the transit")
    return int(np.argmin(score))


def transit_factor(spec: TransitSpec, when: dt.datetime) -> float:
    """Flux of the star at ``when`` (UTC) relative to out of transit: a trapezoid."""
    mid = dt.datetime.fromisoformat(spec.mid_time)
    half = spec.duration_h * 1800.0
    ramp = max(spec.ingress_fraction * spec.duration_h * 3600.0, 1e-9)
    offset = abs((when - mid).total_seconds())
    fraction = np.clip((half - offset) / ramp, 0.0, 1.0)  # 0 outside, 1 on the flat bottom
    return float(1.0 - spec.depth * fraction)


def transparency(seed: int, index: int, rms: float, cloud_frames: tuple[int, ...], cloud_dimming: float) -> float:
    """Fraction of the starlight that reaches the telescope in science frame ``index``.

    Thin cirrus: ``1 - |N(0, rms)|``; a cloud frame loses ``cloud_dimming`` of it on top.
    """
    factor = 1.0
    if rms > 0:
        factor -= abs(float(np.random.default_rng([seed, 99, index]).normal(0.0, rms)))
    if index in cloud_frames:
        factor *= 1.0 - cloud_dimming
    return max(factor, 0.0)
