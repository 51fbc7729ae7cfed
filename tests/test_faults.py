"""Faults around the service: solve-field broken, the disk full, the data root gone, an event storm,
a backlog of weeks. Each with the real programs: a real tmpfs that really fills up, a real daemon."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import daemon_config as _config
from conftest import no_solve_config, read_ledger, run_cli, small_spec, tree_digest

from astep_cal.devtools.harness import rss_mb
from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.formats.names import cal_dir
from astep_cal.formats.products import read_cal_header

# With the SIGKILL suite in make test-faults: ~2 min of real daemons, a tmpfs filled up, solvers that fail.
pytestmark = pytest.mark.faults

DATE = "2026-07-01"


def _ledger(root: Path) -> dict:
    return read_ledger(root)


def _cal_files(root: Path, date: str = DATE) -> list[Path]:
    directory = cal_dir(root, date)
    return sorted(directory.glob("*_CAL.fits")) if directory.is_dir() else []


# --- solve-field broken ------------------------------------------------------------------------------

BACKOFF_S = 4.0  # long enough that a second run comes back within it, even on a loaded machine


def _solver_config(tmp_path: Path, solve_field: str = "solve-field", extra: str = "",
                   timeout_s: float = 20.0) -> Path:
    path = tmp_path / f"solver-{abs(hash((solve_field, extra, timeout_s)))}.toml"
    # A night already failing waits for its solves only wait_fraction of its calibration, and a 2-frame night's
    # is a fraction of a second: the second solve would be deferred (solve_budget). These tests are about
    # each try of a broken solver, so the wait is made generous: every frame is tried in every run.
    path.write_text(f'[astrometry]\nsolve_field = "{solve_field}"\nretry_backoff_s = {BACKOFF_S}\nmax_tries = 3\n'
                    f'timeout_s = {timeout_s}\nwait_fraction = 1000\n{extra}\n[logging]\nformat = "json"\n')
    return path


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def small_night(tmp_path_factory):
    source = tmp_path_factory.mktemp("faults") / "source"
    make_night(source, small_spec(n_science=2))
    return source


@pytest.mark.parametrize("fault", ["missing", "crashing", "hanging", "no index files"])
def test_broken_solver_keeps_cal_files_retries_with_backoff_then_needs_an_operator(
        fault, small_night, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(small_night, root)
    if fault == "missing":
        config = _solver_config(tmp_path, "/nonexistent/solve-field")
    elif fault == "crashing":
        config = _solver_config(tmp_path, _script(tmp_path, "crash", "kill -SEGV $$"))
    elif fault == "hanging":
        config = _solver_config(tmp_path, _script(tmp_path, "hang", "sleep 600"), timeout_s=1.5)
    else:
        (tmp_path / "empty-index").mkdir()
        (tmp_path / "astrometry.cfg").write_text(f"add_path {tmp_path / 'empty-index'}\nautoindex\n")
        config = _solver_config(tmp_path, extra=f'config_file = "{tmp_path / "astrometry.cfg"}"')
    tries_seen = []
    for attempt in range(4):
        code, _, events = run_cli(capsys, "once", root, "--config", config)
        assert code == 1
        frames = _ledger(root)["nights"][DATE]["frames"]
        tries_seen.append(sorted(f["astrometry"]["tries"] for f in frames.values()))
        for frame in frames.values():
            assert frame["calibrate"]["status"] == "ok" and frame["astrometry"]["status"] == "failed"
        if attempt == 0:
            assert {e["event"] for e in events} >= {"frame_calibrated", "frame_failed"}
            if fault in ("missing", "crashing"):  # fast enough to come back within the backoff
                again = run_cli(capsys, "once", root, "--config", config)[2]
                assert "frame_failed" not in {e["event"] for e in again}
        if attempt < 2:
            time.sleep(BACKOFF_S * 2 ** attempt + 0.2)  # past the backoff of this try
    assert tries_seen == [[1, 1], [2, 2], [3, 3], [3, 3]]  # capped at max_tries
    for path in _cal_files(root):  # calibrated data kept, failure marked in the header
        header = read_cal_header(path)
        assert header["ASTCWCS"] == "failed" and header["ASTCWERR"]
    code, out, _ = run_cli(capsys, "status", root, "--config", config)
    assert code == 1 and "attention" in out
    # the operator fixes the solver and clears the failures: the next run solves them
    assert run_cli(capsys, "retry", root)[0] == 0
    code, _, events = run_cli(capsys, "once", root)
    assert code == 0 and sum(e["event"] == "frame_solved" for e in events) == 2
    assert sum(e["event"] == "frame_calibrated" for e in events) == 0  # only the solve was redone


def test_error_text_says_what_went_wrong(small_night, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(small_night, root)
    config = _solver_config(tmp_path, _script(tmp_path, "hang", "sleep 600"), timeout_s=1.0)
    run_cli(capsys, "once", root, "--config", config)
    errors = {f["astrometry"]["error"] for f in _ledger(root)["nights"][DATE]["frames"].values()}
    assert errors == {"solve-field timed out after 1 s"}


# --- the disk full -----------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A real, small file system that fills up; grown later with a remount."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def resize(megabytes: float) -> None:
        subprocess.run(["mount", "-o", f"remount,size={int(megabytes * 1024)}k", str(mount_point)], check=True)

    yield mount_point, resize
    subprocess.run(["umount", "-l", str(mount_point)])


def _fill_to_leave(mount_point: Path, source: Path, resize, spare_mb: float) -> Path:
    """Copy the night in, then shrink the file system to leave ``spare_mb`` free."""
    resize(64)
    root = mount_point / "data"
    shutil.copytree(source, root)
    used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2 ** 20
    resize(used + 0.1 + spare_mb)
    return root


def _assert_nothing_partial(root: Path) -> None:
    assert not [p for p in root.rglob("*") if ".astep-tmp-" in p.name]
    for path in _cal_files(root):
        assert "ASTCVER" in read_cal_header(path)  # whole, valid CAL files only


def test_disk_full_batch_run_loses_nothing_and_finishes_later(small_night, tmpfs, capsys):
    mount_point, resize = tmpfs
    root = _fill_to_leave(mount_point, small_night, resize, spare_mb=4.0)  # masters fit, CAL files do not
    raw_before = tree_digest(root / DATE / f"{DATE}-CAMS")
    code, _, events = run_cli(capsys, "once", root, "--config", no_solve_config(mount_point.parent))
    assert code == 5
    assert "storage_unavailable" in {e["event"] for e in events}
    assert "frame_failed" not in {e["event"] for e in events}
    _assert_nothing_partial(root)
    assert tree_digest(root / DATE / f"{DATE}-CAMS") == raw_before
    resize(64)  # space returns
    code, _, events = run_cli(capsys, "once", root, "--config", no_solve_config(mount_point.parent))
    assert code == 0
    assert len(_cal_files(root)) == 2
    _assert_nothing_partial(root)


def test_daemon_waits_for_space_and_resumes(small_night, tmpfs, tmp_path, daemons):
    mount_point, resize = tmpfs
    root = _fill_to_leave(mount_point, small_night, resize, spare_mb=4.0)
    (root / DATE / "NIGHT_COMPLETE").touch()
    daemon = daemons(root, _config(settle=3600, extra="storage_retry_s = 1.0"), watchdog_usec=2_000_000)
    daemon.wait_message("STATUS=waiting for storage", timeout=120)
    assert daemon.count("storage_unavailable") == 1 and daemon.count("frame_failed") == 0
    time.sleep(3)
    daemon.pump()
    assert daemon.process.poll() is None
    pings = [t for t, m in daemon.messages if m.startswith("WATCHDOG=1")]
    assert pings and time.monotonic() - pings[-1] < 3  # waiting is healthy: systemd must not restart it
    resize(64)
    daemon.wait_for(lambda: len(_cal_files(root)) == 2, 120, "both CAL files after space returned")
    daemon.wait_message("STATUS=idle — 1 nights done", timeout=30)
    assert daemon.count("storage_available") == 1
    _assert_nothing_partial(root)
    assert daemon.stop() < 10


def test_a_deferred_close_that_meets_a_full_disk_is_done_once_space_returns(small_night, tmpfs, tmp_path, daemons):
    """The night's deferred close (light curves, summary picture) finds the disk full: it waits with the
    storage and is done once space returns, with no restart (the worker keeps the close, and the rescan
    after the storage's return finds it pending in the ledger too)."""
    from astep_cal.state import entries

    mount_point, resize = tmpfs
    root = _fill_to_leave(mount_point, small_night, resize, spare_mb=40.0)
    (root / DATE / "NIGHT_COMPLETE").touch()
    daemon = daemons(root, _config(settle=0.5, extra="storage_retry_s = 1.0\nclose_delay_s = 4.0"))
    daemon.wait_for(lambda: daemon.count("night_close_deferred") == 1, 120, "the night's close deferred")
    filler = mount_point / "filler"
    with open(filler, "wb") as out:  # every byte left, taken before the close runs
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    daemon.wait_message("STATUS=waiting for storage", timeout=60)
    assert read_ledger(root)["nights"][DATE].get(entries.CLOSE_PENDING) == "pending"
    filler.unlink()
    daemon.wait_for(lambda: read_ledger(root)["nights"][DATE].get(entries.CLOSE_PENDING) is None, 60,
                    "the deferred close done after space returned")
    assert (cal_dir(root, DATE) / "summary.png").stat().st_size > 0
    _assert_nothing_partial(root)
    assert daemon.stop() < 10


# --- the data root gone and back ---------------------------------------------------------------------

def test_daemon_survives_the_data_root_vanishing(small_night, tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    daemon = daemons(root, _config(settle=1.0, extra="storage_retry_s = 1.0"))
    daemon.wait_message("READY=1")
    away = tmp_path / "data-unmounted"
    root.rename(away)
    daemon.wait_for(lambda: daemon.count("data_root_missing") == 1, 20, "data_root_missing")
    daemon.wait_message("STATUS=waiting for storage", timeout=20)
    time.sleep(2)
    assert daemon.process.poll() is None
    away.rename(root)
    daemon.wait_for(lambda: daemon.count("data_root_returned") == 1, 20, "data_root_returned")
    shutil.copytree(small_night / DATE, root / DATE)  # a night arriving after the return: seen by the new observer
    daemon.wait_for(lambda: len(_cal_files(root)) == 2, 120, "the night processed after the return")
    assert daemon.stop() < 10


def _mount_tmpfs(mount_point: Path) -> None:
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


def test_storage_trouble_mid_night_does_not_wait_for_the_queued_solves(tmp_path, capsys):
    """The data root vanishes while a solve runs (here the solver itself moves it away, then would search for
    10 minutes): the run stops on the storage trouble at once (exit 5) and ends the solve. Before, the
    error waited for every queued solve to run to its end before it reached the caller."""
    source = tmp_path / "source"
    make_night(source, small_spec(n_science=4))
    root = tmp_path / "data"
    shutil.copytree(source, root)
    solver = _script(tmp_path, "vanish", f'mv "{root}" "{root}.gone" 2>/dev/null; sleep 600')
    config = _solver_config(tmp_path, solver, timeout_s=600.0, extra="frame_budget_s = 600.0")
    started = time.monotonic()
    code, _, events = run_cli(capsys, "once", root, "--config", config)
    assert code == 5, [e["event"] for e in events]
    assert time.monotonic() - started < 60
    assert "storage_unavailable" in {e["event"] for e in events}
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
                if str(tmp_path / "vanish") in line and "mv " not in line]


def test_daemon_survives_a_real_unmount_of_the_data_root(small_night, tmp_path, daemons):
    """The data root is a real mount point, unmounted and mounted again (the ledger lives outside it,
    as under systemd). Unmounting leaves an empty directory at the root's path: the daemon must take
    that for storage gone (not for an empty data root), write nothing into it, and resume on remount."""
    root = tmp_path / "data"
    root.mkdir()
    _mount_tmpfs(root)
    try:
        ledger = tmp_path / "state" / "ledger.json"
        ledger.parent.mkdir()
        config = f'ledger = "{ledger}"\n' + _config(settle=1.0, extra="storage_retry_s = 1.0")
        daemon = daemons(root, config)
        daemon.wait_message("READY=1")
        subprocess.run(["umount", "-l", str(root)], check=True)
        daemon.wait_for(lambda: daemon.count("data_root_missing") == 1, 20, "data_root_missing")
        daemon.wait_message("STATUS=waiting for storage", timeout=20)
        time.sleep(3)
        assert daemon.process.poll() is None
        assert list(root.iterdir()) == []  # nothing written into the directory under the mount
        assert daemon.count("data_root_returned") == 0
        _mount_tmpfs(root)
        daemon.wait_for(lambda: daemon.count("data_root_returned") == 1, 20, "data_root_returned")
        shutil.copytree(small_night / DATE, root / DATE)
        daemon.wait_for(lambda: len(_cal_files(root)) == 2, 120, "the night processed after the remount")
        assert daemon.stop() < 10
    finally:
        subprocess.run(["umount", "-l", str(root)])


# --- an event storm and a backlog --------------------------------------------------------------------

def test_event_storm_keeps_memory_bounded_and_misses_nothing(small_night, tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    daemon = daemons(root, _config(settle=2.0))
    daemon.wait_message("READY=1")
    time.sleep(1)
    before = rss_mb(daemon.process.pid)
    guider = root / DATE / f"{DATE}-CAMS" / "guider"
    guider.mkdir(parents=True)
    start = time.monotonic()
    for index in range(5000):  # 5000 new files in well under 10 s (guide-camera dumps)
        (guider / f"guide_{index:05d}.txt").write_text("x")
    storm_s = time.monotonic() - start
    time.sleep(3)  # the observer has seen them all
    growth_mb = rss_mb(daemon.process.pid) - before
    assert storm_s < 10
    assert growth_mb < 20, f"RSS grew {growth_mb:.1f} MB for 5000 file events"
    shutil.copytree(small_night / DATE, root / DATE, dirs_exist_ok=True)
    daemon.wait_for(lambda: len(_cal_files(root)) == 2, 180, "the night processed after the storm")
    assert daemon.count("frame_calibrated") == 2 and daemon.count("night_ready") == 1
    assert daemon.stop() < 10


TINY = dict(shape=(96, 96), pixel_scale_arcsec=38.4, fwhm_arcsec=96.0, n_science=1, n_darks=1, n_flats=1,
            n_flat_darks=1, n_cosmic_rays=2, n_hot_pixels=3, dead_column=40)


def test_backlog_of_30_nights_oldest_first_with_progress(tmp_path, daemons):
    root = tmp_path / "data"
    dates = [f"2026-06-{day:02d}" for day in range(1, 31)]
    for index, date in enumerate(reversed(dates)):  # written newest first: order must not matter
        make_night(root, NightSpec(date=date, start_time=f"{date}T20:00:00", seed=index, **TINY))
        (root / date / "NIGHT_COMPLETE").touch()
    daemon = daemons(root, _config(settle=3600))
    daemon.wait_message("READY=1")
    daemon.wait_message("STATUS=idle — 30 nights done, last 2026-06-30", timeout=300)
    started = [e["night"] for e in daemon.events() if e["event"] == "night_started"]
    assert started == dates
    done_counts = [int(m.split("— ")[1].split()[0]) for _, m in daemon.messages if m.startswith("STATUS=idle")]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 30
    nights_shown = [m.split(":")[0] for _, m in daemon.messages if m.startswith("STATUS=2026-06-")]
    assert nights_shown == sorted(nights_shown) and len(set(nights_shown)) >= 3  # progress, night by night
    assert daemon.stop() < 10
