"""Times and airmass of light-curve points at Concordia (Dome C), without any network.

BJD_TDB is what transit times are compared in: the frame's mid-exposure (``DATE-OBS`` + ``EXPTIME``/2,
UTC) moved to the Solar System's barycentre along the target's direction. astropy computes it with its
built-in ephemeris; the IERS tables are not downloaded (the station has no Internet). The bundled table
(``astropy-iers-data``) is as old as the install: astropy refuses its predictions once they are more than
30 days old (``auto_max_age``), which at the station is every night after the first month — every light
curve failed so. The age check is off here: past the measured part astropy uses the predictions, and past
the table's end the last values, which moves the airmass by far less than its last digit and the BJD by
microseconds (UT1 enters only through the station's place).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

import astropy.units as u
import numpy as np
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.utils import iers

CONCORDIA = EarthLocation.from_geodetic(lon=123.3325 * u.deg, lat=-75.0997 * u.deg, height=3233 * u.m)


def mid_exposure(headers: Sequence[fits.Header]) -> Time:
    """UTC mid-exposure of each frame from ``DATE-OBS`` (start) and ``EXPTIME`` (s)."""
    moments = [dt.datetime.fromisoformat(str(h["DATE-OBS"]).rstrip("Z"))
               + dt.timedelta(seconds=float(h.get("EXPTIME", 0.0)) / 2) for h in headers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ERFA's "dubious year": a date past its leap-second table
        return Time(moments, scale="utc", location=CONCORDIA)


def bjd_and_airmass(times: Time, ra: float, dec: float) -> tuple[np.ndarray, np.ndarray]:
    """BJD_TDB (days) and airmass (sec z; NaN below the horizon) of a target at ``times``."""
    target = SkyCoord(ra * u.deg, dec * u.deg)
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None), \
            iers.conf.set_temp("iers_degraded_accuracy", "warn"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bjd = (times.tdb + times.light_travel_time(target, "barycentric", ephemeris="builtin")).jd
        altitude = target.transform_to(AltAz(obstime=times, location=CONCORDIA)).alt.to_value(u.rad)
    airmass = np.where(altitude > 0, 1.0 / np.sin(np.maximum(altitude, 1e-6)), np.nan)
    return np.asarray(bjd, float), airmass
