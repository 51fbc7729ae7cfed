"""The Moon (``science.moon``) against astropy's ``get_body`` + ``AltAz``, and nights dated past the bundled
IERS table: what the station sees from its first month on, with an offline install.

The bundled table (``astropy-iers-data``) holds predictions for about a year after its release, and
astropy refuses predictions more than 30 days old. The old code asked astropy for the Moon and for the
light curves' BJD and airmass that way: every frame's health and every light curve of a night dated in
the predicted part (once the table was a month old) or past its end failed with a ValueError.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from astropy.coordinates import AltAz, SkyCoord, get_body
from astropy.io import fits
from astropy.time import Time
from astropy.utils import iers
from conftest import SMALL, parse_events, read_ledger, run_cli_subprocess

from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.devtools.transit import TransitSpec
from astep_cal.science import moon
from astep_cal.science.lightcurve_time import CONCORDIA, bjd_and_airmass, mid_exposure

FAR_DATE = "2031-06-01"  # past the bundled table's end, whatever its release


def _astropy_moon(date_obs: str, ra: float, dec: float) -> dict[str, float]:
    import astropy.units as u

    when = Time(date_obs, scale="utc")
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None), \
            iers.conf.set_temp("iers_degraded_accuracy", "ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body, sun = get_body("moon", when, CONCORDIA), get_body("sun", when, CONCORDIA)
        altitude = body.transform_to(AltAz(obstime=when, location=CONCORDIA)).alt.deg
        separation = body.separation(SkyCoord(ra * u.deg, dec * u.deg), origin_mismatch="ignore").deg
        elongation = sun.separation(body, origin_mismatch="ignore").rad
    return {"moon_alt_deg": float(altitude), "moon_sep_deg": float(separation),
            "moon_illumination": float((1 - np.cos(elongation)) / 2)}


def test_the_moon_is_astropys_to_a_hundredth_of_a_degree() -> None:
    rng = np.random.default_rng(11)
    for _ in range(25):
        day = int(rng.integers(0, 4 * 365))
        when = (np.datetime64("2022-01-01T00:00:00") + np.timedelta64(day * 86400 + int(rng.integers(0, 86400)), "s"))
        ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-90, 0))
        ours, theirs = moon.position(str(when), ra, dec), _astropy_moon(str(when), ra, dec)
        assert abs(ours["moon_alt_deg"] - theirs["moon_alt_deg"]) < 0.02, (when, ours, theirs)
        assert abs(ours["moon_sep_deg"] - theirs["moon_sep_deg"]) < 0.02, (when, ours, theirs)
        assert abs(ours["moon_illumination"] - theirs["moon_illumination"]) < 0.002, (when, ours, theirs)


def test_times_past_the_bundled_table_give_a_moon_a_bjd_and_an_airmass() -> None:
    date_obs = f"{FAR_DATE}T20:00:00"
    assert set(moon.position(date_obs, 100.0, -45.0)) == {"moon_alt_deg", "moon_sep_deg", "moon_illumination"}
    bjd, airmass = bjd_and_airmass(mid_exposure([fits.Header({"DATE-OBS": date_obs, "EXPTIME": 60.0})]), 100.0, -45.0)
    assert abs(bjd[0] - Time(date_obs).jd) < 0.01 and np.isfinite(airmass[0]) and airmass[0] >= 1.0


def test_light_curve_times_do_not_depend_on_the_tables_age() -> None:
    """The bundled table seen from 2040 (astropy's own ``_time_now`` hook): its predictions are years old.
    The old code refused them whatever the frame's date past the measured part; this fails on it at any
    wall-clock date, where the night test below fails on it only once the installed table is 30 days old."""
    table = iers.earth_orientation_table.get()
    table._time_now = Time("2040-01-01T00:00:00")
    try:
        for date_obs in (f"{FAR_DATE}T20:00:00", "2027-06-01T20:00:00"):
            header = fits.Header({"DATE-OBS": date_obs, "EXPTIME": 60.0})
            bjd, airmass = bjd_and_airmass(mid_exposure([header]), 100.0, -45.0)
            assert np.isfinite(bjd[0]) and np.isfinite(airmass[0])
    finally:
        del table._time_now


@pytest.fixture(scope="module")
def far_night(tmp_path_factory):
    """A night dated past the table through the real ``once``: health on, a configured target (the
    transiting star)."""
    root = tmp_path_factory.mktemp("far")
    spec = dataclasses.replace(NightSpec(**SMALL), date=FAR_DATE, start_time=f"{FAR_DATE}T20:00:00",
                               fwhm_arcsec=30.0, n_science=4, cadence_s=300.0, n_cosmic_rays=4,
                               transit=TransitSpec(mid_time=f"{FAR_DATE}T20:10:00", duration_h=0.2))
    truth = make_night(root, spec)
    config = root / "far.toml"
    config.write_text('[logging]\nformat = "json"\n[photometry]\ntargets = [{ name = "FAR-1", ra = %r, dec = %r }]\n'
                      % (truth.target["ra"], truth.target["dec"]))
    completed = run_cli_subprocess("once", root, "--config", config)
    return root, completed


def test_a_night_past_the_table_gets_its_light_curve_and_every_frames_moon(far_night) -> None:
    root, completed = far_night
    assert completed.returncode == 0, completed.stderr[-2000:]
    events = parse_events(completed.stderr)
    assert [e["target"] for e in events if e["event"] == "lightcurve_written"] == ["FAR-1"], \
        [e for e in events if e["level"] in ("warning", "error")]
    cal = root / FAR_DATE / f"{FAR_DATE}-CAMS_CAL"
    assert (cal / "lightcurve_FAR-1.csv").exists()
    health = [frame["health"] for frame in read_ledger(root)["nights"][FAR_DATE]["frames"].values()]
    assert len(health) == 4 and all(h["status"] == "ok" and "moon_alt_deg" in h for h in health), health
