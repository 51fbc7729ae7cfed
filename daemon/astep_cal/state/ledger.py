"""The JSON ledger: what has been done to every night and frame, so no work is ever redone.

It must serve a whole archive (hundreds of nights of ~1000 frames) at a cost per recorded frame that
does not grow with the archive. So it is two kinds of JSON file in the state directory (``schema`` 2)::

    ledger.json                the index: one small row of totals per night (what ``status`` shows,
                               and what the daemon needs to decide whether a night may have work)
    nights/YYYY-MM-DD.json     one night: masters, problems, inventory, raw listing, and its frames,
                               one frame per line (readable by hand)

A night file holds::

    {"masters": {"darks": {"60": {...}}, "flat": {...}, "mask": {...}, "bias": {...}, "problems": [...]},
     "problems": [{"path": ..., "event": ..., "reason": ..., "raw": {"size": ..., "mtime_ns": ...}}],
     "inventory": {"science": ..., "darks": ..., "biases": ..., "flats": ...},
     "listing": "<digest of the raw directories when the inventory was taken>",
     "frames": {"2026-07-01_20.00.00_SCIENCE.fits": {
         "raw": {"size": ..., "mtime_ns": ...}, "output": {...},
         "calibrate": {"status": "ok|failed|blocked", ...},
         "astrometry": {"status": "solved|failed", "tries": ..., "retry_after": ..., ...}}}}

Only the nights being worked on are held in memory (:meth:`Ledger.night`, dropped again with
:meth:`Ledger.release`); :meth:`Ledger.save` serialises those nights once each and writes the ones that
changed, then the index if it changed. Every file is written atomically, so a crash leaves the old or
the new version. The index is derived data: each row remembers the size and mtime of its night file,
and a row that disagrees with its file (a crash between the two writes) is recomputed on load; a
corrupt index is rebuilt from the night files. Every file is checked against its layout first
(:mod:`~astep_cal.state.ledger_schema`: types, date keys, depth): one that is well-formed JSON but not a
ledger is corrupt like any other, kept aside and rebuilt, never a crash nor a path outside the state
directory. A schema-1 ``ledger.json`` (everything in one file) is
converted on the first save of a process holding the lock, and kept beside as ``ledger.json.schema1``.

A lock file next to the ledger (``flock``) keeps two processes off the same data root: the kernel
releases it when the holder dies, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from astep_cal import __version__
from astep_cal.state import alerts, entries
from astep_cal.state.ledger_schema import check_index, check_night, is_night_key, read_document
from astep_cal.state.root_lock import NIGHTS_DIR, LedgerLocked, RootLock  # noqa: F401 (the ledger's lock)
from astep_cal.support.storage import atomic_write_bytes

SCHEMA_VERSION = 2
SCHEMA1_KEPT_SUFFIX = ".schema1"
INDEX_EVERY_S = 30.0  # the index is rewritten at most this often while a night is being recorded


# --- the night record and its totals --------------------------------------------------------------

def empty_night() -> dict[str, Any]:
    return {"masters": {}, "problems": [], "frames": {}}


def median_fwhm(frames: dict[str, Any]) -> float | None:
    """The night's median FWHM in arcsec; the solved pixel scale wins over the nominal one (as in the
    summary)."""
    values = []
    for entry in frames.values():
        measured = entries.quality(entry)
        scale = entries.solve(entry).get("pixel_scale_arcsec")
        if measured.get("fwhm_px") is not None and scale:
            values.append(round(measured["fwhm_px"] * scale, 3))
        elif measured.get("fwhm_arcsec") is not None:
            values.append(measured["fwhm_arcsec"])
    return round(statistics.median(values), 3) if values else None


def night_totals(night: dict[str, Any]) -> dict[str, Any]:
    """The figures of one night that the index keeps: settings-free, so ``status`` derives its row
    (state, retries) from them without opening the night file."""
    frames = night.get("frames", {})
    calibrate = Counter(entries.calibration_status(f) for f in frames.values())
    solves = [entries.solve(f) for f in frames.values()]
    solve_status = Counter(s.get("status") for s in solves)
    failed_tries = Counter(str(s.get("tries", 0)) for s in solves if s.get("status") == "failed")
    retry_times = [s["retry_after"] for s in solves if s.get("status") == "failed" and "retry_after" in s]
    masters = entries.masters_record(night)
    flat = masters.get("flat")
    health = alerts.compact(night.get("health"))  # only on nights measured (docs/pages/health.md)
    return {
        "science": night.get("inventory", {}).get("science", len(frames)),
        "calibrated": calibrate["ok"], "cal_failed": calibrate["failed"], "blocked": calibrate["blocked"],
        "solved": solve_status["solved"], "solve_failed": solve_status["failed"],
        "solve_deferred": solve_status["deferred"],
        "failed_solve_tries": dict(sorted(failed_tries.items())),
        "next_retry": min(retry_times) if retry_times else None,
        "fwhm_arcsec": median_fwhm(frames),
        "darks": sorted(masters.get("darks", {}), key=float),
        "flat": None if not flat else (flat["night"] if flat.get("borrowed") else "own"),
        "problems": len(night.get("problems", [])),
        "stuck": entries.stuck_reason(night),
        **({"health": health} if health else {}),
    }


def frame_line(name: str, entry: dict[str, Any]) -> str:
    return f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True)}"


def assemble_night(night: dict[str, Any], lines: dict[str, str]) -> str:
    """A night file's text from its frame lines: compact JSON, one frame per line, keys sorted."""
    head = json.dumps({k: v for k, v in night.items() if k != "frames"}, sort_keys=True)[:-1]
    separator = ", " if head != "{" else ""
    body = ",\n".join(lines[name] for name in sorted(lines))
    return f'{head}{separator}"frames": {{\n{body}\n}}}}\n'


def night_text(night: dict[str, Any]) -> str:
    """A night as its file holds it (stable bytes: the same night always gives the same text)."""
    frames = night.get("frames", {})
    return assemble_night(night, {name: frame_line(name, entry) for name, entry in frames.items()})


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _aside(path: Path) -> Path:
    """Move a file that cannot be read out of the way (kept for inspection)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside


# --- the store ------------------------------------------------------------------------------------

class Ledger:
    """The index in memory, and the nights being worked on. Not thread-safe: one writer thread.

    ``path`` is the index (``ledger.json``); the night files live in ``nights/`` beside it.
    """

    def __init__(self, path: Path, index: dict[str, Any] | None = None, recovered_from: Path | None = None):
        self.path = Path(path)
        self.nights_dir = self.path.parent / NIGHTS_DIR
        self.index: dict[str, Any] = index if index is not None else {"schema": SCHEMA_VERSION, "nights": {}}
        self.recovered_from = recovered_from  # where a corrupt index was moved, if it was
        self.recovery_reason = ""  # what was wrong with it
        self.corrupt_nights: list[tuple[str, Path]] = []  # night files moved aside (their nights are rebuilt)
        self.corrupt_reasons: dict[str, str] = {}  # night -> what was wrong with its file
        self.migrated_from: Path | None = None  # a schema-1 ledger converted in memory, written at save
        self._open: dict[str, dict[str, Any]] = {}  # nights in memory
        self._saved: dict[str, str | None] = {}  # their text on disk, to write only what changed
        self._lines: dict[str, dict[str, str]] = {}  # their frames' serialised lines, as last saved
        self._dirty: dict[str, set[str] | None] = {}  # frames handed out since (None: the whole night)
        self._saved_index = self._index_text() if index is not None else None
        self._index_written = time.monotonic()

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        """Read the index (and check it against the night files); a corrupt index is moved aside and
        rebuilt from the night files; a schema-1 ledger is converted in memory."""
        path = Path(path)
        try:
            data = read_document(path)
            schema = check_index(data)
        except FileNotFoundError:
            ledger = cls(path)
        except (ValueError, OSError) as error:
            ledger = cls(path, recovered_from=_aside(path))
            ledger.recovery_reason = str(error)
        else:
            if schema == 1:
                return cls._from_schema1(path, data)
            ledger = cls(path, data)
        ledger._check_index()
        return ledger

    @classmethod
    def _from_schema1(cls, path: Path, data: dict[str, Any]) -> "Ledger":
        ledger = cls(path)
        ledger.migrated_from = path
        ledger.index["root_problems"] = data.get("root_problems", [])
        for date, night in data["nights"].items():
            ledger._open[date] = night
            ledger._saved[date] = None  # not on disk in the new form yet
            ledger._lines[date] = {}
            ledger._dirty[date] = None
            ledger.index["nights"][date] = {"totals": night_totals(night), "file": None}
        return ledger

    def _check_index(self) -> None:
        """Recompute the rows whose night file changed behind the index (a crash between the two
        writes), add night files the index lacks, drop rows whose file is gone."""
        rows = self.index["nights"]
        on_disk = {p.name[:-5] for p in self.nights_dir.glob("*.json")} if self.nights_dir.is_dir() else set()
        on_disk = {name for name in on_disk if is_night_key(name)}  # anything else in nights/ is not ours
        for date in sorted(on_disk | set(rows)):
            stamp = _stamp(self._night_path(date))
            row = rows.get(date)
            if stamp is None:
                rows.pop(date, None)
            elif row is None or row.get("file") != stamp:
                night = self._read_night(date)
                stamp = _stamp(self._night_path(date))  # None when it was corrupt (moved aside)
                if stamp is None:
                    rows.pop(date, None)
                else:
                    rows[date] = {"totals": night_totals(night), "file": stamp}

    def _night_path(self, date: str) -> Path:
        if not is_night_key(date):  # never a path outside nights/ (the index's keys were checked on load)
            raise ValueError(f"not a night key: {date!r}")
        return self.nights_dir / f"{date}.json"

    def _read_night(self, date: str) -> dict[str, Any]:
        path = self._night_path(date)
        try:
            return check_night(read_document(path), date)
        except FileNotFoundError:
            return empty_night()
        except (ValueError, OSError) as error:
            self.corrupt_nights.append((date, _aside(path)))
            self.corrupt_reasons[date] = str(error)
            return empty_night()

    # --- reading ----------------------------------------------------------------------------------

    def dates(self) -> list[str]:
        """Every night the ledger knows, oldest first."""
        return sorted(set(self.index["nights"]) | set(self._open))

    def totals(self, date: str) -> dict[str, Any]:
        """The night's totals: computed afresh for a night in memory, else the index row's."""
        if date in self._open:
            return night_totals(self._open[date])
        row = self.index["nights"].get(date)
        return row["totals"] if row else night_totals(empty_night())

    def peek(self, date: str) -> dict[str, Any]:
        """A night to read, not to change: the one in memory, else read from its file (not kept)."""
        if date in self._open:
            return self._open[date]
        if date not in self.index["nights"]:
            return empty_night()
        return self._read_night(date)

    @property
    def root_problems(self) -> list[dict[str, str]]:
        return self.index.get("root_problems", [])

    @root_problems.setter
    def root_problems(self, problems: list[dict[str, str]]) -> None:
        if problems != self.root_problems:  # absent means none: no rewrite for saying so
            self.index["root_problems"] = problems

    # --- changing ---------------------------------------------------------------------------------

    def night(self, date: str) -> dict[str, Any]:
        """The night to change (read from its file the first time, then kept until :meth:`release`).

        Anything in it may change, so its next save serialises it whole."""
        night = self._opened(date)
        self._dirty[date] = None
        return night

    def frame(self, date: str, name: str) -> dict[str, Any]:
        """One frame's entry to change: its next save serialises only the frames handed out since the
        last save (and the night's small head), so recording a frame costs the same in a night of
        1000 frames as in one of 10."""
        frames = self._opened(date)["frames"]
        dirty = self._dirty[date]
        if dirty is not None:
            dirty.add(name)
        return frames.setdefault(name, {})

    def _opened(self, date: str) -> dict[str, Any]:
        if date not in self._open:
            night = self._read_night(date) if date in self.index["nights"] else empty_night()
            self._open[date] = night
            self._lines[date] = {name: frame_line(name, entry) for name, entry in night["frames"].items()}
            self._saved[date] = assemble_night(night, self._lines[date]) if date in self.index["nights"] else None
            self._dirty[date] = set()
        return self._open[date]

    def forget_night(self, date: str) -> None:
        self.night(date)
        self._open[date] = empty_night()

    def release(self, date: str) -> None:
        """Write what is unsaved of a night (serialised whole: nothing can be missed), then drop it
        from memory, with the index brought up to date."""
        if date not in self._open:
            return
        self._dirty[date] = None
        self.save()
        for table in (self._open, self._saved, self._lines, self._dirty):
            del table[date]

    def release_all(self) -> None:
        """:meth:`release` every night in memory (after a migration, a rebuild, a retry request)."""
        for date in list(self._open):
            self.release(date)

    def save(self, lazy_index: bool = False) -> bool:
        """Write the nights in memory that changed, then the index if it changed; return whether
        anything was written. Cost: the frames handed out since the last save, never the archive.

        ``lazy_index`` (the per-frame saves of a night being processed): the index is written at most
        every ``INDEX_EVERY_S``; it cannot be wrong meanwhile, since a row whose night file is newer is
        recomputed from that file on load (``status`` stays current)."""
        wrote = False
        for date in list(self._open):
            wrote |= self._save_night(date)
        if lazy_index and time.monotonic() - self._index_written < INDEX_EVERY_S:
            return wrote  # not even serialised: the index grows with the archive
        current = self._index_text()
        if current == self._saved_index:
            return wrote
        self.path.parent.mkdir(exist_ok=True)
        if self.migrated_from is not None:
            self._keep_schema1()
        self.index["schema"] = SCHEMA_VERSION
        self.index["software"] = __version__
        self.index["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_bytes(self.path, json.dumps(self.index, sort_keys=True, indent=1).encode(), make_parents=False)
        self._saved_index = current
        self._index_written = time.monotonic()
        return True

    def _save_night(self, date: str) -> bool:
        dirty = self._dirty[date]
        if dirty == set():
            return False
        night, lines = self._open[date], self._lines[date]
        frames = night["frames"]
        if dirty is None:
            lines.clear()
            dirty = set(frames)
        for name in dirty:
            if name in frames:
                lines[name] = frame_line(name, frames[name])
        self._dirty[date] = set()
        text = assemble_night(night, lines)
        if text == self._saved.get(date):
            return False
        self.path.parent.mkdir(exist_ok=True)  # its own directory, never the data root above it
        self.nights_dir.mkdir(exist_ok=True)
        atomic_write_bytes(self._night_path(date), text.encode(), make_parents=False)
        self._saved[date] = text
        self.index["nights"][date] = {"totals": night_totals(night), "file": _stamp(self._night_path(date))}
        return True

    def _keep_schema1(self) -> None:
        """The converted schema-1 file is kept beside the new index (never overwritten once kept)."""
        kept = self.path.with_name(self.path.name + SCHEMA1_KEPT_SUFFIX)
        if not kept.exists() and self.path.is_file():
            atomic_write_bytes(kept, self.path.read_bytes(), make_parents=False)
        self.migrated_from = None

    def _index_text(self) -> str:
        body = {k: v for k, v in self.index.items() if k not in ("updated", "software")}
        return json.dumps(body, sort_keys=True)
