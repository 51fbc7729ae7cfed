"""Fault injection for the crash-safety tests: die by SIGKILL at a named point of the real code.

A power cut or an OOM kill can stop the service between any two instructions; the tests prove that a
restart then finishes the work with the same outputs and nothing left half-written. Killing from
outside at a random moment would test few interesting places, so the code names its risky places
with :func:`checkpoint` and the environment variable ``ASTEP_CAL_KILL_AT`` picks one::

    ASTEP_CAL_KILL_AT=renamed:master_flat      # the first time that point is reached
    ASTEP_CAL_KILL_AT=temp_written:cal#2       # the second time

Without the variable a checkpoint is one dictionary lookup: nothing happens in production.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

KILL_VARIABLE = "ASTEP_CAL_KILL_AT"

_passes: dict[str, int] = {}
_lock = threading.Lock()


def _target() -> tuple[str, int] | None:
    value = os.environ.get(KILL_VARIABLE)
    if not value:
        return None
    name, _, count = value.partition("#")
    return name, int(count or 1)


def checkpoint(name: str) -> None:
    """SIGKILL this process when ``name`` is the point (and pass) ``ASTEP_CAL_KILL_AT`` names."""
    target = _target()
    if target is None or target[0] != name:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        reached = _passes[name] == target[1]
    if reached:
        os.kill(os.getpid(), signal.SIGKILL)


def file_role(path: Path) -> str:
    """What a written file is, for checkpoint names: ``cal``, ``master_dark``, ``ledger`` …

    ``_replace`` is added when the file already exists (a WCS merge rewrites the CAL file; the ledger
    is rewritten after every frame).
    """
    name = path.name
    if path.parent.name == "nights" and name.endswith(".json"):
        role = "ledger_night"  # the ledger's per-night file
    elif name.endswith("_CAL.fits"):
        role = "cal"
    elif name.startswith("master_dark_"):
        role = "master_dark"
    elif name.endswith(".fits"):
        role = name[: -len(".fits")]  # master_bias, master_flat, bad_pixel_mask
    else:
        role = name.split(".")[0]  # ledger, daemon …
    return f"{role}_replace" if path.exists() else role
