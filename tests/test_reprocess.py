"""``astep-cal reprocess`` on a real Dask ``LocalCluster`` (2 worker processes on loopback) against
``astep-cal once`` on a copy of the same three synthetic nights (the third borrows the second's flat)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import REPO, mtimes, no_solve_config, read_ledger, run_cli, small_spec
from distributed import Client, LocalCluster

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cal_dir, cal_name
from astep_cal.formats.products import cal_image_hdu
from astep_cal.formats.raw_night import take_inventory
from astep_cal.frontends.reprocess import needs_recalibration, parse_night_range, reprocess_root
from astep_cal.state.ledger import Ledger, RootLock
from astep_cal.support.config import ConfigError, load_settings
from astep_cal.support.logs import configure
from astep_cal.support.storage import TEMP_MARKER

NIGHTS = ("2026-07-01", "2026-07-02", "2026-07-03")
VOLATILE = {"duration_s", "mtime_ns", "updated", "retry_after"}  # times, not results


def _make_archive(root: Path) -> None:
    for index, date in enumerate(NIGHTS):
        no_flats = {"n_flats": 0, "n_flat_darks": 0} if date == NIGHTS[-1] else {}
        make_night(root, small_spec(date=date, start_time=f"{date}T20:00:00", seed=index + 1, **no_flats),
                   truth_dir=root.parent / f"truth-{date}")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive") / "root"
    root.mkdir()
    _make_archive(root)
    return root


@pytest.fixture(scope="module")
def by_once(pristine, tmp_path_factory) -> Path:
    """The reference: the same archive processed by ``astep-cal once`` (no astrometry)."""
    base = tmp_path_factory.mktemp("once")
    root = shutil.copytree(pristine, base / "root")
    completed = subprocess.run([sys.executable, "-m", "astep_cal", "once", root, "--config",
                                no_solve_config(base)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return root


@pytest.fixture
def archive(pristine, tmp_path) -> Path:
    return shutil.copytree(pristine, tmp_path / "root")


def _strip(value, ignore: set[str]):
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_strip(v, ignore) for v in value]
    return value


def _ledger(root: Path, ignore: set[str] = frozenset()) -> dict:
    return _strip(read_ledger(root), VOLATILE | ignore)


def _solution_key(key: str) -> bool:
    """Header keys of the solved WCS (TAN-SIP) and its match statistics: compared numerically instead."""
    return key.split("_")[0] in ("A", "B", "AP", "BP") or key.rstrip("0123456789_") in (
        "CRVAL", "CRPIX", "CD", "CDELT", "PC", "LONPOLE", "LATPOLE", "EQUINOX", "ASTCWRES", "ASTCWNM")


def _same_data(a: fits.hdu.base.ExtensionHDU, b: fits.hdu.base.ExtensionHDU, wcs_tolerance_px: float | None) -> bool:
    """Equal pixels; for a catalogue (``CAT`` table) equal columns, NaN (no RA/Dec yet) equal to NaN and
    RA/Dec within 1 mas when the solutions may differ in their last digits."""
    if not isinstance(a, fits.BinTableHDU):
        return np.array_equal(a.data, b.data)
    if a.data.dtype != b.data.dtype:
        return False
    for name in a.data.dtype.names:
        x, y = np.asarray(a.data[name], float), np.asarray(b.data[name], float)
        if name in ("ra", "dec") and wcs_tolerance_px is not None:
            if not np.allclose(x, y, rtol=0, atol=3e-7, equal_nan=True):
                return False
        elif not np.array_equal(x, y, equal_nan=True):
            return False
    return True


def assert_same_outputs(root: Path, reference: Path, wcs_tolerance_px: float | None = None) -> None:
    """Every product file of ``reference`` exists in ``root`` with equal pixels and headers, same ledger."""
    products = sorted(p.relative_to(reference) for p in reference.rglob("*_CAL/**/*.fits"))
    assert products and products == sorted(p.relative_to(root) for p in root.rglob("*_CAL/**/*.fits"))
    for relative in products:
        with fits.open(root / relative) as ours, fits.open(reference / relative) as theirs:
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                assert _same_data(a, b, wcs_tolerance_px), relative
                differ = {card[0] for card in set(a.header.items()) ^ set(b.header.items())}
                differ -= {"CHECKSUM"}  # its comment holds the write time
                if wcs_tolerance_px is not None:
                    differ = {key for key in differ if not _solution_key(key)}
                assert not differ, (relative, differ)
            if wcs_tolerance_px is not None and relative.name.endswith("_CAL.fits"):
                _assert_close_wcs(ours[cal_image_hdu(ours)].header, theirs[cal_image_hdu(theirs)].header,
                                  wcs_tolerance_px)
    # how a solve was hinted differs by design: once solves a night in order (later frames around an earlier
    # solution, solve_budget), reprocess its frames in parallel tasks
    solution = {"residual_arcsec", "n_matched", "hint"} if wcs_tolerance_px is not None else set()
    assert _ledger(root, solution) == _ledger(reference, solution)
    summaries = sorted(p.relative_to(reference) for p in reference.rglob("*_CAL/summary.json"))
    assert summaries == sorted(p.relative_to(root) for p in root.rglob("*_CAL/summary.json"))  # same engine
    for relative in summaries:
        ours, theirs = (_strip(json.loads((r / relative).read_text()), {"generated"} | solution | VOLATILE)
                        for r in (root, reference))
        if wcs_tolerance_px is None:
            assert ours == theirs, relative
    assert not [p for p in root.rglob(f"*{TEMP_MARKER}*")], "temporary files left behind"


def _assert_close_wcs(ours: fits.Header, theirs: fits.Header, tolerance_px: float) -> None:
    assert ours["ASTCWCS"] == theirs["ASTCWCS"] == "solved"
    shape = (ours["NAXIS2"], ours["NAXIS1"])
    y, x = np.mgrid[0:shape[0]:32, 0:shape[1]:32]
    sky = WCS(theirs).pixel_to_world(x.ravel(), y.ravel())
    back = np.array(WCS(ours).world_to_pixel(sky))
    error = np.hypot(back[0] - x.ravel(), back[1] - y.ravel()).max()
    print("max WCS difference (px):", error)
    assert error < tolerance_px


def test_night_range_parsing():
    assert parse_night_range(None) == (None, None)
    assert parse_night_range("2026-07-01..2026-07-03") == ("2026-07-01", "2026-07-03")
    assert parse_night_range("2026-07-02..") == ("2026-07-02", None)
    assert parse_night_range("..2026-07-02") == (None, "2026-07-02")
    assert parse_night_range("2026-07-02") == ("2026-07-02", "2026-07-02")
    for bad in ("2026-07-32..", "July..", "2026-07-03..2026-07-01", "2026-07-01...2026-07-02"):
        with pytest.raises(ConfigError):
            parse_night_range(bad)


def test_bad_usage_exit_codes(tmp_path, capsys):
    assert run_cli(capsys, "reprocess", tmp_path, "--nights", "2026-13-01..")[0] == 2
    assert run_cli(capsys, "reprocess", tmp_path / "missing")[0] == 4
    assert run_cli(capsys, "reprocess", tmp_path, "--workers", "0")[0] == 2
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        assert run_cli(capsys, "reprocess", tmp_path, "--scheduler", "tcp://127.0.0.1:9")[0] == 2
    with RootLock(tmp_path / ".astep-cal" / "ledger.json"):
        assert run_cli(capsys, "reprocess", tmp_path, "--workers", 1)[0] == 3
    assert run_cli(capsys, "reprocess", tmp_path, "--workers", 1)[0] == 2  # a root without nights


def test_reprocess_equals_once_then_does_nothing(archive, by_once, capsys):
    config = no_solve_config(archive.parent)
    code, out, _ = run_cli(capsys, "reprocess", archive, "--workers", 2, "--config", config, "--nights", "..2026-07-02")
    assert code == 0, out
    assert "dashboard: http://127.0.0.1:" in out and "2 worker(s)" in out
    assert [line.split(":")[0] for line in out.splitlines() if "calibrated" in line] == list(NIGHTS[:2])
    code, out, _ = run_cli(capsys, "reprocess", archive, "--workers", 2, "--config", config)
    assert code == 0, out
    assert [line for line in out.splitlines() if "calibrated" in line] == [f"{NIGHTS[2]}: 3 calibrated, 0 solved, "
                                                                          "0 failed, 0 blocked"]
    assert_same_outputs(archive, by_once)
    before = mtimes(archive)
    code, out, events = run_cli(capsys, "reprocess", archive, "--workers", 2, "--config", config)
    assert code == 0 and "calibrated" not in out
    assert mtimes(archive) == before  # nothing redone, not even the ledger rewritten
    code, out, events = run_cli(capsys, "reprocess", archive, "--workers", 2, "--config", config, "--force",
                                "--nights", f"{NIGHTS[2]}..")
    assert code == 0 and [line for line in out.splitlines() if "calibrated" in line] == [
        f"{NIGHTS[2]}: 3 calibrated, 0 solved, 0 failed, 0 blocked"]
    changed = {k for k, v in mtimes(archive).items() if before.get(k) != v}
    assert {k.split("/")[0] for k in changed if k.endswith("_CAL.fits")} == {NIGHTS[2]}
    assert_same_outputs(archive, by_once)


def test_frames_of_another_version_are_redone(by_once):
    settings = load_settings(None)
    ledger = Ledger.load(settings.ledger_path(by_once))
    frame = take_inventory(by_once, NIGHTS[0]).science[0]
    entry = ledger.frame(NIGHTS[0], frame.name)
    cal_path = cal_dir(by_once, NIGHTS[0]) / cal_name(frame.name)
    no_solve = load_settings(no_solve_config(by_once.parent))
    assert not needs_recalibration(entry, frame, cal_path, no_solve)
    assert needs_recalibration({**entry, "calibrate": {**entry["calibrate"], "software": "0.0.1"}}, frame,
                               cal_path, no_solve)


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_with_astrometry_wcs_matches_once(tmp_path, capsys):
    """One night with the real solve-field in both: the same CAL pixels and the same WCS."""
    make_night(tmp_path / "once", small_spec(), truth_dir=tmp_path / "truth")
    shutil.copytree(tmp_path / "once", tmp_path / "dask")
    assert run_cli(capsys, "once", tmp_path / "once")[0] == 0
    code, out, _ = run_cli(capsys, "reprocess", tmp_path / "dask", "--workers", 2)
    assert code == 0 and "3 calibrated, 3 solved" in out, out
    assert_same_outputs(tmp_path / "dask", tmp_path / "once", wcs_tolerance_px=0.01)


def test_killed_worker_costs_a_retry_only(archive, by_once):
    configure("json")  # an earlier in-process CLI run left structlog writing to a closed capture
    settings = load_settings(no_solve_config(archive.parent))
    ledger = Ledger.load(settings.ledger_path(archive))
    killed: dict[str, object] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_a_busy_worker(kind: str, key: str) -> None:
            if killed or kind != "frame":
                return
            for address, keys in client.run(_executing).items():
                frames = [k for k in keys if k.startswith("frame-")]
                if frames:
                    os.kill(pids[address], signal.SIGKILL)
                    killed.update(pid=pids[address], key=frames[0])
                    return

        results = reprocess_root(client, archive, settings, ledger, on_result=kill_a_busy_worker)
        history = client.run_on_scheduler(_transitions, key=killed["key"])
    assert killed, "no frame task was running when the first result came back"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    print("transitions of the killed task:", history)
    assert history.count("processing") >= 2, history  # it was running, then ran again elsewhere
    assert sum(r.calibrated for r in results) == 9 and not any(r.failed or r.blocked for r in results)
    assert_same_outputs(archive, by_once)


def test_a_task_that_keeps_failing_is_recorded_and_the_run_goes_on(archive):
    """A raw frame deleted after planning: its task fails (retried, then given up), the rest is done."""
    configure("json")
    settings = load_settings(no_solve_config(archive.parent))
    ledger = Ledger.load(settings.ledger_path(archive))
    victim = sorted((archive / NIGHTS[-1] / f"{NIGHTS[-1]}-CAMS").glob("*_SCIENCE*.fits"))[-1]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        results = reprocess_root(client, archive, settings, ledger,
                                 on_result=lambda kind, key: victim.unlink(missing_ok=True))
    assert [(r.calibrated, r.failed) for r in results] == [(3, 0), (3, 0), (2, 1)]
    record = ledger.frame(NIGHTS[-1], victim.name)["calibrate"]
    assert record["status"] == "failed" and record["error"].startswith("FileNotFoundError")


def _executing(dask_worker) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing]


def _transitions(dask_scheduler, key: str) -> list[str]:
    return [entry[2] for entry in dask_scheduler.transition_log if entry[0] == key]


def _ctrl_c_as_at_a_terminal() -> None:
    """SIGINT back to its default in the command under test: a test run started in the background by a
    non-interactive shell (``.ci/run &``) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt, so Ctrl-C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_run_resumes(archive, by_once):
    config = no_solve_config(archive.parent)
    ledger_path = archive / ".astep-cal" / "ledger.json"
    command = [sys.executable, "-m", "astep_cal", "reprocess", str(archive), "--workers", "2", "--config",
               str(config)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 120
    # interrupted as soon as one frame is recorded: calibrating is ~0.4 s a frame now, so waiting for
    # more left too little of the 9-frame run for the signal to land in (the run ended first, exit 0)
    while time.monotonic() < deadline and len(_calibrated(ledger_path)) < 1:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    recorded = _calibrated(ledger_path)
    assert 1 <= len(recorded) < 9, f"{len(recorded)} frames recorded before the interrupt"
    before = mtimes(archive)
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    events = [json.loads(line) for line in completed.stderr.splitlines() if line.startswith("{")]
    redone = {(e["night"], e["frame"]) for e in events if e["event"] == "frame_calibrated"}
    assert len(redone) == 9 - len(recorded) and not redone & recorded  # only what was not recorded
    after = mtimes(archive)
    for night, name in recorded:
        cal = str(Path(night) / f"{night}-CAMS_CAL" / name.replace(".fits", "_CAL.fits"))
        assert after[cal] == before[cal]
    assert_same_outputs(archive, by_once)


def _calibrated(ledger_path: Path) -> set[tuple[str, str]]:
    """(night, frame) of the frames the ledger records as calibrated."""
    try:
        nights = read_ledger(ledger_path.parent.parent)["nights"]
    except (FileNotFoundError, ValueError):
        return set()
    return {(date, name) for date, night in nights.items() for name, frame in night["frames"].items()
            if frame.get("calibrate", {}).get("status") == "ok"}


def test_interrupt_ends_the_workers_solve_fields(tmp_path):
    """Ctrl-C while a worker's solve-field runs: the run stops (130) once the running tasks end, without a
    traceback, and no solve-field outlives it."""
    root = tmp_path / "root"
    # 8 frames: the first solve-field seen must not be the night's last (a run that ends before the
    # signal lands exits 0)
    make_night(root, small_spec(n_science=8), truth_dir=tmp_path / "truth")
    # solve-field is given an xylist in its work directory (no path under the root): the work
    # directories are put under tmp_path to tell this run's solves from any other's
    work = tmp_path / "tmp"
    work.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "astep_cal", "reprocess", str(root), "--workers", "2"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TMPDIR=str(work)), preexec_fn=_ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 120
    groups: set[int] = set()
    while time.monotonic() < deadline and not groups and process.poll() is None:
        groups = _solver_groups(work)
        time.sleep(0.005)
    assert groups, "no solve-field was seen running"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert not _alive_in(groups), "a solve-field outlived the run"


def _processes() -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), (entry / "cmdline").read_bytes()))
            except OSError:
                continue
    return found


def _solver_groups(root: Path) -> set[int]:
    """Process groups of the solve-field processes working on files under ``root`` (each solve has its own)."""
    groups = set()
    for pid, command in _processes():
        if b"solve-field" in command and str(root).encode() in command:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
    return groups


def _alive_in(groups: set[int]) -> bool:
    for pid, _ in _processes():
        with contextlib.suppress(OSError):
            if os.getpgid(pid) in groups and not _zombie(pid):
                return True
    return False


def _zombie(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_nothing_to_do_writes_nothing_whichever_front_end_ran_last(tmp_path, capsys):
    """A night with a dark of another size: ``once`` records the ``frame_shape_mismatch`` problem when it
    builds the masters; a ``reprocess`` and a ``once`` with nothing to do after it must agree with it and
    rewrite nothing (each used to redo the night's bookkeeping its own way, flipping it back and forth)."""
    root = tmp_path / "root"
    truth = make_night(root, small_spec(n_science=2))
    odd = truth.dark_files[0].with_name(truth.dark_files[0].name.replace("_DARK", "_1_DARK"))
    with fits.open(truth.dark_files[0]) as hdul:
        fits.PrimaryHDU(np.ascontiguousarray(hdul[0].data[:200, :300]), hdul[0].header).writeto(odd)
    config = no_solve_config(tmp_path)
    assert run_cli(capsys, "once", root, "--config", config)[0] == 1  # a problem: needs attention
    recorded = read_ledger(root)["nights"][truth.spec.date]
    assert [p["event"] for p in recorded["problems"]] == ["frame_shape_mismatch"]
    before = mtimes(root)
    assert run_cli(capsys, "reprocess", root, "--workers", 1, "--config", config)[0] == 1
    assert mtimes(root) == before, {k for k, v in mtimes(root).items() if before.get(k) != v}
    code, _, events = run_cli(capsys, "once", root, "--config", config)
    assert code == 1 and mtimes(root) == before
    assert not [e for e in events if e["event"] == "frame_shape_mismatch"]  # reported once, when found
