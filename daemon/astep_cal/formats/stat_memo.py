"""What was read from a file, remembered for as long as the file is unchanged (this process only).

A daemon fed frame by frame takes the inventory of its night once per new frame: reading the header
of every raw file each time made a late frame pay for the whole night (~4 ms a file: ~4 s a frame
at the end of a 1000-frame polar night). A file whose size, modification time, change time and inode
are those it had when it was read is not read again: the same test the ledger uses to see a changed
file (``storage.fingerprint``: size and mtime), plus the change time (a ``chmod`` that makes a file
unreadable changes it) and the inode (a file replaced by another).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

StatKey = tuple[int, int, int, int]


def stat_key(path: Path) -> StatKey | None:
    """Size, mtime, ctime (ns) and inode of ``path``; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatMemo(Generic[T]):
    """``read(path)`` results, kept per path while :func:`stat_key` is unchanged; the least recently
    used are dropped beyond ``max_entries`` (a night of ~1 500 files is a few hundred kB)."""

    def __init__(self, read: Callable[[Path], T], max_entries: int = 8192):
        self._read = read
        self._max = max_entries
        self._entries: OrderedDict[Path, tuple[StatKey, T]] = OrderedDict()
        self.hits = 0  # how many reads were spared (tests and benchmarks look at it)
        self._lock = threading.Lock()  # the daemon's worker and a status request may both take inventories

    def __call__(self, path: Path) -> T:
        before = stat_key(path)
        with self._lock:
            known = self._entries.get(path)
            if before is not None and known is not None and known[0] == before:
                self._entries.move_to_end(path)
                self.hits += 1
                return known[1]
        result = self._read(path)
        with self._lock:
            if before is not None and stat_key(path) == before:  # not changed while it was read
                self._entries[path] = (before, result)
                self._entries.move_to_end(path)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            else:
                self._entries.pop(path, None)
        return result
