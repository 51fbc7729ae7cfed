"""A ledger that is well-formed JSON but not a ledger (issue 24 #3): never a crash, never a path
outside the state directory; the file is kept aside and the night rebuilt from the outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, daemon_config, no_solve_config, read_ledger, run_cli_subprocess, small_spec

from astep_cal.devtools.synthetic import make_night

DATE = "2026-07-01"
DEEP = 100_000  # arrays nested this deep: RecursionError in the JSON parser


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A night calibrated once by the real command (no solve): the outputs a lost ledger is rebuilt from."""
    base = tmp_path_factory.mktemp("processed")
    root = base / "data"
    make_night(root, small_spec(n_science=3))
    done = run_cli_subprocess("once", root, "--config", no_solve_config(base))
    assert done.returncode == 0, done.stderr
    return root


def _night_file(root: Path) -> Path:
    return root / ".astep-cal" / "nights" / f"{DATE}.json"


def _wrong_frames(root: Path) -> None:
    _night_file(root).write_text(json.dumps({"frames": {"a.fits": 1}}))


def _masters_list(root: Path) -> None:
    night = json.loads(_night_file(root).read_text())
    night["masters"] = []
    _night_file(root).write_text(json.dumps(night))


def _deep_night(root: Path) -> None:
    _night_file(root).write_text('{"frames": {}, "masters": ' + "[" * DEEP + "]" * DEEP + "}")


def _deep_index(root: Path) -> None:
    (root / ".astep-cal" / "ledger.json").write_text('{"schema": 2, "nights": ' + "[" * DEEP + "]" * DEEP + "}")


def _traversal_key(root: Path) -> None:
    index_path = root / ".astep-cal" / "ledger.json"
    index = json.loads(index_path.read_text())
    index["nights"]["../../../victim"] = index["nights"][DATE]
    index_path.write_text(json.dumps(index))


def _wrong_totals(root: Path) -> None:
    index_path = root / ".astep-cal" / "ledger.json"
    index = json.loads(index_path.read_text())
    index["nights"][DATE]["totals"]["failed_solve_tries"] = []
    index_path.write_text(json.dumps(index))


def _schema_an_object(root: Path) -> None:  # make fuzz: TypeError (unhashable) in the schema check
    index_path = root / ".astep-cal" / "ledger.json"
    index = json.loads(index_path.read_text())
    index["schema"] = {}
    index_path.write_text(json.dumps(index))


def _fwhm_a_string(root: Path) -> None:  # make fuzz: TypeError out of the night's median FWHM
    night = json.loads(_night_file(root).read_text())
    next(iter(night["frames"].values()))["calibrate"]["quality"]["fwhm_arcsec"] = "wide"
    _night_file(root).write_text(json.dumps(night))


def _tries_not_a_number(root: Path) -> None:  # make fuzz: int("a") in the status row
    index_path = root / ".astep-cal" / "ledger.json"
    index = json.loads(index_path.read_text())
    index["nights"][DATE]["totals"]["failed_solve_tries"] = {"a": 1}
    index_path.write_text(json.dumps(index))


def _health_alerts(details):  # make fuzz: AttributeError/TypeError out of status's alert lines
    def damage(root: Path) -> None:
        index_path = root / ".astep-cal" / "ledger.json"
        index = json.loads(index_path.read_text())
        index["nights"][DATE]["totals"]["health"] = {"alerts": ["fwhm"], "alert_details": details}
        index_path.write_text(json.dumps(index))
    return damage


def _night_flat_change_a_list(root: Path) -> None:  # make fuzz: AttributeError out of alerts.compact
    night = json.loads(_night_file(root).read_text())
    night["health"] = {"throughput": 0.9, "flat_change": [1], "alerts": []}
    _night_file(root).write_text(json.dumps(night))


HOSTILE = {"frames of the wrong type": _wrong_frames, "masters a list": _masters_list,
           "deeply nested night file": _deep_night, "deeply nested index": _deep_index,
           "index key out of the state directory": _traversal_key, "totals of the wrong type": _wrong_totals,
           "schema an object": _schema_an_object, "try count not a number": _tries_not_a_number, "FWHM a string": _fwhm_a_string,
           "alert details a string": _health_alerts("x"), "an alert not an object": _health_alerts([7]),
           "an alert without a kind": _health_alerts([{"fwhm_arcsec": 3.0}]),
           "night health's flat change a list": _night_flat_change_a_list}


def _copy(processed: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(processed, root, symlinks=True)
    victim = tmp_path / "victim.json"
    victim.write_text('{"frames": "not yours"}')
    damage(root)
    return root, victim


def _status(root: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "astep_cal", "status", str(root), "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("kind", HOSTILE)
def test_status_on_a_hostile_ledger_prints_no_traceback_and_touches_nothing_outside(processed, tmp_path, kind):
    root, victim = _copy(processed, tmp_path, HOSTILE[kind])
    done = _status(root, no_solve_config(tmp_path), "--json")
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    json.loads(done.stdout)  # a whole document
    assert victim.read_text() == '{"frames": "not yours"}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("victim")) == ["victim.json"]
    report = subprocess.run([sys.executable, "-m", "astep_cal", "report", DATE, str(root), "--config",
                             str(no_solve_config(tmp_path))], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "Traceback" not in report.stderr, report.stderr


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_daemon_starts_on_a_hostile_ledger_keeps_it_aside_and_rebuilds(processed, tmp_path, daemons, kind):
    root, victim = _copy(processed, tmp_path, HOSTILE[kind])
    state = root / ".astep-cal"
    daemon = daemons(root, daemon_config())
    daemon.wait_message("READY=1", timeout=60)
    corrupt = daemon.wait_for(lambda: [e for e in daemon.events() if e["event"] == "ledger_corrupt"], 30,
                              "ledger_corrupt")
    kept = Path(corrupt[0]["kept_as"])
    assert kept.parent in (state, state / "nights") and kept.is_file() and ".corrupt-" in kept.name
    assert corrupt[0]["reason"]
    daemon.wait_message("STATUS=idle — 1 nights done", timeout=60)
    assert daemon.count("frame_calibrated") == 0  # rebuilt from the outputs, not recomputed
    daemon.stop()
    assert "Traceback" not in daemon.log_tail()
    assert victim.read_text() == '{"frames": "not yours"}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("victim")) == ["victim.json"]
    frames = read_ledger(root)["nights"][DATE]["frames"]
    assert len(frames) == 3 and all(f["calibrate"]["status"] == "ok" for f in frames.values())
    rows = json.loads(_status(root, daemon.config_path, "--json").stdout)["nights"]
    assert [(r["night"], r["state"]) for r in rows] == [(DATE, "done")]


def test_status_on_a_planted_acknowledgement_file_prints_no_traceback(processed, tmp_path):
    """make fuzz's neighbour: an alert in the index and an acknowledgement that is not an object."""
    from astep_cal.state.alerts import ACKS_FILE

    def damage(root: Path) -> None:
        _health_alerts([{"kind": "fwhm", "fwhm_arcsec": 3.0}])(root)
        (root / ".astep-cal" / ACKS_FILE).write_text(json.dumps({"fwhm": "yesterday", "flat": [1]}))

    root, _ = _copy(processed, tmp_path, damage)
    done = _status(root, no_solve_config(tmp_path))
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    assert f"ALERT {DATE} fwhm" in done.stdout  # the valid alert is still shown, not acknowledged
