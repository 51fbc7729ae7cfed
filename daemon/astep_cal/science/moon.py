"""The Moon at Concordia: its altitude, its separation from a field and its illuminated fraction.

The figures go into a frame's health record beside its sky brightness (a bright sky with the Moon up is
no alarm), rounded to 0.01 deg and computed once per 5 minutes of a pointing: a tenth of a degree would
do. They come from ERFA (pyerfa, which astropy itself calls): the Moon's geocentric place
(``moon98``, a few arcseconds), the Sun's (``epv00``), the Earth's orientation (``c2t06a``, UT1 taken as
UTC and no polar motion: < 0.01 deg) and the station's place (``gd2gc``). astropy's ``get_body`` +
``AltAz`` give the same to 0.01 deg (``tests/test_moon.py``), but their first call in a process reads
the IERS tables, ~1.1 s of CPU, in the middle of a night's first frames; these calls take milliseconds.
"""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

import erfa
import numpy as np

CONCORDIA_LON_DEG, CONCORDIA_LAT_DEG, CONCORDIA_HEIGHT_M = 123.3325, -75.0997, 3233.0
AU_M = erfa.DAU  # astronomical unit in metres


def _julian_dates(date_obs: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(TT, UTC) two-part Julian dates of an ISO UTC time (ERFA's leap-second table)."""
    when = dt.datetime.fromisoformat(date_obs.replace("Z", "")).replace(tzinfo=None)
    seconds = when.second + when.microsecond / 1e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", erfa.ErfaWarning)  # "dubious year": a date past ERFA's table
        utc = erfa.dtf2d("UTC", when.year, when.month, when.day, when.hour, when.minute, seconds)
        tt = erfa.taitt(*erfa.utctai(*utc))
    return (float(tt[0]), float(tt[1])), (float(utc[0]), float(utc[1]))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _angle_deg(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(_unit(first), _unit(second)), -1.0, 1.0))))


def position(date_obs: str, ra_deg: float, dec_deg: float) -> dict[str, Any]:
    """The Moon's altitude (deg) at Concordia, its separation (deg) from the field at ``ra_deg``,
    ``dec_deg`` and its illuminated fraction at ``date_obs`` (UTC, ISO). Raises ValueError for a time
    that is not ISO."""
    tt, utc = _julian_dates(date_obs)
    celestial_to_terrestrial = erfa.c2t06a(tt[0], tt[1], utc[0], utc[1], 0.0, 0.0)
    station = erfa.gd2gc(1, np.radians(CONCORDIA_LON_DEG), np.radians(CONCORDIA_LAT_DEG), CONCORDIA_HEIGHT_M)
    station_celestial = celestial_to_terrestrial.T @ station / AU_M
    moon = erfa.moon98(*tt)[0] - station_celestial  # seen from the station (parallax: up to 1 deg)
    sun = -erfa.epv00(*tt)[0][0] - station_celestial
    lon, lat = np.radians(CONCORDIA_LON_DEG), np.radians(CONCORDIA_LAT_DEG)
    zenith = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    altitude = 90.0 - _angle_deg(celestial_to_terrestrial @ moon, zenith)
    field = erfa.s2c(np.radians(ra_deg), np.radians(dec_deg))
    elongation = np.radians(_angle_deg(sun, moon))
    return {"moon_alt_deg": round(altitude, 2), "moon_sep_deg": round(_angle_deg(moon, field), 2),
            "moon_illumination": round(float((1.0 - np.cos(elongation)) / 2.0), 3)}
