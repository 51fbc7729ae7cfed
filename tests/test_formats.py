"""On-disk formats defined once: header keywords (keywords.py), names and layout (names.py), the
ledger's records (entries.py). Fast: no pixels."""

from pathlib import Path

from astropy.io import fits

from astep_cal.formats import keywords as kw
from astep_cal.formats import names
from astep_cal.state import entries


def _all_keywords() -> list[kw.Keyword]:
    return [value for value in vars(kw).values() if isinstance(value, kw.Keyword)]


def test_keywords_are_valid_fits_cards_and_unique():
    keys = _all_keywords()
    assert len({k.name for k in keys}) == len(keys)
    for key in keys:
        name, (value, comment) = key.card("x")
        card = fits.Card(name, value, comment)
        card.verify("exception")  # a standard 8-character keyword, printable comment
        assert len(name) <= 8 and name == name.upper()


def test_recovery_needs_only_keywords_every_cal_file_has():
    assert {k.name for k in kw.PROVENANCE_NEEDED} == {"ASTCVER", "ASTCRAW", "ASTCRAWF", "ASTCCONF"}


def test_names_of_outputs():
    assert names.cal_name("2026-07-01_20.00.00_SCIENCE.fits.fz") == "2026-07-01_20.00.00_SCIENCE_CAL.fits"
    assert names.cal_name("a_SCIENCE.FTS.gz") == "a_SCIENCE_CAL.fits"
    assert names.dark_file_name(60.0) == "master_dark_60s.fits"
    root = Path("/data")
    assert names.masters_dir(root, "2026-07-01") == Path("/data/2026-07-01/2026-07-01-CAMS_CAL/masters")
    assert names.skyflat_dir(root, "2026-07-01").name == "2026-07-01-CAMS_SKYFLAT"


def test_a_name_survives_a_fits_header():
    name = "2026-07-01_20.00.00_SCIENCE_Été 100%.fits"
    encoded = names.header_name(name)
    fits.Card("ASTCRAW", encoded).verify("exception")
    assert encoded.isascii() and names.name_from_header(encoded) == name


def test_entry_accessors_read_what_the_writers_write():
    entry = {"raw": "1:2", "calibrate": {"status": "ok", "quality": {"n_stars": 12}},
             "astrometry": {"status": "failed", "tries": 2}}
    assert entries.calibration_status(entry) == "ok" and entries.quality(entry) == {"n_stars": 12}
    assert (entries.solve_status(entry), entries.solve_tries(entry)) == ("failed", 2)
    never = {"raw": "1:2"}
    assert entries.calibration_status(never) is None and entries.solve_tries(never) == 0
    assert entries.masters_record({"frames": {}}) == {}
