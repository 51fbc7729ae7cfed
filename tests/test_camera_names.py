"""Issue 23, camera channels (a start): the camera suffix of the night directories is a parameter carried by
the night key, so the default camera's paths, ledger keys and listings are unchanged."""

from __future__ import annotations

from pathlib import Path

from astep_cal.formats import names
from astep_cal.formats.raw_night import raw_listing


def test_the_default_camera_keeps_todays_layout():
    root = Path("/data")
    assert names.night_unit("2026-07-01") == "2026-07-01" == names.night_unit("2026-07-01", "CAMS")
    assert names.cams_dir(root, "2026-07-01") == root / "2026-07-01" / "2026-07-01-CAMS"
    assert names.skyflat_dir(root, "2026-07-01") == root / "2026-07-01" / "2026-07-01-CAMS_SKYFLAT"
    assert names.masters_dir(root, "2026-07-01") == root / "2026-07-01" / "2026-07-01-CAMS_CAL" / "masters"
    assert names.split_unit("2026-07-01") == ("2026-07-01", "CAMS")


def test_another_camera_is_its_own_night_key_beside_its_raw_directory():
    root = Path("/data")
    red = names.night_unit("2024-09-06", "CAMR")
    assert red == "2024-09-06-CAMR" and names.split_unit(red) == ("2024-09-06", "CAMR")
    assert names.cams_dir(root, red) == root / "2024-09-06" / "2024-09-06-CAMR"
    assert names.skyflat_dir(root, red) == root / "2024-09-06" / "2024-09-06-CAMR_SKYFLAT"
    assert names.cal_dir(root, red) == root / "2024-09-06" / "2024-09-06-CAMR_CAL"


def test_each_cameras_listing_sees_its_own_files_only(tmp_path):
    for camera in ("CAMB", "CAMR"):
        (tmp_path / "2024-09-06" / f"2024-09-06-{camera}").mkdir(parents=True)
    before = {c: raw_listing(tmp_path, names.night_unit("2024-09-06", c)) for c in ("CAMB", "CAMR")}
    (tmp_path / "2024-09-06" / "2024-09-06-CAMR" / "a_SCIENCE.fits").write_bytes(b"x")
    assert raw_listing(tmp_path, "2024-09-06-CAMB") == before["CAMB"]
    assert raw_listing(tmp_path, "2024-09-06-CAMR") != before["CAMR"]
