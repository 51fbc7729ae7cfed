"""The JSON ledger: an index plus one file per night; atomic, unchanged runs write nothing, only the
night worked on is written, corruption is kept aside and healed, schema 1 is converted, one process
per root."""

import json
import os

import pytest

from astep_cal.state.ledger import SCHEMA_VERSION, Ledger, LedgerLocked, RootLock, night_text, night_totals


def _state_files(path):
    return sorted(str(p.relative_to(path.parent)) for p in path.parent.rglob("*") if p.is_file())


def test_roundtrip_and_no_rewrite_when_unchanged(tmp_path):
    path = tmp_path / "state" / "ledger.json"
    ledger = Ledger.load(path)
    ledger.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    assert ledger.save() is True
    mtimes = {p: p.stat().st_mtime_ns for p in path.parent.rglob("*.json")}
    again = Ledger.load(path)
    assert json.loads(path.read_text())["schema"] == SCHEMA_VERSION
    assert again.frame("2026-07-01", "a.fits")["calibrate"]["status"] == "ok"
    assert again.save() is False
    assert {p: p.stat().st_mtime_ns for p in path.parent.rglob("*.json")} == mtimes
    assert _state_files(path) == ["ledger.json", "nights/2026-07-01.json"]


def test_recording_a_frame_writes_only_its_night(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    for date in ("2026-07-01", "2026-07-02", "2026-07-03"):
        ledger.frame(date, "a.fits")["calibrate"] = {"status": "ok"}
        ledger.save()
        ledger.release(date)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "nights").iterdir()}
    ledger = Ledger.load(path)
    ledger.frame("2026-07-02", "b.fits")["calibrate"] = {"status": "failed", "error": "x"}
    assert ledger.save() is True
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "nights").iterdir()}
    assert [name for name in after if after[name] != before[name]] == ["2026-07-02.json"]
    assert ledger.totals("2026-07-02")["cal_failed"] == 1
    assert json.loads(path.read_text())["nights"]["2026-07-02"]["totals"]["cal_failed"] == 1


def test_release_keeps_only_saved_nights_out_of_memory(tmp_path):
    ledger = Ledger.load(tmp_path / "ledger.json")
    ledger.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    ledger.release("2026-07-01")  # not saved yet: kept
    assert ledger.peek("2026-07-01")["frames"]["a.fits"]["calibrate"]["status"] == "ok"
    ledger.save()
    ledger.release("2026-07-01")
    assert "2026-07-01" not in ledger._open
    assert ledger.peek("2026-07-01")["frames"]["a.fits"]["calibrate"]["status"] == "ok"


def test_night_file_is_one_frame_per_line_and_parses():
    night = {"masters": {}, "problems": [], "frames": {"b.fits": {"raw": {"size": 1}}, "a.fits": {}}}
    text = night_text(night)
    assert json.loads(text) == night
    assert text.splitlines()[1].startswith('"a.fits"') and len(text.splitlines()) == 4
    assert json.loads(night_text({"frames": {}})) == {"frames": {}}


def test_index_row_stale_after_a_crash_is_recomputed(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    ledger.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    ledger.save()
    # A crash after the night file was written and before the index: the night file is newer.
    night_path = tmp_path / "nights" / "2026-07-01.json"
    night = json.loads(night_path.read_text())
    night["frames"]["b.fits"] = {"calibrate": {"status": "blocked"}}
    night_path.write_text(night_text(night))
    assert Ledger.load(path).totals("2026-07-01")["blocked"] == 1


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"schema": 99, "nights": {}}), ""])
def test_corrupt_index_is_kept_aside_and_rebuilt_from_night_files(tmp_path, content):
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    ledger.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    ledger.save()
    path.write_text(content)
    ledger = Ledger.load(path)
    assert ledger.recovered_from is not None and ledger.recovered_from.read_text() == content
    assert not path.exists()
    assert ledger.dates() == ["2026-07-01"] and ledger.totals("2026-07-01")["calibrated"] == 1


def test_corrupt_night_file_is_kept_aside(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    ledger.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    ledger.save()
    (tmp_path / "nights" / "2026-07-01.json").write_text('{"frames": {"a.fi')
    ledger = Ledger.load(path)
    assert [date for date, _ in ledger.corrupt_nights] == ["2026-07-01"]
    assert ledger.dates() == []
    assert len(list((tmp_path / "nights").glob("2026-07-01.json.corrupt-*"))) == 1


def test_schema1_ledger_is_converted_and_kept_beside(tmp_path):
    path = tmp_path / "ledger.json"
    nights = {f"2026-07-0{i}": {"masters": {"darks": {"60": {"file": "d"}}}, "problems": [],
                                "frames": {f"f{j}.fits": {"calibrate": {"status": "ok"},
                                                          "astrometry": {"status": "solved", "tries": 1}}
                                           for j in range(3)}} for i in (1, 2)}
    old = json.dumps({"schema": 1, "software": "0.1.0", "nights": nights, "root_problems": []})
    path.write_text(old)
    ledger = Ledger.load(path)
    assert ledger.migrated_from == path
    assert ledger.totals("2026-07-02")["solved"] == 3  # readable before any write (status)
    assert path.read_text() == old  # a reader changes nothing
    assert ledger.save() is True
    assert (tmp_path / "ledger.json.schema1").read_text() == old
    assert json.loads(path.read_text())["schema"] == SCHEMA_VERSION
    again = Ledger.load(path)
    assert again.peek("2026-07-01") == nights["2026-07-01"]
    assert again.totals("2026-07-01") == night_totals(nights["2026-07-01"])
    assert again.save() is False


def test_totals_count_what_status_needs():
    night = {"inventory": {"science": 5}, "problems": [{"path": "x"}],
             "masters": {"darks": {"60": {}, "5": {}}, "flat": {"night": "2026-06-30", "borrowed": True}},
             "frames": {"a": {"calibrate": {"status": "ok", "quality": {"fwhm_px": 2.0, "fwhm_arcsec": 1.9}},
                              "astrometry": {"status": "solved", "pixel_scale_arcsec": 1.0}},
                        "b": {"calibrate": {"status": "ok", "quality": {"fwhm_arcsec": 3.0}},
                              "astrometry": {"status": "failed", "tries": 1, "retry_after": 123.0}},
                        "c": {"calibrate": {"status": "blocked"}},
                        "d": {"calibrate": {"status": "failed"}}}}
    totals = night_totals(night)
    assert totals == {"science": 5, "calibrated": 2, "cal_failed": 1, "blocked": 1, "solved": 1,
                      "solve_failed": 1, "solve_deferred": 0, "failed_solve_tries": {"1": 1}, "next_retry": 123.0,
                      "fwhm_arcsec": 2.5, "darks": ["5", "60"], "flat": "2026-06-30", "problems": 1, "stuck": None}


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "ledger.json"
    with RootLock(path):
        with pytest.raises(LedgerLocked):
            with RootLock(path):
                pass
    with RootLock(path):
        pass


def test_lock_sweeps_temporaries_of_night_files(tmp_path):
    path = tmp_path / "ledger.json"
    (tmp_path / "nights").mkdir()
    stale = tmp_path / "nights" / ".2026-07-01.json.astep-tmp-abc"
    stale.write_text("half")
    os.utime(stale, (0, 0))
    with RootLock(path):
        pass
    assert not stale.exists()


def test_frames_handed_out_are_saved_and_release_catches_any_other_change(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    for i in range(5):
        ledger.frame("2026-07-01", f"f{i}.fits")["calibrate"] = {"status": "ok"}
    ledger.save(lazy_index=True)
    entry = ledger.frame("2026-07-01", "f3.fits")
    ledger.save(lazy_index=True)
    entry["astrometry"] = {"status": "solved"}  # changed after its save, without asking again
    ledger.frame("2026-07-01", "f1.fits")["astrometry"] = {"status": "failed", "tries": 1}
    assert ledger.save(lazy_index=True) is True
    on_disk = json.loads((tmp_path / "nights" / "2026-07-01.json").read_text())
    assert on_disk["frames"]["f1.fits"]["astrometry"]["status"] == "failed"
    ledger.release("2026-07-01")  # serialises the night whole: the late change is not lost
    on_disk = json.loads((tmp_path / "nights" / "2026-07-01.json").read_text())
    assert on_disk["frames"]["f3.fits"]["astrometry"]["status"] == "solved"
    assert on_disk == Ledger.load(path).peek("2026-07-01")
    assert json.loads(path.read_text())["nights"]["2026-07-01"]["totals"]["solved"] == 1


def test_lazy_index_is_current_for_a_reader_all_the_same(tmp_path):
    path = tmp_path / "ledger.json"
    writer = Ledger.load(path)
    writer.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    writer.save()
    writer.frame("2026-07-01", "b.fits")["calibrate"] = {"status": "failed"}
    writer.save(lazy_index=True)  # night file written, index not yet
    assert json.loads(path.read_text())["nights"]["2026-07-01"]["totals"]["cal_failed"] == 0
    assert Ledger.load(path).totals("2026-07-01")["cal_failed"] == 1  # what status sees
