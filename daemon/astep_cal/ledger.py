"""The JSON ledger: what has been done to every night and frame, so no work is ever redone.

Shape (``schema`` 1)::

    {"schema": 1, "software": "0.1.0", "updated": "...",
     "nights": {"2026-07-01": {
         "masters": {"darks": {"60.0": {...}}, "flat": {...}, "mask": {...}, "bias": {...}},
         "problems": [{"path": ..., "event": ..., "reason": ...}],
         "frames": {"2026-07-01_20.00.00_SCIENCE.fits": {
             "raw": {"size": ..., "mtime_ns": ...},
             "calibrate": {"status": "ok|failed|blocked", "output": ..., "duration_s": ..., "config": ...,
                           "software": ..., "dark": {...}, "flat": {...}, "gain": ..., "n_cosmic": ...,
                           "sky_e": ..., "date_obs": ..., "error": ...,
                           "quality": {"sky_noise_e": ..., "n_stars": ..., "fwhm_px": ..., "fwhm_arcsec": ...,
                                       "pixel_scale_arcsec": ..., "ellipticity": ..., "n_fwhm_stars": ...,
                                       "masked_fraction": ..., "duration_s": ...}},
             "astrometry": {"status": "solved|failed|pending|disabled", "tries": ..., "error": ...,
                            "duration_s": ..., "hinted": ..., "n_matched": ..., "residual_arcsec": ...,
                            "pixel_scale_arcsec": ...}}}}}}

Writes are atomic and skipped when nothing changed, so a run that does nothing rewrites nothing. A
lock file next to the ledger (``flock``) keeps two processes off the same data root: the kernel
releases it when the holder dies, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .fitsio import atomic_write_bytes, remove_stale_temporaries

SCHEMA_VERSION = 1


class LedgerLocked(RuntimeError):
    """Another astep-cal process holds the data root."""


class RootLock:
    """An exclusive, non-blocking ``flock`` on ``<ledger dir>/lock``.

    The daemon writes its PID into the file (``astep-cal rescan``/``retry`` signal it); a batch run
    leaves the file empty and untouched, so a run with nothing to do modifies no file at all.
    """

    def __init__(self, ledger_path: Path, record_pid: bool = False):
        self.path = Path(ledger_path).parent / "lock"
        self.record_pid = record_pid
        self._fd: int | None = None

    def __enter__(self) -> "RootLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerLocked(f"another astep-cal process is working on {self.path.parent}") from None
        # Only the lock holder may sweep: a reader (``status``) must never remove a live write.
        remove_stale_temporaries(self.path.parent)  # a ledger write cut short by a crash
        if self.record_pid:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        elif os.fstat(fd).st_size:
            os.ftruncate(fd, 0)  # a stale PID of a daemon that has stopped
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "software": __version__, "nights": {}}


class Ledger:
    """The ledger in memory, with load/save at the edges. Not thread-safe: one writer thread."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None, recovered_from: Path | None = None):
        self.path = Path(path)
        self.data = data if data is not None else _empty()
        self.recovered_from = recovered_from  # where a corrupt ledger was moved, if it was
        self._saved = self._serialise() if data is not None else None

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        """Read the ledger; a corrupt one is moved aside (kept for inspection) and a new one started."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION or "nights" not in data:
                raise ValueError(f"unknown ledger schema {data.get('schema') if isinstance(data, dict) else None}")
        except FileNotFoundError:
            return cls(path)
        except (ValueError, UnicodeDecodeError, OSError):
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            os.replace(path, aside)
            return cls(path, recovered_from=aside)
        return cls(path, data)

    def _serialise(self) -> str:
        body = {k: v for k, v in self.data.items() if k != "updated"}
        return json.dumps(body, sort_keys=True, indent=1)

    def save(self) -> bool:
        """Write atomically if anything changed since the last load or save; return whether it wrote."""
        current = self._serialise()
        if current == self._saved:
            return False
        self.data["software"] = __version__
        self.data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.path.parent.mkdir(exist_ok=True)  # its own directory, never the data root above it
        atomic_write_bytes(self.path, json.dumps(self.data, sort_keys=True, indent=1).encode(), make_parents=False)
        self._saved = current
        return True

    # --- accessors -------------------------------------------------------------------------------

    def nights(self) -> dict[str, Any]:
        return self.data["nights"]

    def night(self, date: str) -> dict[str, Any]:
        return self.data["nights"].setdefault(date, {"masters": {}, "problems": [], "frames": {}})

    def frame(self, date: str, name: str) -> dict[str, Any]:
        return self.night(date)["frames"].setdefault(name, {})

    def forget_night(self, date: str) -> None:
        self.data["nights"].pop(date, None)
