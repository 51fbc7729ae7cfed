"""Commands run as root in directories others can write (issue 24 #4): no open through a planted link,
no signal to a PID taken on trust."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, daemon_config, run_cli

VICTIM_TEXT = "root:$6$precious:19000:0:99999:7:::\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim-shadow"
    victim.write_text(VICTIM_TEXT)
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    return victim


def _untouched(victim: Path) -> bool:
    return victim.read_text() == VICTIM_TEXT and victim.stat().st_mtime == 1_000_000_000


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "astep_cal", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_a_lock_symlinked_to_a_victim_is_refused_untouched(tmp_path):
    root = tmp_path / "data"
    state = root / ".astep-cal"
    state.mkdir(parents=True)
    victim = _victim(tmp_path)
    (state / "lock").symlink_to(victim)
    done = _cli("once", root)
    assert done.returncode == 4 and "symbolic link" in done.stderr and "Traceback" not in done.stderr
    assert _untouched(victim)


def test_a_lock_hard_linked_to_a_victim_is_refused_untouched(tmp_path):
    root = tmp_path / "data"
    state = root / ".astep-cal"
    state.mkdir(parents=True)
    victim = _victim(tmp_path)
    os.link(victim, state / "lock")
    done = _cli("retry", root)
    assert done.returncode == 4 and "hard link" in done.stderr and "Traceback" not in done.stderr
    assert _untouched(victim)


def test_a_retry_request_symlinked_to_a_victim_is_replaced_not_written_through(tmp_path, daemons):
    root = tmp_path / "data"
    root.mkdir()
    daemon = daemons(root, daemon_config(extra="reconcile_interval_s = 3600"))
    daemon.wait_message("READY=1")
    victim = _victim(tmp_path)
    request = root / ".astep-cal" / "retry-request"
    request.symlink_to(victim)
    done = _cli("retry", root, "--night", "2026-07-01")
    assert done.returncode == 0 and f"pid {daemon.process.pid}" in done.stdout, done.stderr
    daemon.wait_for(lambda: daemon.count("retry_requested") == 1, 30, "the daemon took the request")
    assert _untouched(victim)
    assert next(e for e in daemon.events() if e["event"] == "retry_requested")["nights"] == ["2026-07-01"]
    daemon.stop()


def test_rescan_does_not_signal_a_pid_planted_in_the_lock(tmp_path):
    """The lock is held (here by this test) and names another process: that process is not astep-cal
    holding the lock, so it is not signalled."""
    root = tmp_path / "data"
    state = root / ".astep-cal"
    state.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])  # SIGHUP would end it
    try:
        with open(state / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(f"{bystander.pid}\n")
            lock.flush()
            done = _cli("rescan", "--root", root)
            time.sleep(0.5)
            assert bystander.poll() is None, "the planted PID was signalled"
            assert done.returncode == 1 and "no running daemon" in done.stderr
    finally:
        bystander.kill()
        bystander.wait()


def test_rescan_signals_the_daemon_holding_the_lock(tmp_path, daemons, capsys):
    root = tmp_path / "data"
    root.mkdir()
    daemon = daemons(root, daemon_config())
    daemon.wait_message("READY=1")
    mark = len(daemon.messages)
    code, out, _ = run_cli(capsys, "rescan", "--root", root)
    assert code == 0 and f"pid {daemon.process.pid}" in out
    daemon.wait_message("RELOADING=1", after=mark)
    daemon.stop()
