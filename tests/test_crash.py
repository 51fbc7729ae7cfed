"""Crash safety: SIGKILL at named points of the real code (``faults.checkpoint``), then a restart.

After every kill the restarted command must leave: exactly one valid CAL file per science frame, with
its WCS; a ledger that parses and says so; no temporary file; raw files byte-identical; outputs equal
to those of an uninterrupted run (pixels bit for bit, WCS to 0.01 px). ``make test-faults`` runs these
(a few minutes: two real runs with solve-field per point); ``make test`` runs the quick ledger tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import REPO, parse_events, read_ledger, run_cli, small_spec, tree_digest

from astep_cal.devtools.synthetic import make_night
from astep_cal.engine.astrometry import wcs_error_px
from astep_cal.formats.names import cal_dir, cal_name
from astep_cal.formats.products import cal_image_hdu
from astep_cal.support.faults import KILL_VARIABLE

DATE = "2026-07-01"

# Every master is built (biases included), two dark exposure times, three frames solved.
KILL_POINTS = [
    "stage:inventory_taken",
    "temp_written:master_bias", "renamed:master_bias",
    "temp_written:master_dark", "renamed:master_dark", "renamed:master_dark#2",
    "temp_written:master_flat", "renamed:master_flat",
    "temp_written:bad_pixel_mask", "renamed:bad_pixel_mask",
    "stage:masters_built",
    "temp_written:ledger_night", "temp_written:ledger",
    "temp_written:cal", "renamed:cal", "stage:frame_calibrated", "renamed:cal#3",
    "solve_running", "stage:solve_returned",
    "temp_written:cal_replace", "renamed:cal_replace#2",
    "temp_written:ledger_night_replace#4", "renamed:ledger_night_replace#6", "renamed:ledger_replace",
    "temp_written:summary", "renamed:summary#2",
]


def _once(root: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_VARIABLE}
    if kill_at:
        env[KILL_VARIABLE] = kill_at
    return subprocess.run([sys.executable, "-m", "astep_cal", "once", str(root)], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env=env)


def _outputs(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, fits.Header]]:
    outputs = {}
    for path in sorted(cal_dir(root, DATE).glob("*_CAL.fits")):
        with fits.open(path) as hdul:
            image = hdul[cal_image_hdu(hdul)]
            outputs[path.name] = (image.data.copy(), hdul["MASK"].data.copy(), image.header.copy())
    return outputs


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The raw night (never processed in place) and the outputs of an uninterrupted run of a copy."""
    base = tmp_path_factory.mktemp("crash")
    truth = make_night(base / "source", small_spec(n_bias=3))
    reference_root = base / "reference"
    shutil.copytree(base / "source", reference_root)
    assert _once(reference_root).returncode == 0
    return base / "source", truth, _outputs(reference_root)


def _assert_recovered(root: Path, truth, reference) -> None:
    ledger = read_ledger(root)  # parses
    expected = {cal_name(p.name) for p in truth.science_files}
    expected |= {name.replace("_CAL.fits", "_CAT.fits") for name in expected}
    products = {p.name for p in cal_dir(root, DATE).iterdir() if p.is_file()}
    assert products == expected | {"summary.json", "summary.png"}, "a CAL and a CAT file per science frame, the summary"
    for name in expected - {cal_name(p.name) for p in truth.science_files}:
        assert fits.getheader(cal_dir(root, DATE) / name, "CAT")["ASTCWCS"] == "solved", name
    outputs = _outputs(root)
    shape = truth.spec.shape
    for name, (data, mask, header) in reference.items():
        got_data, got_mask, got_header = outputs[name]
        assert got_header["ASTCWCS"] == "solved"
        np.testing.assert_array_equal(got_data, data)
        np.testing.assert_array_equal(got_mask, mask)
        assert wcs_error_px(WCS(got_header), WCS(header), shape) < 0.01
    frames = ledger["nights"][DATE]["frames"]
    assert {f["calibrate"]["status"] for f in frames.values()} == {"ok"}
    assert {f["astrometry"]["status"] for f in frames.values()} == {"solved"}
    assert not [p for p in root.rglob("*") if ".astep-tmp-" in p.name]
    assert tree_digest(root / DATE / f"{DATE}-CAMS") == tree_digest(truth.night_dir / f"{DATE}-CAMS")
    assert tree_digest(root / DATE / f"{DATE}-CAMS_SKYFLAT") == tree_digest(truth.night_dir / f"{DATE}-CAMS_SKYFLAT")


def _solve_fields_running(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "solve" in cmdline and "astep_cal.frontends.cli" not in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.faults
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_and_restart(point, source, tmp_path):
    raw, truth, reference = source
    root = tmp_path / "data"
    shutil.copytree(raw, root)
    killed = _once(root, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached:\n{killed.stderr[-2000:]}"
    deadline = time.monotonic() + 5.0  # the death signal is delivered at once; exiting takes a moment
    while _solve_fields_running(str(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _solve_fields_running(str(root)) == [], "solve-field outlived the killed service"
    restarted = _once(root)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Traceback" not in restarted.stderr
    _assert_recovered(root, truth, reference)


@pytest.mark.faults
def test_kill_during_reload_then_restart(source, tmp_path):
    raw, truth, reference = source
    root = tmp_path / "data"
    shutil.copytree(raw, root)
    config = tmp_path / "daemon.toml"
    config.write_text('[daemon]\nsettle_seconds = 3600.0\n[logging]\nformat = "json"\n')
    env = dict(os.environ, **{KILL_VARIABLE: "daemon:reload"})
    log = open(tmp_path / "daemon.log", "w+")
    daemon = subprocess.Popen([sys.executable, "-m", "astep_cal", "run", "--config", str(config), "--root",
                               str(root)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log.seek(0)
            if any(e["event"] == "daemon_started" for e in parse_events(log.read())):
                break
            time.sleep(0.2)
        daemon.send_signal(signal.SIGHUP)
        assert daemon.wait(30) == -signal.SIGKILL
    finally:
        if daemon.poll() is None:
            daemon.kill()
        log.close()
    assert _once(root).returncode == 0
    _assert_recovered(root, truth, reference)


# --- the ledger lost: quick, in make test ----------------------------------------------------------

@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ledger-loss") / "data"
    make_night(root, small_spec(n_science=2))
    (root.parent / "no-solve.toml").write_text("[astrometry]\nenabled = false\n")
    assert subprocess.run([sys.executable, "-m", "astep_cal", "once", str(root), "--config",
                           str(root.parent / "no-solve.toml")], capture_output=True, cwd=REPO).returncode == 0
    return root


@pytest.mark.parametrize("damage", ["missing", "index truncated", "index garbage", "night garbage"])
def test_lost_ledger_is_rebuilt_from_outputs(processed, tmp_path, capsys, damage):
    """The whole state lost: rebuilt from the outputs' provenance. The index damaged: rebuilt from the
    night files. A night file damaged: that night rebuilt from its outputs. Nothing is redone."""
    root = tmp_path / "data"
    shutil.copytree(processed, root)
    state = root / ".astep-cal"
    ledger_path = state / "ledger.json"
    night_path = state / "nights" / f"{DATE}.json"
    original = read_ledger(root)
    if damage == "missing":
        ledger_path.unlink()
        shutil.rmtree(state / "nights")
    elif damage == "index truncated":
        ledger_path.write_bytes(ledger_path.read_bytes()[:100])
    elif damage == "index garbage":
        ledger_path.write_bytes(b"\x00\xff not json")
    else:
        night_path.write_bytes(b"\x00\xff not json")
    cal_mtimes = {p.name: p.stat().st_mtime_ns for p in cal_dir(root, DATE).glob("*_CAL.fits")}
    code, _, events = run_cli(capsys, "once", root, "--config", processed.parent / "no-solve.toml")
    assert code == 0
    names = [e["event"] for e in events]
    assert ("ledger_rebuilt" in names) == (damage in ("missing", "night garbage"))
    assert ("ledger_corrupt" in names) == (damage != "missing")
    if damage.startswith("index"):
        assert len(list(state.glob("ledger.json.corrupt-*"))) == 1  # kept for inspection
    if damage == "night garbage":
        assert len(list(state.glob(f"nights/{DATE}.json.corrupt-*"))) == 1
    assert "frame_calibrated" not in names  # nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in cal_dir(root, DATE).glob("*_CAL.fits")} == cal_mtimes
    rebuilt = read_ledger(root)
    for name, frame in original["nights"][DATE]["frames"].items():
        again = rebuilt["nights"][DATE]["frames"][name]
        assert again["raw"] == frame["raw"]
        assert again["calibrate"]["config"] == frame["calibrate"]["config"]
        assert again["calibrate"]["n_cosmic"] == frame["calibrate"]["n_cosmic"]
    assert rebuilt["nights"][DATE]["masters"]["complete"] is True
    code, out, _ = run_cli(capsys, "status", root, "--config", processed.parent / "no-solve.toml")
    assert code == 0 and "done" in out and "own" in out


def test_a_changed_raw_frame_is_redone_after_a_rebuild(processed, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(processed, root)
    (root / ".astep-cal" / "ledger.json").unlink()
    shutil.rmtree(root / ".astep-cal" / "nights")
    raw = sorted((root / DATE / f"{DATE}-CAMS").glob("*_SCIENCE.fits"))[0]
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 1_000_000_000))
    code, _, events = run_cli(capsys, "once", root, "--config", processed.parent / "no-solve.toml")
    assert code == 0
    assert [e["frame"] for e in events if e["event"] == "frame_calibrated"] == [raw.name]


def test_schema1_ledger_is_migrated_on_first_start(processed, tmp_path, capsys):
    """A ledger written by the schema-1 store (all nights in one ledger.json) is converted by the first
    run, kept beside as ledger.json.schema1, and nothing is redone; later runs write nothing."""
    root = tmp_path / "data"
    shutil.copytree(processed, root)
    state = root / ".astep-cal"
    before = read_ledger(root)
    schema1 = {"schema": 1, "software": "0.1.0", "nights": before["nights"]}
    shutil.rmtree(state / "nights")
    old_text = json.dumps(schema1, sort_keys=True, indent=1)
    (state / "ledger.json").write_text(old_text)
    config = processed.parent / "no-solve.toml"
    code, out, _ = run_cli(capsys, "status", root, "--config", config)
    assert code == 0 and "done" in out
    assert (state / "ledger.json").read_text() == old_text  # status reads schema 1 without writing
    code, _, events = run_cli(capsys, "once", root, "--config", config)
    names = [e["event"] for e in events]
    assert code == 0 and "ledger_migrated" in names and "frame_calibrated" not in names
    assert (state / "ledger.json.schema1").read_text() == old_text
    assert read_ledger(root)["nights"] == before["nights"]
    stamps = {p: p.stat().st_mtime_ns for p in state.rglob("*")}
    code, _, events = run_cli(capsys, "once", root, "--config", config)
    assert code == 0 and {p: p.stat().st_mtime_ns for p in state.rglob("*")} == stamps
