"""Smaller hostile inputs (issue 24 #6): non-finite and out-of-range settings, a received summary that
is damaged or carries terminal escapes, a file dated in the future."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, daemon_config, run_cli, small_spec

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cal_dir
from astep_cal.formats.summary import build_summary
from astep_cal.support.config import Settings

BAD_SETTINGS = {
    "[daemon]\nsettle_seconds = nan": "daemon.settle_seconds",
    "[daemon]\nstall_timeout_s = nan": "daemon.stall_timeout_s",
    "[astrometry]\ntimeout_s = nan": "astrometry.timeout_s",
    "mem_limit_gb = inf": "mem_limit_gb",
    "[daemon]\nstorage_retry_s = 1e300": "daemon.storage_retry_s",  # Event.wait(1e300): OverflowError
    "[calibration]\ndefault_gain = -1.0": "calibration.default_gain",
    "[cosmics]\nsigclip = -inf": "cosmics.sigclip",
    "[photometry]\nbin_minutes = nan": "photometry.bin_minutes",
}


@pytest.mark.parametrize("text", BAD_SETTINGS)
def test_non_finite_and_out_of_range_settings_are_refused(tmp_path, capsys, text):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    root = tmp_path / "data"
    root.mkdir()
    capsys.readouterr()
    code, _, _ = run_cli(capsys, "once", root, "--config", config)
    assert code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9"])
def test_mem_limit_is_validated_like_the_file(tmp_path, capsys, value):
    root = tmp_path / "data"
    root.mkdir()
    code, _, _ = run_cli(capsys, "once", root, "--mem-limit", value)
    assert code == 2


def _summary() -> dict:
    frame = {"raw": {"size": 1, "mtime_ns": 1},
             "calibrate": {"status": "ok", "date_obs": "2026-07-01T20:00:00", "quality": {"fwhm_arcsec": 2.0}}}
    night = {"frames": {"2026-07-01_20.00.00_SCIENCE.fits": frame}, "masters": {}, "problems": []}
    return json.loads(json.dumps(build_summary("2026-07-01", night, Settings())))


def _damaged() -> dict[str, dict]:
    base = _summary()
    cases = {}
    for name, change in {
        "counts without solved": lambda d: d["counts"].pop("solved"),
        "masters without flat": lambda d: d["masters"].pop("flat"),
        "masters a list": lambda d: d.update(masters=[]),
        "a failure without its frames": lambda d: d["failures"].append({"stage": "calibrate", "status": "failed"}),
        "frames rows not a list": lambda d: d["frames"].update(rows=7),
        "a frame cell of the wrong type": lambda d: d["frames"]["rows"][0].__setitem__(4, "lots"),
        "light curve without rms": lambda d: d.update(photometry={"T": {"status": "ok", "n_good": 1}}),
    }.items():
        document = copy.deepcopy(base)
        change(document)
        cases[name] = document
    return cases


DAMAGED = _damaged()


def _report(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "astep_cal", "report", str(path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize("kind", DAMAGED)
def test_report_on_a_damaged_summary_says_what_is_wrong(tmp_path, kind):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(DAMAGED[kind]))
    done = _report(path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "not a valid summary.json" in done.stderr, done.stderr


def test_report_shows_control_characters_as_escapes(tmp_path):
    document = _summary()
    document["problems"] = [{"path": "2026-07-01/\x1b]0;owned\x07x.fits", "event": "file_unreadable",
                             "reason": "\x1b[2J\x1b[31mcleared\r"}]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(document))
    done = _report(path)
    assert done.returncode in (0, 1), done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\r" not in done.stdout
    assert "\\x1b[2J" in done.stdout and "cleared" in done.stdout


def test_a_file_dated_in_the_future_is_logged_once_and_does_not_hold_its_night(tmp_path, daemons):
    root = tmp_path / "data"
    truth = make_night(root, small_spec(n_science=2))
    future = time.time() + 365 * 86400
    os.utime(truth.science_files[0], (future, future))
    daemon = daemons(root, daemon_config(settle=1.0))
    daemon.wait_for(lambda: len(list(cal_dir(root, truth.spec.date).glob("*_CAL.fits"))) == 2, 120,
                    "the night with a file dated next year")
    time.sleep(3)
    events = [e for e in daemon.events() if e["event"] == "file_in_future"]
    assert len(events) == 1 and events[0]["path"].endswith(truth.science_files[0].name)
    daemon.stop()
