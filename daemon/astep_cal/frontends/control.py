"""The daemon's control files next to the ledger, read and written by small commands.

``astep-cal status``, ``rescan`` and ``retry`` talk to a running daemon through these files and
signals only, so they import nothing of the daemon (nor of the science behind it) and start fast:

- ``lock`` (:class:`~astep_cal.state.ledger.RootLock`): held by the daemon, with its PID in it;
- ``daemon.json``: what the daemon is doing (its STATUS= text), for ``status``;
- ``retry-request``: ``retry`` asks a running daemon to clear failures (the daemon owns the ledger).

These commands are run by operators, often as root, in a directory the service account (and, under the
data root, the transfer group) can write: nothing here may follow a link planted there. The request is
written atomically (a new file renamed over the name: a symlink there is replaced, never written
through), and the PID in ``lock`` is signalled only when it is the process that really holds the
lock (``/proc/locks``) and is astep-cal; under systemd the unit's ``MainPID`` is asked first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from astep_cal.support.storage import atomic_write_bytes

RETRY_REQUEST = "retry-request"  # next to the ledger: `astep-cal retry` asks the daemon to clear failures
ACTIVITY_FILE = "daemon.json"  # next to the ledger: what the running daemon is doing, for `status`


def write_activity(path: Path, text: str) -> None:
    """``daemon.json``: the daemon's PID and activity (a reader checks the PID is alive)."""
    payload = {"pid": os.getpid(), "activity": text, "updated": time.time()}
    atomic_write_bytes(path, json.dumps(payload).encode(), make_parents=False)


def read_activity(ledger_path: Path) -> dict[str, Any] | None:
    """The running daemon's activity, or None when no live daemon wrote one."""
    try:
        payload = json.loads((ledger_path.parent / ACTIVITY_FILE).read_text())
        os.kill(int(payload["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return payload


SYSTEMD_UNIT = "astep-cal.service"


def write_retry_request(ledger_path: Path, nights: list[str] | None) -> None:
    """Leave the daemon a retry request (atomic: a symlink planted at the name is replaced, not followed)."""
    atomic_write_bytes(ledger_path.parent / RETRY_REQUEST, " ".join(nights or []).encode(), make_parents=False)


def systemd_main_pid(unit: str = SYSTEMD_UNIT) -> int | None:
    """The unit's MainPID as systemd knows it (None without systemd, or when the unit is not running)."""
    if shutil.which("systemctl") is None:
        return None
    try:
        done = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return int(text) if done.returncode == 0 and text.isdigit() and int(text) > 0 else None


def lock_holders(lock_inode: int) -> set[int]:
    """PIDs holding a ``flock`` on the file with this inode, from the kernel's own table."""
    holders = set()
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return holders
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2492274 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
            inode = fields[5].rsplit(":", 1)[-1]
            if inode.isdigit() and int(inode) == lock_inode:
                holders.add(int(fields[4]))
    return holders


def is_astep_cal(pid: int) -> bool:
    """Whether the process runs astep-cal (its command line names it)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"astep-cal" in w or b"astep_cal" in w for w in words)


def running_daemon_pid(ledger_path: Path) -> int | None:
    """PID of the astep-cal process holding the data root's lock, when one does.

    The PID written in ``lock`` is a claim anyone who can write the state directory can make: it is
    believed only when the kernel says that process holds the lock and it is astep-cal; systemd's
    MainPID for the unit is preferred when it is that process."""
    lock = ledger_path.parent / "lock"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # nobody holds it
        except BlockingIOError:
            pass
        inode = os.fstat(fd).st_ino
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    holders = {pid for pid in lock_holders(inode) if is_astep_cal(pid)}
    for candidate in (systemd_main_pid(), int(text) if text.isdigit() else None):
        if candidate is not None and candidate in holders:
            return candidate
    return None
