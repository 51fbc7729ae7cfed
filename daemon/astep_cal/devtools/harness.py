"""``astep-cal run`` as a real subprocess, watched from outside: for the tests and the soak run.

Both need the same thing: the service started as systemd would start it (its own process, a
``NOTIFY_SOCKET`` whose datagrams are collected, JSON log lines on stdout), its events parsed, and
its resource use read from ``/proc``. Kept in the package (not in ``tests/``) so that the soak driver
(:mod:`astep_cal.devtools.soak`), a development tool run outside pytest, uses the very same harness.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable


def parse_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``text`` (other lines, e.g. a traceback, are skipped)."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a SIGKILL
                continue
    return events


def read_ledger(root: Path, state: Path | None = None) -> dict[str, Any]:
    """The ledger as one document (the index, with every night file under ``nights``), to look into
    without taking the lock or changing anything (a daemon may be writing it: every file is replaced
    atomically, so each read sees a whole version)."""
    state = state or root / ".astep-cal"
    index = json.loads((state / "ledger.json").read_text())
    index["nights"] = {p.stem: json.loads(p.read_text()) for p in sorted((state / "nights").glob("*.json"))}
    return index


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (to prove raw data untouched)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def rss_mb(pid: int) -> float:
    """Resident memory of a process (``VmRSS``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class DaemonProcess:
    """``astep-cal run`` in a subprocess with its own NOTIFY_SOCKET; collects datagrams and log events."""

    def __init__(self, tmp: Path, root: Path, config: str, watchdog_usec: int | None = None,
                 prefix: tuple[str, ...] = (), cwd: Path | None = None):
        self.socket_path = tmp / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.config_path = tmp / f"config-{time.monotonic_ns()}.toml"
        self.config_path.write_text(config)
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
        env["NOTIFY_SOCKET"] = str(self.socket_path)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "astep_cal", "run", "--config", str(self.config_path), "--root",
             str(root)], stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
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

    def events(self) -> list[dict[str, Any]]:
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


def numeric_medians(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each key's median over the records that hold a number for it (None when none does): a benchmark's
    rounds summarised; lists and texts in a record are not figures."""
    import statistics

    keys = sorted({key for record in records for key in record})
    values = {key: [r[key] for r in records if isinstance(r.get(key), (int, float))] for key in keys}
    return {key: statistics.median(found) if found else None for key, found in values.items()}


def write_report(path: Path, document: Any) -> None:
    """A benchmark's or a campaign's JSON report (bench-results/ by default), its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
