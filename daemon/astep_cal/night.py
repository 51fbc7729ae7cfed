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

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits

from .fitsio import TEMP_MARKER

KINDS = ("SCIENCE", "DARK", "BIAS", "SKYFLAT")
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TYPE_WORD = re.compile(r"_(SCIENCE|DARK|BIAS|SKYFLAT)(?![A-Z])", re.IGNORECASE)
_TEMPORARY_SUFFIXES = (".part", ".tmp", ".swp", ".partial", "~")
_HEADER_TYPES = {
    "LIGHT": "SCIENCE",
    "LIGHT FRAME": "SCIENCE",
    "SCIENCE": "SCIENCE",
    "OBJECT": "SCIENCE",
    "DARK": "DARK",
    "DARK FRAME": "DARK",
    "BIAS": "BIAS",
    "BIAS FRAME": "BIAS",
    "ZERO": "BIAS",
    "FLAT": "SKYFLAT",
    "FLAT FIELD": "SKYFLAT",
    "FLAT FRAME": "SKYFLAT",
    "SKYFLAT": "SKYFLAT",
    "SKY FLAT": "SKYFLAT",
}


@dataclass(frozen=True)
class RawFrame:
    """One usable raw frame: what the pipeline needs to know without reading its pixels."""

    path: Path
    kind: str
    exptime: float
    shape: tuple[int, int]
    header_kind: str | None  # the type the header claims, when it has one

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
    """Every raw frame of one night, by role, plus the problems found while reading them."""

    date: str
    night_dir: Path
    science: list[RawFrame] = field(default_factory=list)
    darks: list[RawFrame] = field(default_factory=list)  # from both raw directories
    biases: list[RawFrame] = field(default_factory=list)
    flats: list[RawFrame] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # worth a log line, not a failure

    @property
    def cams_dir(self) -> Path:
        return self.night_dir / f"{self.date}-CAMS"

    @property
    def skyflat_dir(self) -> Path:
        return self.night_dir / f"{self.date}-CAMS_SKYFLAT"

    @property
    def cal_dir(self) -> Path:
        return cal_dir(self.night_dir.parent, self.date)


def cal_dir(root: Path, date: str) -> Path:
    return root / date / f"{date}-CAMS_CAL"


def masters_dir(root: Path, date: str) -> Path:
    return cal_dir(root, date) / "masters"


def valid_date(name: str) -> bool:
    if not DATE_PATTERN.match(name):
        return False
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def discover_nights(root: Path) -> tuple[list[str], list[Problem]]:
    """Night dates under ``root``, oldest first, and the date-like directories that are not dates."""
    nights, problems = [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not DATE_PATTERN.match(entry.name):
            continue
        if valid_date(entry.name):
            nights.append(entry.name)
        else:
            problems.append(Problem(entry, "night_dir_invalid", f"{entry.name} is not a calendar date"))
    return nights, problems


def is_temporary(name: str) -> bool:
    """rsync's ``.name.XXXXXX``, editors' and downloaders' partial files, our own atomic temporaries."""
    return name.startswith(".") or name.endswith(_TEMPORARY_SUFFIXES) or TEMP_MARKER in name


def kind_from_name(name: str) -> str | None:
    match = _TYPE_WORD.search(name)
    return match.group(1).upper() if match else None


def kind_from_header(header: fits.Header) -> str | None:
    for key in ("ACQTYPE", "IMAGETYP"):
        value = header.get(key)
        if isinstance(value, str) and value.strip().upper() in _HEADER_TYPES:
            return _HEADER_TYPES[value.strip().upper()]
    return None


def read_exptime(header: fits.Header) -> float | None:
    """EXPTIME (or EXPOSURE) as a non-negative finite float, else None."""
    for key in ("EXPTIME", "EXPOSURE"):
        if key in header:
            try:
                value = float(header[key])
            except (TypeError, ValueError):
                return None
            return value if value >= 0 and value == value and value != float("inf") else None
    return None


def inspect_frame(path: Path) -> RawFrame | Problem:
    """Read one raw file's header and check it is a whole 2-D image; classify it."""
    name_kind = kind_from_name(path.name)
    try:
        size = path.stat().st_size
        if size == 0:
            return Problem(path, "file_empty", "zero-byte file")
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdu = hdul[0]
            header = hdu.header
            info = hdu.fileinfo()
    except OSError as error:
        return Problem(path, "file_unreadable", f"cannot read as FITS: {error}")
    except Exception as error:  # astropy raises various errors on garbage; none may escape
        return Problem(path, "file_unreadable", f"cannot read as FITS: {type(error).__name__}: {error}")
    if header.get("NAXIS") != 2:
        return Problem(path, "frame_not_image", f"primary HDU has NAXIS={header.get('NAXIS')}, need 2")
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    needed = info["datLoc"] + shape[0] * shape[1] * abs(int(header["BITPIX"])) // 8
    if size < needed:
        return Problem(path, "file_truncated", f"{size} bytes on disk, {needed} needed")
    header_kind = kind_from_header(header)
    kind = name_kind or header_kind
    if kind is None:
        return Problem(path, "file_type_unknown", "no type word in the name and no known IMAGETYP/ACQTYPE")
    exptime = read_exptime(header)
    if exptime is None:
        if kind != "BIAS":
            return Problem(path, "exptime_invalid", f"EXPTIME missing or invalid: {header.get('EXPTIME')!r}")
        exptime = 0.0
    return RawFrame(path=path, kind=kind, exptime=exptime, shape=shape, header_kind=header_kind)


def _fits_files(directory: Path, inventory: NightInventory) -> list[Path]:
    paths = []
    for entry in sorted(directory.iterdir()):
        if is_temporary(entry.name) or entry.is_dir():
            continue
        if not entry.name.lower().endswith(".fits"):
            inventory.notes.append(Problem(entry, "file_ignored", "not a .fits file"))
            continue
        paths.append(entry)
    return paths


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


def take_inventory(root: Path, date: str) -> NightInventory:
    """Classify every file of one night. Missing directories are problems, not errors."""
    inventory = NightInventory(date=date, night_dir=root / date)
    for directory, role in ((inventory.cams_dir, "CAMS"), (inventory.skyflat_dir, "SKYFLAT")):
        if not directory.is_dir():
            event = "science_dir_missing" if role == "CAMS" else "skyflat_dir_missing"
            target = inventory.problems if role == "CAMS" else inventory.notes
            target.append(Problem(directory, event, f"{directory.name} does not exist"))
            continue
        for path in _fits_files(directory, inventory):
            if "_CAL" in path.stem.upper():
                inventory.notes.append(Problem(path, "file_ignored", "calibrated product in a raw directory"))
                continue
            result = inspect_frame(path)
            if isinstance(result, Problem):
                inventory.problems.append(result)
            else:
                _place(result, role, inventory)
    if inventory.cams_dir.is_dir() and not inventory.science:
        inventory.notes.append(Problem(inventory.cams_dir, "night_empty", "no usable science frame"))
    return inventory
