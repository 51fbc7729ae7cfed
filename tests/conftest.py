"""Shared fixtures: synthetic nights are built once per session; the CLI is run in-process or as a
real subprocess, and its JSON log lines are parsed into events."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
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


def read_ledger(root: Path, state: Path | None = None) -> dict:
    """The ledger as one document (the index, with every night file under ``nights``), to look into."""
    state = state or root / ".astep-cal"
    index = json.loads((state / "ledger.json").read_text())
    index["nights"] = {p.stem: json.loads(p.read_text()) for p in sorted((state / "nights").glob("*.json"))}
    return index


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


class DaemonProcess:
    """``astep-cal run`` in a subprocess with its own NOTIFY_SOCKET; collects datagrams and log events."""

    def __init__(self, tmp: Path, root: Path, config: str, watchdog_usec: int | None = None,
                 prefix: tuple[str, ...] = ()):
        self.socket_path = tmp / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        config_path = tmp / f"config-{time.monotonic_ns()}.toml"
        config_path.write_text(config)
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
        env["NOTIFY_SOCKET"] = str(self.socket_path)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "astep_cal.cli", "run", "--config", str(config_path), "--root", str(root)],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            result = predicate()
            if result:
                return result
            if self.process.poll() is not None:
                break
        raise AssertionError(f"timed out waiting for {what}; exit={self.process.poll()}\n{self.log_tail()}")

    def wait_message(self, prefix: str, timeout: float = 30, after: int = 0) -> str:
        return self.wait_for(lambda: next((m for _, m in self.messages[after:] if m.startswith(prefix)), None),
                             timeout, prefix)

    def events(self) -> list[dict]:
        return parse_events(self.log_path.read_text())

    def count(self, name: str) -> int:
        return sum(1 for e in self.events() if e["event"] == name)

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self, timeout: float = 10) -> float:
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        self.pump()
        return time.monotonic() - start

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_file.close()
        self.sock.close()


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
