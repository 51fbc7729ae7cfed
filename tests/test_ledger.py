"""The JSON ledger: atomic, unchanged runs write nothing, corruption is kept aside, one process per root."""

import json

import pytest

from astep_cal.ledger import Ledger, LedgerLocked, RootLock, SCHEMA_VERSION


def test_roundtrip_and_no_rewrite_when_unchanged(tmp_path):
    path = tmp_path / "state" / "ledger.json"
    ledger = Ledger.load(path)
    ledger.frame("2026-07-01", "a.fits")["calibrate"] = {"status": "ok"}
    assert ledger.save() is True
    mtime = path.stat().st_mtime_ns
    again = Ledger.load(path)
    assert again.data["schema"] == SCHEMA_VERSION
    assert again.frame("2026-07-01", "a.fits")["calibrate"]["status"] == "ok"
    assert again.save() is False
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"schema": 99, "nights": {}}), ""])
def test_corrupt_ledger_is_kept_aside(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    ledger = Ledger.load(path)
    assert ledger.nights() == {}
    assert ledger.recovered_from is not None and ledger.recovered_from.read_text() == content
    assert not path.exists()


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "ledger.json"
    with RootLock(path):
        with pytest.raises(LedgerLocked):
            with RootLock(path):
                pass
    with RootLock(path):
        pass
