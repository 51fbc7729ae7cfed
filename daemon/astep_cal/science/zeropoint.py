"""A frame's photometric zero point, sky brightness and Moon, from its catalogue and Tycho-2 stars.

Pure functions (arrays in, numbers out; the reference table is read by the engine, ``engine/health``):

* The zero point is ``median(MAG_VT + 2.5 log10(flux_e / exptime))`` over catalogue stars matched to a
  Tycho-2 star, unflagged (no saturated, bad, cosmic-ray or edge pixel in the aperture) and well
  measured (S/N above ``min_snr``): the magnitude that gives 1 e-/s. The largest aperture is used (the
  nearest to the total flux, so a seeing change moves the zero point least). A median with a robust
  scatter (1.4826 MAD) ignores the odd blended or variable star; the scatter and the count say how far
  to trust it. The RC filter is not V: colour terms are ~0.1 mag per star but the same every night for
  a field, so night-to-night the zero point follows the throughput.
* Sky brightness (mag/arcsec²) = ``ZP - 2.5 log10(sky_e / exptime / scale²)``.
* The Moon's altitude and separation are :mod:`astep_cal.science.moon`'s (ERFA, offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MATCH_ARCSEC_MIN = 2.0  # positional match radius floor (a fraction of a pixel on ASTEP)


@dataclass(frozen=True)
class ZeroPoint:
    """A frame's zero point (mag for 1 e-/s), its robust scatter (mag) and the stars it rests on."""

    zp: float | None
    scatter: float | None
    n_stars: int

    def record(self) -> dict[str, Any]:
        return {"zp": _round(self.zp, 4), "zp_scatter": _round(self.scatter, 4), "zp_stars": self.n_stars}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def robust_std(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: a standard deviation that ignores outliers."""
    values = np.asarray(values, float)
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else float("nan")


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.deg2rad(np.asarray(ra_deg, float)), np.deg2rad(np.asarray(dec_deg, float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def match_stars(ra: np.ndarray, dec: np.ndarray, ref_ra: np.ndarray, ref_dec: np.ndarray,
                radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (catalogue row, reference row) nearer than ``radius_arcsec``, each side used once at most
    (the nearest pair wins): a blend of two reference stars in one source is left out."""
    from scipy.spatial import cKDTree

    ok = np.isfinite(ra) & np.isfinite(dec)
    rows = np.nonzero(ok)[0]
    if not rows.size or not len(ref_ra):
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(_unit_vectors(ref_ra, ref_dec))
    chord = 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)
    distance, ref = tree.query(_unit_vectors(ra[rows], dec[rows]), k=2, distance_upper_bound=chord)
    single = np.isfinite(distance[:, 0]) & ~np.isfinite(distance[:, 1])  # one reference star only
    cat_rows, ref_rows = rows[single], ref[single, 0]
    unique, counts = np.unique(ref_rows, return_counts=True)
    keep = np.isin(ref_rows, unique[counts == 1])
    return cat_rows[keep], ref_rows[keep]


def zero_point(mag: np.ndarray, flux_e: np.ndarray, flux_err: np.ndarray, flags: np.ndarray, exptime: float,
               min_snr: float = 20.0, min_stars: int = 3) -> ZeroPoint:
    """The zero point over matched stars (``mag`` their MAG_VT; the other arrays the catalogue's)."""
    mag, flux_e, flux_err = (np.asarray(a, float) for a in (mag, flux_e, flux_err))
    good = (np.asarray(flags) == 0) & np.isfinite(mag) & (flux_e > 0) & (flux_e > min_snr * flux_err)
    if exptime <= 0 or np.count_nonzero(good) < min_stars:
        return ZeroPoint(None, None, int(np.count_nonzero(good)))
    values = mag[good] + 2.5 * np.log10(flux_e[good] / exptime)
    return ZeroPoint(float(np.median(values)), robust_std(values), int(values.size))


def sky_brightness(zp: float | None, sky_e: float, exptime: float, pixel_scale_arcsec: float) -> float | None:
    """The sky's surface brightness in mag/arcsec² (None without a zero point or sky)."""
    if zp is None or sky_e <= 0 or exptime <= 0 or pixel_scale_arcsec <= 0:
        return None
    return float(zp - 2.5 * np.log10(sky_e / exptime / pixel_scale_arcsec ** 2))
