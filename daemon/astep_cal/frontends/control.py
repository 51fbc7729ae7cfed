"""The daemon's control files next to the ledger, read and written by small commands.

``astep-cal status``, ``rescan`` and ``retry`` talk to a running daemon through these files and
signals only, so they import nothing of the daemon (nor of the science behind it) and start fast:

- ``lock`` (:class:`~astep_cal.state.ledger.RootLock`): held by the daemon, with its PID in it;
- ``daemon.json``: what the daemon is doing (its STATUS= text), for ``status``;
- ``retry-request``: ``retry`` asks a running daemon to clear failures (the daemon owns the ledger).
"""

from __future__ import annotations

import fcntl
import json
import os
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


def running_daemon_pid(ledger_path: Path) -> int | None:
    """PID of the process holding the data root's lock, when one does."""
    lock = ledger_path.parent / "lock"
    try:
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # nobody holds it
    except BlockingIOError:
        text = lock.read_text().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
