"""Shared fixtures: synthetic nights are built once per session; the CLI is run in-process or as a
real subprocess, and its JSON log lines are parsed into events."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from astep_cal import cli
from astep_cal.synthetic import NightSpec, make_night

REPO = Path(__file__).resolve().parents[1]
NO_SOLVE = "[astrometry]\nenabled = false\n"
# Half the pixels at twice the scale (still a 1° field); the seeing is doubled too, so stars keep the
# ~2.5 px FWHM of the real camera: undersampled stars are indistinguishable from cosmic rays.
SMALL = dict(shape=(512, 512), pixel_scale_arcsec=7.2, fwhm_arcsec=18.0, n_cosmic_rays=40, n_hot_pixels=80, dead_column=150)


def parse_events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def run_cli(capsys, *args: str) -> tuple[int, str, list[dict]]:
    """Run ``astep-cal`` in this process; return exit code, stdout and the parsed log events."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, parse_events(captured.err)


def run_cli_subprocess(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console command, in its own process."""
    return subprocess.run([sys.executable, "-m", "astep_cal.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (to prove raw data untouched)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


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
