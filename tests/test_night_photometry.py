"""The night's photometry step (``photometry.py``): a long night's catalogues are read one at a time,
and a catalogue that cannot be read costs one point, not the light curve. The catalogues are built
by ``make bench-photometry``'s generator (the catalogue step's columns, a solved WCS, a target)."""

from __future__ import annotations

import json
import tracemalloc

import pytest
import structlog

from astep_cal.devtools.bench_photometry import DATE, TARGET_DEC, TARGET_RA, build_night
from astep_cal.engine import photometry
from astep_cal.support.config import PhotometrySettings, Settings, Target

SETTINGS = Settings(photometry=PhotometrySettings(targets=(Target("BENCH", TARGET_RA, TARGET_DEC),)))


def close(cal_dir, night_path):
    with structlog.testing.capture_logs() as events:
        record = photometry.night_light_curves(cal_dir, DATE, json.loads(night_path.read_text()), SETTINGS,
                                               structlog.get_logger())
    return record, events


def test_a_long_night_is_never_held_in_memory_at_once(tmp_path):
    """200 catalogues of 4000 sources (66 MB of tables): the step's peak allocation stays well under
    what holding them all would take (it held them all before: > 66 MB)."""
    cal_dir, night_path = build_night(tmp_path, 200, 4000, 4096)
    tables_bytes = sum(path.stat().st_size for path in cal_dir.glob("*_CAT.fits"))
    close(cal_dir, night_path)  # imports, matplotlib's first figure: not what is measured
    tracemalloc.start()
    try:
        record, _ = close(cal_dir, night_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record["targets"]["BENCH"]["status"] == "ok" and record["frames"] == 200
    print(f"catalogues {tables_bytes / 1e6:.0f} MB on disk, peak allocation {peak / 1e6:.0f} MB")
    assert peak < 0.5 * tables_bytes


def test_an_unreadable_catalogue_loses_one_point(tmp_path):
    cal_dir, night_path = build_night(tmp_path, 30, 500, 4096)
    victim = sorted(cal_dir.glob("*_CAT.fits"))[12]
    victim.write_bytes(victim.read_bytes()[:-20000])  # the header intact, the rows cut short
    record, events = close(cal_dir, night_path)
    target = record["targets"]["BENCH"]
    assert target["status"] == "ok" and target["n_points"] == 30 and target["n_good"] == 29
    unreadable = [e for e in events if e["event"] == "catalogue_unreadable"]
    assert len(unreadable) == 1 and unreadable[0]["frame"].startswith(f"{DATE}_00012")
    assert [e["event"] for e in events if e["log_level"] == "error"] == []
    assert (cal_dir / "lightcurve_BENCH.csv").is_file()


@pytest.mark.parametrize("cut", [100, 3000])
def test_a_catalogue_cut_in_its_header_is_left_out(tmp_path, cut):
    cal_dir, night_path = build_night(tmp_path, 12, 300, 4096)
    victim = sorted(cal_dir.glob("*_CAT.fits"))[3]
    victim.write_bytes(victim.read_bytes()[:cut])
    record, events = close(cal_dir, night_path)
    assert record["frames"] == 11 and record["targets"]["BENCH"]["status"] == "ok"
    assert [e["frame"][:16] for e in events if e["event"] == "catalogue_unreadable"] == [f"{DATE}_00003"]
