"""Issue 23, header profiles and targets from the frames: ASTEP's own keywords (``SCIDCRD``, ``SCINAME``,
``BEGINOBS``, ``INSTFILT``) read through one mapping; a night of ASTEP-header frames (pointing only in
``SCIDCRD``, pixel pseudo-WCS cards present) solved with the hint and its target's light curve written with
no ``targets`` configured — through the real ``astep-cal once`` and the real solve-field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from conftest import SMALL, parse_events, read_ledger, run_cli_subprocess

from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.devtools.transit import TransitSpec
from astep_cal.engine import astrometry
from astep_cal.formats import products
from astep_cal.formats.header_profile import HeaderProfile, parse_ra_dec, read_frame_header
from astep_cal.science.calibrate import CalibratedFrame
from astep_cal.science.targets import frame_targets, merge_targets
from astep_cal.support.config import ConfigError, HeaderSettings, OutputSettings, Target, settings_from_dict

DATE = "2026-07-01"
# The transit night of test_lightcurve, shorter, with ASTEP's headers (a 1 % transit on a real Tycho-2 star).
SPEC = dataclasses.replace(NightSpec(**SMALL), fwhm_arcsec=30.0, n_science=10, cadence_s=600.0, n_cosmic_rays=4,
                           transit=TransitSpec(mid_time="2026-07-01T21:00:00", duration_h=1.4),
                           header_style="astep")


# --- the mapping --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("148.37737--45.71622", (148.37737, -45.71622)),
                                            ("10.5-20.25", (10.5, 20.25)), (" 0.0-+89.5 ", (0.0, 89.5))])
def test_scidcrd_is_ra_and_dec_joined_by_a_hyphen(text, expected):
    assert parse_ra_dec(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["148.37737", "148.3--45.7--1", "abc-def", "400.0-10.0", "10.0--95.0", ""])
def test_malformed_scidcrd_is_none(text):
    assert parse_ra_dec(text) is None


def test_astep_header_gives_pointing_target_start_and_filter():
    header = fits.Header({"SCIDCRD": "148.37737--45.71622", "SCINAME": "TIC 12345", "BEGINOBS": "2026-07-01T20:00:01",
                          "DATE-OBS": "2026-07-01", "INSTFILT": "RC", "OBJECT": "field"})
    read = read_frame_header(header)
    assert read.pointing == pytest.approx((148.37737, -45.71622)) and read.pointing_source == "SCIDCRD"
    assert (read.target.name, read.target.ra, read.target.dec) == ("TIC 12345", 148.37737, -45.71622)
    assert read.target.source == "SCINAME+SCIDCRD"
    assert read.exposure_start == "2026-07-01T20:00:01" and read.filter == "RC" and read.problems == ()
    assert astrometry.pointing_from_header(header) == pytest.approx((148.37737, -45.71622))


def test_generic_header_gives_object_at_the_pointing():
    read = read_frame_header(fits.Header({"OBJCTRA": "10 02 00", "OBJCTDEC": "-20 15 00", "OBJECT": "WASP-19"}))
    assert read.target.name == "WASP-19" and read.target.source == "OBJECT+OBJCTRA/OBJCTDEC"
    assert (read.target.ra, read.target.dec) == pytest.approx((150.5, -20.25))


def test_malformed_values_are_problems_not_exceptions():
    header = fits.Header({"SCIDCRD": "north of the pole", "SCINAME": "TIC 1", "RA": "junk", "DEC": 3.0,
                          "BEGINOBS": "yesterday", "INSTFILT": ""})
    read = read_frame_header(header)
    assert read.pointing is None and read.target is None and read.filter is None
    assert {p.keyword for p in read.problems} == {"SCIDCRD", "RA/DEC", "BEGINOBS"}


def test_the_configuration_extends_the_mapping():
    settings = settings_from_dict({"headers": {"target_coordinates": ["TARGPOS"], "pointing": ["TELRA/TELDEC"]}})
    profile = HeaderProfile.configured(settings.headers)
    assert profile.target_coordinates == ("TARGPOS", "SCIDCRD") and profile.pointing[0] == "TELRA/TELDEC"
    read = read_frame_header(fits.Header({"TELRA": 12.5, "TELDEC": -30.0, "TARGPOS": "12.6--30.1",
                                          "SCINAME": "T"}), profile)
    assert read.pointing == (12.5, -30.0) and (read.target.ra, read.target.dec) == (12.6, -30.1)
    assert HeaderProfile.configured(HeaderSettings()) == HeaderProfile()
    for bad in ({"pointing": ["RA"]}, {"filter": [3]}, {"nonsense": ["X"]}):
        with pytest.raises(ConfigError):
            settings_from_dict({"headers": bad})


def test_frame_targets_merge_with_configured_ones_by_name_or_position():
    headers = [{"TARGNAME": "TIC 1", "TARGRA": 10.0, "TARGDEC": -20.0}, {"TARGNAME": "tic1", "TARGRA": 10.0,
               "TARGDEC": -20.0}, {"TARGNAME": "Other", "TARGRA": 50.0, "TARGDEC": 5.0}, {"TARGNAME": "x"}]
    found = frame_targets(headers)
    assert [t.name for t in found] == ["TIC 1", "Other"]
    with_ephemeris = Target("TIC1", 10.0001, -20.0, t0=1.0, period=2.0, duration_h=3.0)
    assert merge_targets([with_ephemeris], found) == [with_ephemeris, found[1]]
    by_position = Target("Catalogue name", 50.0, 5.001)
    assert merge_targets([by_position], found) == [by_position, found[0]]


# --- a night through the real command ------------------------------------------------------------------

@pytest.fixture(scope="module")
def astep_night(tmp_path_factory):
    root = tmp_path_factory.mktemp("astep-headers")
    truth = make_night(root, SPEC)
    config = root / "astep.toml"
    config.write_text('[logging]\nformat = "json"\n')  # no targets: the frames name theirs
    completed = run_cli_subprocess("once", root, "--config", config)
    return root, truth, completed


def test_astep_frames_are_solved_with_the_hint_and_no_pseudo_wcs_reaches_the_cal_file(astep_night):
    root, truth, completed = astep_night
    assert completed.returncode == 0, completed.stderr[-2000:]
    raw = fits.getheader(truth.science_files[0])
    assert raw["CTYPE1"] == "PIXEL" and "RA" not in raw and "OBJCTRA" not in raw and "OBJECT" not in raw
    frames = read_ledger(root)["nights"][DATE]["frames"]
    assert len(frames) == SPEC.n_science
    for name, entry in frames.items():
        assert entry["astrometry"]["status"] == "solved" and entry["astrometry"]["hinted"] is True, name
        assert entry["calibrate"]["target"]["source"] == "SCINAME+SCIDCRD"
        assert entry["calibrate"]["date_obs"] == fits.getheader(root / DATE / f"{DATE}-CAMS" / name)["BEGINOBS"]
    # the first frame solved from SCIDCRD, every later one around that solution (solve_budget's tight hint)
    hints = [entry["astrometry"].get("hint") for _, entry in sorted(frames.items())]
    assert hints[0] is None and hints[1:] == ["earlier solution"] * (SPEC.n_science - 1)
    cal = products.read_cal_header(next((root / DATE / f"{DATE}-CAMS_CAL").glob("*_SCIENCE_CAL.fits")))
    assert cal["CTYPE1"].startswith("RA---TAN") and abs(cal["CRVAL1"] - SPEC.ra_deg) < 1


def test_the_frames_target_gets_its_light_curve_without_configuration(astep_night):
    root, truth, completed = astep_night
    events = parse_events(completed.stderr)
    named = [e for e in events if e["event"] == "target_from_frames"]
    assert [e["target"] for e in named] == ["SYN-1"]
    assert named[0]["ra"] == pytest.approx(truth.target["ra"], abs=1e-5)
    written = [e for e in events if e["event"] == "lightcurve_written"]
    assert [e["target"] for e in written] == ["SYN-1"]
    csv = (root / DATE / f"{DATE}-CAMS_CAL" / "lightcurve_SYN-1.csv").read_text().splitlines()
    rows = np.genfromtxt([line for line in csv if not line.startswith("#")], delimiter=",", names=True)
    assert len(rows) == SPEC.n_science and np.count_nonzero(rows["flag"] == 0) >= SPEC.n_science - 2


def test_a_cameras_pixel_pseudo_wcs_never_reaches_the_cal_file_but_a_sky_wcs_does(tmp_path):
    frame = CalibratedFrame(np.ones((8, 8), np.float32), np.zeros((8, 8), np.uint8), 0, 0, 1.0)
    pseudo = fits.Header({"CTYPE1": "PIXEL", "CTYPE2": "PIXEL", "CRVAL1": 512.0, "CRVAL2": 512.0, "CRPIX1": 1.0,
                          "CDELT1": 1.0, "SCIDCRD": "148.37737--45.71622"})
    for compress in (False, True):
        header = products.calibrated_hdul(pseudo, frame, {}, OutputSettings(compress=compress))[int(compress)].header
        assert not any(key in header for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CDELT1"))
        assert header["SCIDCRD"] == "148.37737--45.71622"
    sky = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": -60.0})
    assert products.calibrated_hdul(sky, frame, {})[0].header["CRVAL1"] == 150.0
