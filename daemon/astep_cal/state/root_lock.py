"""The data root's lock: one astep-cal process at a time works on a data root's state."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from astep_cal.support.storage import remove_stale_temporaries

NIGHTS_DIR = "nights"  # the ledger's per-night files, beside the index


class LedgerLocked(RuntimeError):
    """Another astep-cal process holds the data root."""


def open_lock_file(path: Path) -> int:
    """The lock file, created if need be, never through a link: a command run as root must not open
    (and then truncate) whatever a symlink or hard link planted at the name points to."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PermissionError(f"{path} is a symbolic link: refused (remove it)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise PermissionError(f"{path} is not a plain file of its own (a device, a FIFO or a hard link): refused")
    return fd


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
        fd = open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerLocked(f"another astep-cal process is working on {self.path.parent}") from None
        # Only the lock holder may sweep: a reader (``status``) must never remove a live write.
        remove_stale_temporaries(self.path.parent)  # a ledger write cut short by a crash
        if (self.path.parent / NIGHTS_DIR).is_dir():
            remove_stale_temporaries(self.path.parent / NIGHTS_DIR)
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
