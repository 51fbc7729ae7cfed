"""Files at the edge of the pipeline, without FITS: atomic writes, fingerprints, storage errors.

Everything that lands in the data root or the state directory goes through :func:`atomic_write_bytes`
(FITS files through ``fitsio.atomic_write_hdul``, which serialises and calls it): a temporary file in
the same directory, fsync, rename, fsync of the directory. A crash (or SIGKILL, or a full disk)
therefore leaves either the old file or the new one, never half of one. Temporary files are named
``.<name>.astep-tmp-<random>`` so they are hidden from the inventory and easy to sweep.

Kept free of numpy and astropy so that the small commands (``status``, ``rescan``, ``retry``) and
the ledger start in a fraction of a second.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from astep_cal.support.faults import checkpoint, file_role

TEMP_MARKER = ".astep-tmp-"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class StorageUnavailable(Exception):
    """The data root cannot be used right now: disk full, quota reached, unmounted or gone.

    Not the frame's fault, so nothing is recorded as failed: the work is left undone and taken up
    again when the storage is back (the daemon waits and retries; the batch command says so and exits).
    """


_WAS_MOUNT_POINT: dict[str, bool] = {}  # data root -> whether it was a mount point when first seen


def root_present(root: Path) -> bool:
    """Whether the data root is there: a directory, and still a mount point if it was one.

    Unmounting a data root that is itself the mount point leaves an empty directory behind on the
    parent file system: without the mount check, a night in progress would see its files "vanish"
    (recorded as failed frames) and writes could land in that hidden directory. Whether the root is
    a mount point is learnt the first time it is seen by this process (at start-up).
    """
    root = Path(root)
    if not root.is_dir():
        return False
    key = str(root)
    if key not in _WAS_MOUNT_POINT:
        _WAS_MOUNT_POINT[key] = os.path.ismount(root)
    return not _WAS_MOUNT_POINT[key] or os.path.ismount(root)


def ensure_root(root: Path, error: BaseException) -> None:
    """Turn an I/O error into :class:`StorageUnavailable` when the data root itself is gone."""
    if not root_present(root):
        raise StorageUnavailable(f"the data root {root} is not there (unmounted?)") from error


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, payload: bytes, make_parents: bool = True) -> None:
    """Write ``payload`` to ``path`` so that readers see the old content or the new, never a mix.

    Writers into the data root pass ``make_parents=False``: if the root was unmounted under us, a
    ``mkdir -p`` would quietly recreate it on the wrong disk instead of failing.
    """
    atomic_write(path, lambda handle: handle.write(payload), make_parents)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], make_parents: bool = True) -> None:
    """Like :func:`atomic_write_bytes`, with ``write`` filling the temporary file itself: a 4096² CAL
    file (144 MB) goes from the arrays to the file without a serialised copy in memory first."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    role = file_role(path)
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", dir=path.parent)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise StorageUnavailable(f"no space left to write {path.name} in {path.parent}") from error
        raise
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600: products must be readable by the astronomers
        # opened by name: a writer (astropy) may look at the handle's name, which an fdopen'ed
        # handle gives as a number (astropy's free-space check then fails with AttributeError). The
        # name is reopened without following a link nor truncating, and must still be mkstemp's file:
        # someone who can write the directory may have swapped it in between.
        with open(temp_name, "r+b", opener=_no_follow) as handle:
            _same_file(fd, handle.fileno(), temp_name)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        checkpoint(f"temp_written:{role}")
        os.replace(temp_name, path)
        _renamed_ours(fd, path)
        os.close(fd)
        fd = -1
    except BaseException as error:
        if fd >= 0:
            os.close(fd)
        Path(temp_name).unlink(missing_ok=True)
        if _disk_full(error, path.parent):
            raise StorageUnavailable(f"no space left to write {path.name} in {path.parent}") from error
        raise
    checkpoint(f"renamed:{role}")
    _fsync_directory(path.parent)


def _no_follow(name: str, flags: int) -> int:
    return os.open(name, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC)


def _renamed_ours(fd: int, path: Path) -> None:
    """After the rename, the name must be the file written (``fd``): a link swapped in for the temporary
    name just before the rename would now stand at ``path`` — removed again (unlink does not follow it)."""
    ours, there = os.fstat(fd), os.lstat(path)
    if (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
        if stat.S_ISLNK(there.st_mode):
            path.unlink(missing_ok=True)
        raise PermissionError(f"{path} was replaced while being written: refused")


def _same_file(first: int, second: int, name: str) -> None:
    a, b = os.fstat(first), os.fstat(second)
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        raise PermissionError(f"{name} was replaced while being written: refused")


FULL_BELOW_BYTES = 1 << 20  # a write failed with less than this left free: the disk is full


def _disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT on the error or on the OSError it
    was raised from, or any OSError with (almost) nothing left free. A writer writing into the file
    itself need not pass the errno on: astropy's ``writeto`` reports a short write as ``OSError("...
    requested and ... written")``, then again with a free-space message, neither with an errno."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            return True
        cause = cause.__cause__ or cause.__context__
    if not isinstance(error, OSError):
        return False
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files left by an interrupted atomic write; return what was removed."""
    removed = []
    if directory.is_dir():
        for candidate in directory.glob(f".*{TEMP_MARKER}*"):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def fingerprint(path: Path) -> dict[str, int]:
    """Size and modification time: cheap, and changes whenever a file is rewritten or replaced."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
