"""Discovering nights and classifying raw files: every oddity becomes a Problem, never an exception."""

import itertools

import numpy as np
from astropy.io import fits

from astep_cal.formats.raw_night import discover_nights, inspect_frame, is_temporary, kind_from_name, take_inventory

_MINUTES = itertools.count()


def _frame(path, kind="Light Frame", exptime=60.0, shape=(20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(np.zeros(shape, np.uint16))
    hdu.header["IMAGETYP"] = kind
    hdu.header["DATE-OBS"] = f"2026-07-01T20:{next(_MINUTES) % 60:02d}:00"
    if exptime is not None:
        hdu.header["EXPTIME"] = exptime
    hdu.writeto(path)
    return path


def test_discover_nights_sorted_and_invalid_dates_reported(tmp_path):
    for name in ("2026-07-02", "2026-07-01", "2026-13-45", "notes", ".astep-cal"):
        (tmp_path / name).mkdir()
    nights, problems = discover_nights(tmp_path)
    assert nights == ["2026-07-01", "2026-07-02"]
    assert [(p.path.name, p.event) for p in problems] == [("2026-13-45", "night_dir_invalid")]


def test_names_and_temporaries():
    assert kind_from_name("2026-07-01_20.00.00_SCIENCE.fits") == "SCIENCE"
    assert kind_from_name("x_skyflat_3.fits") == "SKYFLAT"
    assert kind_from_name("2026-07-01_20.00.00.fits") is None
    assert all(is_temporary(n) for n in (".a_SCIENCE.fits.Xy12Ab", "a_SCIENCE.fits.part", "b.tmp"))
    assert not is_temporary("a_SCIENCE.fits")


def test_inventory_classifies_and_reports(tmp_path):
    cams = tmp_path / "2026-07-01" / "2026-07-01-CAMS"
    flats = tmp_path / "2026-07-01" / "2026-07-01-CAMS_SKYFLAT"
    _frame(cams / "a_SCIENCE.fits")
    _frame(cams / "b_DARK.fits", "Dark Frame")
    _frame(cams / "c_DARK.fits", "Dark Frame", exptime=30.0)
    _frame(cams / "d_BIAS.fits", "Bias Frame", exptime=None)
    _frame(cams / "e_SCIENCE.fits", "Dark Frame")  # name wins, mismatch noted
    _frame(cams / "f.fits", "Dark Frame")  # no type word: header decides
    _frame(cams / "g_SCIENCE.fits", exptime=None)  # science without EXPTIME
    (cams / "h_SCIENCE.fits").write_text("not a FITS file at all" * 100)
    (cams / "i_SCIENCE.fits").write_bytes(b"")
    good = _frame(cams / "j_SCIENCE.fits", shape=(200, 300))
    (cams / "k_SCIENCE.fits").write_bytes(good.read_bytes()[: 2880 + 5000])  # truncated
    (cams / ".k_SCIENCE.fits.AbC123").write_bytes(b"partial")  # rsync temporary: ignored
    (cams / "readme.txt").write_text("x")
    _frame(flats / "l_SKYFLAT.fits", "Flat Field", exptime=5.0)
    _frame(flats / "m_DARK.fits", "Dark Frame", exptime=5.0)
    inventory = take_inventory(tmp_path, "2026-07-01")
    assert sorted(f.name for f in inventory.science) == ["a_SCIENCE.fits", "e_SCIENCE.fits", "j_SCIENCE.fits"]
    assert sorted((f.name, f.exptime) for f in inventory.darks) == [
        ("b_DARK.fits", 60.0), ("c_DARK.fits", 30.0), ("f.fits", 60.0), ("m_DARK.fits", 5.0)]
    assert [f.exptime for f in inventory.biases] == [0.0]
    assert [f.name for f in inventory.flats] == ["l_SKYFLAT.fits"]
    events = {p.path.name: p.event for p in inventory.problems}
    assert events == {"g_SCIENCE.fits": "exptime_invalid", "h_SCIENCE.fits": "file_unreadable",
                      "i_SCIENCE.fits": "file_empty", "k_SCIENCE.fits": "file_truncated"}
    notes = {p.path.name: p.event for p in inventory.notes}
    assert notes == {"e_SCIENCE.fits": "type_mismatch", "readme.txt": "file_ignored"}


def test_missing_directories_are_problems_not_errors(tmp_path):
    (tmp_path / "2026-07-01").mkdir()
    inventory = take_inventory(tmp_path, "2026-07-01")
    assert [p.event for p in inventory.problems] == ["science_dir_missing"]
    assert [p.event for p in inventory.notes] == ["skyflat_dir_missing"]


def test_inspect_frame_refuses_non_images(tmp_path):
    path = tmp_path / "t_SCIENCE.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(path)
    assert inspect_frame(path).event == "frame_not_image"


def test_gzip_check_is_redone_when_the_file_changes(tmp_path):
    import gzip

    from astep_cal.formats.raw_night import Problem, RawFrame

    plain = _frame(tmp_path / "plain.fits", shape=(200, 300))
    packed = tmp_path / "2026-07-01_20.00.00_SCIENCE.fits.gz"
    payload = gzip.compress(plain.read_bytes(), compresslevel=1)
    packed.write_bytes(payload)
    assert isinstance(inspect_frame(packed), RawFrame)
    assert isinstance(inspect_frame(packed), RawFrame)  # the kept answer for the same file version
    packed.write_bytes(payload[: len(payload) // 2])  # rewritten short: a new version is inflated again
    problem = inspect_frame(packed)
    assert isinstance(problem, Problem) and problem.event == "file_truncated"
