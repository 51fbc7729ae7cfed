"""The daemon as a real subprocess: a real sd_notify datagram socket, real watchdog observer, real signals."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import time
from pathlib import Path

from conftest import daemon_config as _config
from conftest import read_ledger, small_spec

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cal_dir


def _cal_files(root: Path, date: str) -> list[Path]:
    directory = cal_dir(root, date)
    return sorted(directory.glob("*_CAL.fits")) if directory.is_dir() else []


def test_notify_protocol_ready_status_watchdog_reload_stopping(tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    daemon = daemons(root, _config(), watchdog_usec=1_000_000)
    daemon.wait_message("READY=1")
    assert daemon.wait_message("STATUS=idle").startswith("STATUS=idle — 0 nights done")
    daemon.wait_message("WATCHDOG=1", timeout=5)
    mark = len(daemon.messages)
    daemon.process.send_signal(signal.SIGHUP)
    reloading = daemon.wait_message("RELOADING=1", after=mark)
    assert "MONOTONIC_USEC=" in reloading
    daemon.wait_message("READY=1", after=mark)
    truth = make_night(root, small_spec())
    daemon.wait_for(lambda: len(_cal_files(root, truth.spec.date)) == 3, 120, "3 CAL files")
    status = daemon.wait_message("STATUS=idle — 1 nights done, last 2026-07-01", timeout=20)
    assert status
    assert any(m.startswith("STATUS=2026-07-01: calibrated") for _, m in daemon.messages)
    assert daemon.stop() < 10
    assert daemon.process.returncode == 0
    assert any(m.startswith("STOPPING=1") for _, m in daemon.messages)
    assert "Traceback" not in daemon.log_tail()


def test_night_copied_slowly_is_processed_once_when_complete(tmp_path, daemons):
    source = tmp_path / "source"
    truth = make_night(source, small_spec())
    root = tmp_path / "data"
    root.mkdir()
    daemon = daemons(root, _config(settle=3.0, solve=True))
    daemon.wait_message("READY=1")
    files = sorted(p for p in (source / truth.spec.date).rglob("*.fits"))
    half_written = files[len(files) // 2]
    for path in files:
        target = root / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path == half_written:
            payload = path.read_bytes()
            target.write_bytes(payload[: len(payload) // 2])
            time.sleep(1.0)
            assert not _cal_files(root, truth.spec.date)
            target.write_bytes(payload)
        else:
            shutil.copy(path, target)
        time.sleep(0.3)
        assert not _cal_files(root, truth.spec.date), "processing started before the night was complete"
    completed_at = dt.datetime.now(dt.timezone.utc)
    daemon.wait_for(lambda: daemon.count("frame_solved") + daemon.count("frame_failed") >= 3, 240, "3 solves")
    events = daemon.events()
    assert daemon.count("frame_calibrated") == 3
    assert daemon.count("frame_solved") == 3
    ready = [e for e in events if e["event"] == "night_ready"]
    assert len(ready) == 1
    assert dt.datetime.fromisoformat(ready[0]["timestamp"]) >= completed_at  # not before the last file
    time.sleep(3)  # nothing more happens
    assert daemon.count("frame_calibrated") == 3
    daemon.stop()


def test_sighup_picks_up_a_night_the_observer_missed(tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    # Polling every hour and reconciling every hour: only a SIGHUP rescan can find the night.
    daemon = daemons(root, _config(extra="use_polling = true\npoll_interval_s = 3600\nreconcile_interval_s = 3600"))
    daemon.wait_message("READY=1")
    truth = make_night(root, small_spec())
    time.sleep(4)
    assert not _cal_files(root, truth.spec.date)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: len(_cal_files(root, truth.spec.date)) == 3, 120, "3 CAL files after SIGHUP")
    daemon.stop()


def test_sigterm_mid_night_then_restart_finishes(tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    truth = make_night(root, small_spec(n_science=12))
    marker = root / truth.spec.date / "NIGHT_COMPLETE"
    marker.touch()
    daemon = daemons(root, _config(settle=3600))
    daemon.wait_for(lambda: daemon.count("frame_calibrated") >= 2, 120, "two frames calibrated")
    elapsed = daemon.stop()
    assert elapsed < 10 and daemon.process.returncode == 0
    first = daemon.count("frame_calibrated")
    assert first < 12, "the night finished before the stop: make it longer"
    leftovers = [p for p in (root / truth.spec.date).rglob("*") if ".astep-tmp-" in p.name]
    assert leftovers == []
    ledger = read_ledger(root)
    assert len([f for f in ledger["nights"][truth.spec.date]["frames"].values()
                if f.get("calibrate", {}).get("status") == "ok"]) == first
    again = daemons(root, _config(settle=3600))
    again.wait_for(lambda: len(_cal_files(root, truth.spec.date)) == 12, 180, "all 12 CAL files")
    again.wait_message("STATUS=idle — 1 nights done", timeout=30)
    assert first + again.count("frame_calibrated") == 12  # each frame exactly once over both runs
    again.stop()


def test_hung_worker_stops_the_watchdog_pings(tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    hang = tmp_path / "solve-field-hangs"
    hang.write_text("#!/bin/sh\nsleep 600\n")
    hang.chmod(0o755)
    truth = make_night(root, small_spec(n_science=1))
    (root / truth.spec.date / "NIGHT_COMPLETE").touch()
    config = _config(settle=3600, solve=True, extra="stall_timeout_s = 3",
                     astrometry=f'solve_field = "{hang}"\ntimeout_s = 600.0')
    daemon = daemons(root, config, watchdog_usec=1_000_000)
    daemon.wait_message("READY=1")
    daemon.wait_for(lambda: daemon.count("frame_calibrated") == 1, 60, "the frame calibrated")
    # The worker now waits on a solve-field that never ends: pings must stop within ~3 s + a tick.
    daemon.wait_for(lambda: daemon.count("worker_stalled") >= 1, 30, "worker_stalled event")
    stalled_at = time.monotonic()
    time.sleep(3)
    daemon.pump()
    late_pings = [t for t, m in daemon.messages if m.startswith("WATCHDOG=1") and t > stalled_at + 0.5]
    assert late_pings == []
    assert daemon.process.poll() is None  # alive but unhealthy: systemd would restart it
    assert daemon.stop() < 10


def test_a_night_copied_with_its_old_mtimes_is_not_settled_while_files_arrive(tmp_path):
    """rsync -a (or cp -p) keeps each file's mtime from the camera: a night re-sent after a link outage
    arrives with hours-old files. Its files landing in -CAMS change that directory's mtime, not the
    night directory's: readiness must see the arrivals there, or the night is processed half-copied
    (masters from the first darks, the rest "alone")."""
    from astep_cal.frontends.watcher import night_readiness
    from astep_cal.support.config import DaemonSettings

    source = tmp_path / "source"
    truth = make_night(source, small_spec(n_science=1, n_darks=2, n_flats=0, n_flat_darks=0))
    date = truth.spec.date
    root = tmp_path / "data"
    cams = root / date / f"{date}-CAMS"
    cams.mkdir(parents=True)
    hours_ago = time.time() - 3 * 3600
    for raw in (root / date, cams):
        raw.touch()
    for path in truth.dark_files:  # the darks arrive first, with the camera's time
        shutil.copy2(path, cams / path.name)
        os.utime(cams / path.name, (hours_ago, hours_ago))
    os.utime(root / date, (hours_ago, hours_ago))  # made when the transfer began, an hour into it
    settings = DaemonSettings(settle_seconds=300.0, no_flat_wait_s=0.0)
    readiness = night_readiness(root, date, settings)
    assert not readiness.ready and readiness.reason == "settling"
    os.utime(cams, (hours_ago, hours_ago))  # nothing arrived since: settled
    assert night_readiness(root, date, settings).ready


def test_the_worker_hands_a_night_s_freed_memory_back():
    """glibc keeps what a thread freed in that thread's arena: a night's frames and temporaries stayed
    with the daemon (make soak: +1.2 MB a night at 512², 4096² frames are 64x that). The worker
    trims after each night; here a thread frees 96 MB of arena allocations pinned by a small one."""
    import gc
    import threading

    import numpy as np

    from astep_cal.support.memory import release_free_memory

    def anonymous_kb() -> int:
        gc.collect()
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("RssAnon:")))

    measured = {}

    def night() -> None:
        arrays = [np.ones(12_000) for _ in range(1000)]  # 96 KB each: under the mmap threshold, in the arena
        pin = np.ones(10)  # allocated last: the freed space below it cannot shrink away by itself
        del arrays
        measured["held"] = anonymous_kb()
        release_free_memory()
        measured["released_kb"] = measured["held"] - anonymous_kb()
        del pin

    worker = threading.Thread(target=night)
    worker.start()
    worker.join()
    assert measured["released_kb"] > 30_000
