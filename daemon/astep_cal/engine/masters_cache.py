"""The daemon's masters kept in memory between runs of a night (issue 27): one run per late frame would
otherwise read the night's masters back each time (~0.2 s at 4096²)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from astep_cal.engine.night_masters import Masters
from astep_cal.formats.names import masters_dir


def _master_files(root: Path, date: str, record: dict[str, Any]) -> list[Path]:
    directory = masters_dir(root, date)
    files = [directory / d["file"] for d in record.get("darks", {}).values()]
    files += [directory / record[k]["file"] for k in ("bias", "mask") if k in record]
    return files + ([root / record["flat"]["file"]] if "flat" in record else [])


class MastersCache:
    """The last night's masters kept in memory between runs of that night (the daemon: one run per late
    frame), so a late frame does not read them back (~0.2 s at 4096²). Keyed by the night and every
    master file's identity (path, size, mtime, inode): a master rebuilt, replaced or gone is read again.
    One night only: the memory a combine may use counts the masters of the night being processed."""

    def __init__(self) -> None:
        self.date: str | None = None
        self._key: tuple | None = None
        self._masters: Masters | None = None

    @staticmethod
    def _identity(root: Path, date: str, record: dict[str, Any]) -> tuple | None:
        try:
            stats = [(str(p), s.st_size, s.st_mtime_ns, s.st_ino)
                     for p in _master_files(root, date, record) for s in [p.stat()]]
        except OSError:
            return None
        return (date, tuple(stats)) if stats else None

    def get(self, root: Path, date: str, record: dict[str, Any]) -> Masters | None:
        """The kept masters with ``record`` (the ledger's) when they are this night's complete ones, still
        on disk as they were kept; else None."""
        if self._masters is None or not record.get("complete") or "detector" not in record:
            return None
        identity = self._identity(root, date, record)
        if identity is None or identity != self._key:  # a master gone (None) never matches, not even None
            return None
        return replace(self._masters, record=record)

    def keep(self, root: Path, date: str, masters: Masters) -> None:
        """Keep a night's complete masters (with their flat); a night without one is not kept (its
        next run tries to borrow a flat again)."""
        self.clear()
        if masters.flat is None or not masters.record.get("complete"):
            return
        identity = self._identity(root, date, masters.record)  # stats the master files: only when kept
        if identity is not None:
            self.date, self._key, self._masters = date, identity, masters

    def clear(self) -> None:
        self.date = self._key = self._masters = None
