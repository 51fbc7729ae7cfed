"""Hostile input against the real daemon: one unreadable night must not stop the others (issue 24 #2).

The daemon runs without DAC override (``setpriv``): as root it would read a mode-000 directory anyway,
as the service account it cannot.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, daemon_config, small_spec

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cal_dir, cams_dir

NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def _cal_count(root: Path, date: str) -> int:
    directory = cal_dir(root, date)
    return len(list(directory.glob("*_CAL.fits"))) if directory.is_dir() else 0


def _status_json(root: Path, config: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "astep_cal", "status", "--json", str(root), "--config", str(config)],
                          capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def test_an_unreadable_night_is_stuck_and_the_next_night_is_processed(tmp_path, daemons):
    root = tmp_path / "data"
    first = make_night(root, small_spec(n_science=1))
    later = make_night(root, small_spec(n_science=2, date="2026-07-02", start_time="2026-07-02T20:00:00", seed=5))
    locked = cams_dir(root, first.spec.date)
    locked.chmod(0)
    config = daemon_config(settle=1.0, extra="no_flat_wait_s = 1.0\nstuck_retry_s = 1.0\nstuck_retry_max_s = 2.0")
    daemon = daemons(root, config.replace("no_flat_wait_s = 3600\n", ""), prefix=NO_DAC)
    try:
        daemon.wait_for(lambda: _cal_count(root, later.spec.date) == 2, 180, "the night after the unreadable one")
        daemon.wait_message("STATUS=stuck", timeout=30)
        time.sleep(6)  # several back-off periods: tried again, not logged again
        stuck = [e for e in daemon.events() if e["event"] == "night_stuck"]
        assert len(stuck) == 1 and stuck[0]["night"] == first.spec.date
        assert "PermissionError" in stuck[0]["reason"]
        assert daemon.count("worker_error") == 0
        rows = {row["night"]: row for row in _status_json(root, daemon.config_path)["nights"]}
        assert rows[first.spec.date]["state"] == "stuck"
        assert "PermissionError" in rows[first.spec.date]["stuck_reason"]
        assert rows[later.spec.date]["state"] == "done", rows
        table = subprocess.run([sys.executable, "-m", "astep_cal", "status", str(root)], capture_output=True,
                               text=True, timeout=60, cwd=REPO).stdout
        assert f"{first.spec.date} stuck: PermissionError" in table
    finally:
        locked.chmod(0o755)
    # Readable again: the next try (at most stuck_retry_max_s later) processes it and clears the record.
    daemon.wait_for(lambda: _cal_count(root, first.spec.date) == 1, 120, "the night once readable")
    daemon.wait_for(lambda: daemon.count("night_unstuck") == 1, 30, "night_unstuck")
    daemon.wait_message("STATUS=idle — 2 nights done", timeout=30)
    daemon.stop()
    rows = {row["night"]: row for row in _status_json(root, daemon.config_path)["nights"]}
    assert rows[first.spec.date]["state"] == "done" and rows[first.spec.date]["stuck_reason"] is None
    assert "Traceback" not in daemon.log_tail()


def test_a_worker_failing_outside_any_night_stops_the_watchdog(tmp_path, daemons):
    """The data root itself unreadable: every turn of the worker fails; it must not look healthy."""
    root = tmp_path / "data"
    root.mkdir()
    ledger = tmp_path / "state" / "ledger.json"
    config = f'ledger = "{ledger}"\n' + daemon_config(extra="reconcile_interval_s = 1.0\nstall_timeout_s = 4.0")
    daemon = daemons(root, config, watchdog_usec=1_000_000, prefix=NO_DAC)
    daemon.wait_message("READY=1")
    daemon.wait_message("WATCHDOG=1", timeout=10)
    root.chmod(0)
    try:
        daemon.wait_for(lambda: daemon.count("worker_stalled") >= 1, 60, "worker_stalled")
        daemon.wait_message("STATUS=no progress — PermissionError", timeout=10)
        stalled_at = time.monotonic()
        time.sleep(3)
        daemon.pump()
        assert [t for t, m in daemon.messages if m.startswith("WATCHDOG=1") and t > stalled_at + 0.5] == []
        assert daemon.count("worker_error") == 1  # once while it lasts, not every 10 s
    finally:
        root.chmod(0o755)
    daemon.wait_for(lambda: daemon.count("worker_recovered") >= 1, 60, "worker_recovered")
    daemon.stop()
