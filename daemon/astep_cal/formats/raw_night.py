"""Discover night directories and take the inventory of one night.

The layout is the telescope's (see the user's guide)::

    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS/          *_SCIENCE*.fits, *_DARK*.fits, *_BIAS*.fits
    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS_SKYFLAT/  *_SKYFLAT*.fits, *_DARK*.fits
    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS_CAL/      outputs (astep-cal writes only here)

Classification rule: the type word in the file name decides (it is what the acquisition software and
the old pipeline rely on); the header's ``IMAGETYP``/``ACQTYPE`` is cross-checked and a disagreement is
reported. A name without a type word falls back to the header type. Anything that cannot be used
becomes a :class:`Problem` (logged and shown in the ledger), never an exception: one bad file must not
stop a night.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits

from astep_cal.formats.names import (  # noqa: F401 (valid_date re-exported: callers import it from here)
    FITS_SUFFIXES,
    cal_dir,
    cams_dir,
    fits_stem,
    masters_dir,
    skyflat_dir,
    unit_date,
    valid_date,
)
from astep_cal.formats.raw_headers import image_hdu, kind_from_header, read_ccd_temp, read_date_obs, read_exptime
from astep_cal.formats.raw_limits import MAX_PIXELS, Refusal, screen_gzip, screen_magic, screen_plain
from astep_cal.formats.stat_memo import StatMemo
from astep_cal.support.storage import TEMP_MARKER, fingerprint

KINDS = ("SCIENCE", "DARK", "BIAS", "SKYFLAT")
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TYPE_WORD = re.compile(r"_(SCIENCE|DARK|BIAS|SKYFLAT)(?![A-Z])", re.IGNORECASE)
_TEMPORARY_SUFFIXES = (".part", ".tmp", ".swp", ".partial", "~")
# Plain FITS (under the three names cameras write: .fits, .fit, .fts, in any case), and the two
# compressions FITS archives use: gzip of the whole file, and fpack (tiled image compression in a
# binary-table extension). The type word and the CAL name ignore the suffix.


@dataclass(frozen=True)
class RawFrame:
    """One usable raw frame: what the pipeline needs to know without reading its pixels."""

    path: Path
    kind: str
    exptime: float
    shape: tuple[int, int]
    header_kind: str | None  # the type the header claims, when it has one
    hdu: int = 0  # the image HDU: 0, or 1 for an fpack-compressed file
    date_obs: str | None = None  # DATE-OBS when it parses as an ISO time
    ccd_temp: float | None = None  # CCD-TEMP (deg C) when present and numeric

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Problem:
    """A file or directory that cannot be used, with a stable event name and a readable reason."""

    path: Path
    event: str
    reason: str


@dataclass
class NightInventory:
    """Every raw frame of one night (one camera's: ``date`` is the night key), by role, plus the problems
    found while reading them."""

    date: str
    night_dir: Path  # ROOT/YYYY-MM-DD, shared by the night's cameras
    science: list[RawFrame] = field(default_factory=list)
    darks: list[RawFrame] = field(default_factory=list)  # from both raw directories
    biases: list[RawFrame] = field(default_factory=list)
    flats: list[RawFrame] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # worth a log line, not a failure

    @property
    def cams_dir(self) -> Path:
        return cams_dir(self.night_dir.parent, self.date)

    @property
    def skyflat_dir(self) -> Path:
        return skyflat_dir(self.night_dir.parent, self.date)

    @property
    def cal_dir(self) -> Path:
        return cal_dir(self.night_dir.parent, self.date)


def make_output_dirs(root: Path, date: str) -> None:
    """Create the night key's ``_CAL/masters`` under the night directory, never the night directory or root itself
    (an unmounted root must make writes fail, not be recreated on the wrong disk)."""
    night = root / unit_date(date)
    if not night.is_dir():
        raise FileNotFoundError(f"the night directory {night} is not there")
    for directory in (cal_dir(root, date), masters_dir(root, date)):
        if directory.exists() and not within_root(directory, root):
            raise PermissionError(f"{directory} links out of the data root: refused")
    masters_dir(root, date).mkdir(parents=True, exist_ok=True)


def discover_nights(root: Path) -> tuple[list[str], list[Problem]]:
    """Night dates under ``root``, oldest first, and the date-like directories that are not dates."""
    nights, problems = [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not DATE_PATTERN.match(entry.name):
            continue
        if not within_root(entry, root):
            problems.append(Problem(entry, "symlink_outside_root", "symbolic link out of the data root: refused"))
        elif valid_date(entry.name):
            nights.append(entry.name)
        else:
            problems.append(Problem(entry, "night_dir_invalid", f"{entry.name} is not a calendar date"))
    return nights, problems


def is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def raw_listing(root: Path, date: str) -> str:
    """A digest of the night's raw directories (every name, size and mtime; no file is opened).

    Recorded with the inventory: while it is unchanged, the night's files are the ones already
    classified, so a finished night costs a directory listing and a stat per file to check, and a bad
    file is inspected (and logged) once per version, not at every check.
    """
    digest = hashlib.sha1()
    for directory in (cams_dir(root, date), skyflat_dir(root, date)):
        sub = directory.name  # the digest is the same as when the names were spelt here
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            digest.update(f"{sub}: none\n".encode())
            continue
        for entry in entries:
            if is_temporary(entry.name):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            digest.update(f"{sub}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:20]


def directories_stamp(root: Path, date: str) -> tuple:
    """(inode, mtime) of the night's directories: any file added, removed or renamed in them changes it.

    Four stats: the daemon's periodic reconcile skips a night whose stamp is the one it had when the
    night was last found finished, so a quiet archive of hundreds of nights costs almost nothing (a
    file rewritten in place is seen by the file events instead).
    """
    stamp = []
    for directory in (root / unit_date(date), cams_dir(root, date), skyflat_dir(root, date), cal_dir(root, date)):
        try:
            stat = directory.stat()
        except OSError:
            stamp.append(None)
            continue
        stamp.append((stat.st_ino, stat.st_mtime_ns))
    return tuple(stamp)


def is_temporary(name: str) -> bool:
    """rsync's ``.name.XXXXXX``, editors' and downloaders' partial files, our own atomic temporaries."""
    return name.startswith(".") or name.endswith(_TEMPORARY_SUFFIXES) or TEMP_MARKER in name


def kind_from_name(name: str) -> str | None:
    match = _TYPE_WORD.search(name)
    return match.group(1).upper() if match else None


def _gzip_screened(path: Path) -> tuple[Refusal | None, int]:
    """A gzip file screened (:func:`raw_limits.screen_gzip`): a refusal, and the bytes it really
    decompresses to (-1 when the stream stops short).

    The whole stream must be inflated to know (~0.15 s for a 4096² frame), and the daemon takes a
    night's inventory again at every readiness check and run: the answer is kept per file version
    (device, inode, size, mtime), so an unchanged file is inflated once per process.
    """
    stat = path.stat()
    version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    known = _GZIP_SIZES.get(path)
    if known is not None and known[0] == version:
        return known[1]
    result = screen_gzip(path)
    if len(_GZIP_SIZES) >= GZIP_CACHE_ENTRIES:
        _GZIP_SIZES.pop(next(iter(_GZIP_SIZES)))  # the oldest entry: a bounded cache for a long-lived daemon
    _GZIP_SIZES[path] = (version, result)
    return result


GZIP_CACHE_ENTRIES = 20_000  # a few nights of frames; ~200 bytes each
_GZIP_SIZES: dict[Path, tuple[tuple[int, int, int, int], tuple[Refusal | None, int]]] = {}


def _bytes_needed(hdu: Any) -> int:
    """Bytes the file must hold (uncompressed) for the image data to be whole."""
    info = hdu.fileinfo()
    if isinstance(hdu, fits.CompImageHDU):
        # The compressed table's span is known from its header; allow the final block's padding.
        return info["datLoc"] + max(info["datSpan"] - 2879, 1)
    shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
    return info["datLoc"] + shape[0] * shape[1] * abs(int(hdu.header["BITPIX"])) // 8


def inspect_frame(path: Path) -> RawFrame | Problem:
    """Read one raw file's header and check it is a whole 2-D image; classify it."""
    name_kind = kind_from_name(path.name)
    try:
        size = path.stat().st_size
        if size == 0:
            return Problem(path, "file_empty", "zero-byte file")
        # Before astropy: the type from the first bytes, sizes capped (formats/raw_limits.py)
        if screen_magic(path) == "gzip":
            refusal, size = _gzip_screened(path)  # the FITS file inside; -1 when the stream stops short
            if refusal is None and size < 0:
                return Problem(path, "file_truncated", "the gzip stream ends early")
        else:
            refusal = screen_plain(path)
        if refusal is not None:
            return Problem(path, refusal.event, refusal.reason)
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            index = image_hdu(hdul)
            hdu = hdul[index]
            header = hdu.header
            if header.get("NAXIS") != 2:
                return Problem(path, "frame_not_image", f"image HDU has NAXIS={header.get('NAXIS')}, need 2")
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            if shape[0] * shape[1] > MAX_PIXELS or min(shape) < 1:
                return Problem(path, "frame_too_large" if min(shape) >= 1 else "frame_not_image",
                               f"{shape[1]}x{shape[0]} pixels (at most {MAX_PIXELS})")
            needed = _bytes_needed(hdu)
    except PermissionError as error:
        return Problem(path, "file_unreadable", f"permission denied: {error.strerror}")
    except (OSError, EOFError, zlib.error) as error:
        return Problem(path, "file_unreadable", f"cannot read as FITS: {error}")
    except Exception as error:  # astropy raises various errors on garbage; none may escape
        return Problem(path, "file_unreadable", f"cannot read as FITS: {type(error).__name__}: {error}")
    if size < needed:
        return Problem(path, "file_truncated", f"{size} bytes of data, {needed} needed")
    try:  # astropy parses a card's value when it is first read: an unparsable one raises only now
        return _classify(path, name_kind, header, shape, index)
    except Exception as error:  # VerifyError, ValueError ...: none may escape (make fuzz found it)
        return Problem(path, "file_unreadable", f"unreadable header card: {type(error).__name__}: {error}")


def _classify(path: Path, name_kind: str | None, header: Any, shape: tuple[int, int], index: int) -> RawFrame | Problem:
    """The frame's kind, exposure and times from its header (the name's type word wins)."""
    header_kind = kind_from_header(header)
    kind = name_kind or header_kind
    if kind is None:
        return Problem(path, "file_type_unknown", "no type word in the name and no known IMAGETYP/ACQTYPE")
    exptime = read_exptime(header)
    if exptime is None:
        if kind != "BIAS":
            return Problem(path, "exptime_invalid", f"EXPTIME missing or invalid: {header.get('EXPTIME')!r}")
        exptime = 0.0
    return RawFrame(path=path, kind=kind, exptime=exptime, shape=shape, header_kind=header_kind, hdu=index,
                    date_obs=read_date_obs(header), ccd_temp=read_ccd_temp(header))


def within_root(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks followed, stays inside the data root (links out are refused)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _fits_files(directory: Path, inventory: NightInventory) -> list[Path]:
    paths = []
    root = inventory.night_dir.parent
    for entry in sorted(directory.iterdir()):
        if is_temporary(entry.name) or entry.is_dir():
            continue
        if entry.is_symlink() and not within_root(entry, root):
            inventory.problems.append(Problem(entry, "symlink_outside_root",
                                              "symbolic link out of the data root: refused"))
            continue
        if not is_fits_name(entry.name):
            inventory.notes.append(Problem(entry, "file_ignored", "not a FITS file name (.fits/.fit/.fts, .gz, .fz)"))
            continue
        paths.append(entry)
    return paths


def _note_headers(inventory: NightInventory) -> None:
    """DATE-OBS that does not parse, and science frames that look like copies of one another.

    Neither stops a frame (it is calibrated all the same: nothing is dropped on a guess), but both
    are worth an operator's look: duplicates are two names for one exposure (same DATE-OBS and size).
    """
    seen: dict[tuple[str, int], RawFrame] = {}
    for frame in inventory.science:
        if frame.date_obs is None:
            inventory.notes.append(Problem(frame.path, "date_obs_invalid", "DATE-OBS missing or not an ISO time"))
            continue
        key = (frame.date_obs, frame.path.stat().st_size)
        if key in seen:
            inventory.notes.append(Problem(frame.path, "frame_duplicate",
                                           f"same DATE-OBS and size as {seen[key].name}"))
        else:
            seen[key] = frame


def _place(frame: RawFrame, directory_role: str, inventory: NightInventory) -> None:
    if frame.header_kind and frame.header_kind != frame.kind:
        inventory.notes.append(
            Problem(frame.path, "type_mismatch", f"name says {frame.kind}, header says {frame.header_kind}; name wins")
        )
    allowed = {"CAMS": ("SCIENCE", "DARK", "BIAS"), "SKYFLAT": ("SKYFLAT", "DARK", "BIAS")}[directory_role]
    if frame.kind not in allowed:
        inventory.problems.append(
            Problem(frame.path, "file_misplaced", f"{frame.kind} frame in the {directory_role} directory")
        )
        return
    target = {"SCIENCE": inventory.science, "DARK": inventory.darks, "BIAS": inventory.biases,
              "SKYFLAT": inventory.flats}[frame.kind]
    target.append(frame)


inspect_known_frame: StatMemo[RawFrame | Problem] = StatMemo(inspect_frame)  # unchanged files: not read again


def take_inventory(root: Path, date: str) -> NightInventory:
    """Classify every file of one night. Missing directories are problems, not errors."""
    inventory = NightInventory(date=date, night_dir=root / unit_date(date))
    for directory, role in ((inventory.cams_dir, "CAMS"), (inventory.skyflat_dir, "SKYFLAT")):
        if not directory.is_dir():
            event = "science_dir_missing" if role == "CAMS" else "skyflat_dir_missing"
            target = inventory.problems if role == "CAMS" else inventory.notes
            target.append(Problem(directory, event, f"{directory.name} does not exist"))
            continue
        if not within_root(directory, root):
            inventory.problems.append(Problem(directory, "symlink_outside_root",
                                              "symbolic link out of the data root: refused"))
            continue
        for path in _fits_files(directory, inventory):
            if "_CAL" in fits_stem(path.name).upper():
                inventory.notes.append(Problem(path, "file_ignored", "calibrated product in a raw directory"))
                continue
            result = inspect_known_frame(path)
            if isinstance(result, Problem):
                inventory.problems.append(result)
            else:
                _place(result, role, inventory)
    _note_headers(inventory)
    if inventory.cams_dir.is_dir() and not inventory.science:
        inventory.notes.append(Problem(inventory.cams_dir, "night_empty", "no usable science frame"))
    return inventory


def problem_record(problem: Problem, root: Path) -> dict[str, Any]:
    """A problem as the ledger keeps it: the path relative to the data root when it is inside, and
    for a file the version it was found in (a new version of the file is inspected and reported anew)."""
    path = problem.path.relative_to(root) if problem.path.is_relative_to(root) else problem.path
    record: dict[str, Any] = {"path": str(path), "event": problem.event, "reason": problem.reason}
    try:
        if problem.path.is_file():
            record["raw"] = fingerprint(problem.path)
    except OSError:
        pass
    return record
