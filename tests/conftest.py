"""Shared fixtures: synthetic nights are built once per session; the CLI is run in-process or as a
real subprocess, and its JSON log lines are parsed into events."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from astep_cal.devtools.harness import DaemonProcess, parse_events, read_ledger, tree_digest  # noqa: F401 (used by the tests)
from astep_cal.devtools.synthetic import SMALL_FIELD, NightSpec, make_night
from astep_cal.frontends import cli

REPO = Path(__file__).resolve().parents[1]
NO_SOLVE = "[astrometry]\nenabled = false\n"
SMALL = SMALL_FIELD  # 512², a 1° field: solves (see synthetic.SMALL_FIELD)


def run_cli(capsys, *args: str) -> tuple[int, str, list[dict]]:
    """Run ``astep-cal`` in this process; return exit code, stdout and the parsed log events."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, parse_events(captured.err)


def run_cli_subprocess(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console command, in its own process."""
    return subprocess.run([sys.executable, "-m", "astep_cal", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


def no_solve_config(tmp_path: Path) -> Path:
    path = tmp_path / "no-solve.toml"
    path.write_text(NO_SOLVE)
    return path


def small_spec(**changes) -> NightSpec:
    return replace(NightSpec(**SMALL), **changes)


@pytest.fixture(scope="session")
def solved_night(tmp_path_factory):
    """The default 1024² night, processed once by the real command (real solve-field)."""
    root = tmp_path_factory.mktemp("solved")
    truth = make_night(root, NightSpec())
    raw_before = tree_digest(root / NightSpec().date / f"{NightSpec().date}-CAMS")
    completed = run_cli_subprocess("once", root)
    return root, truth, raw_before, completed


def daemon_config(settle: float = 1.0, solve: bool = False, extra: str = "", astrometry: str = "") -> str:
    return (f'[daemon]\nsettle_seconds = {settle}\nno_flat_wait_s = 3600\n{extra}\n'
            f'[astrometry]\nenabled = {"true" if solve else "false"}\n{astrometry}\n'
            f'[logging]\nformat = "json"\n')


@pytest.fixture
def daemons(tmp_path):
    """Start ``astep-cal run`` subprocesses (``daemons(root, config)``); all are killed at the end."""
    started = []

    def start(root, config, **kwargs):
        daemon = DaemonProcess(tmp_path, root, config, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
