"""The cameras of a night: which units of work (night keys, :func:`names.night_unit`) a night directory holds.

ASTEP 400 has one camera (``DATE-CAMS``); ASTEP+ writes a blue and a red channel (``DATE-CAMB``,
``DATE-CAMR``), each with its own sky flats (``DATE-CAMB_SKYFLAT``...). Each camera of a night is its own
unit of work — its masters, frames, outputs (``DATE-CAMB_CAL``), ledger record, status row and summary —
keyed ``DATE`` for the default camera (so single-camera data roots and ledgers are unchanged) and
``DATE-CAMB`` otherwise.

The ``cameras`` setting says which: a list of suffixes (``["CAMS"]`` by default, ``["CAMB", "CAMR"]`` for
ASTEP+), or ``"auto"``: every ``DATE-<SUFFIX>`` directory of the night. With a list, a night gives a unit
for each configured camera whose raw directory (science or sky flats) is there, and when none is, the
first camera's unit — whose inventory then reports ``science_dir_missing``, as a single-camera night
without its ``-CAMS`` directory always has.

No numpy or astropy: the watcher and the light commands import it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from astep_cal.formats.names import (
    AUTO_CAMERAS,
    CAMERA_NAME,
    DEFAULT_CAMERA,
    cams_dir,
    night_unit,
    skyflat_dir,
    unit_date,
)
from astep_cal.formats.raw_night import Problem, discover_nights


def camera_dirs(root: Path, date: str) -> list[str]:
    """The camera suffixes of a night directory's ``DATE-<SUFFIX>`` science directories, sorted."""
    prefix = f"{date}-"
    try:
        entries = os.listdir(root / date)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    found = [name[len(prefix):] for name in entries if name.startswith(prefix)]
    return sorted(c for c in found if CAMERA_NAME.match(c) and (root / date / f"{prefix}{c}").is_dir())


def output_units(root: Path, date: str) -> list[str]:
    """The night keys of a night directory's ``DATE-<SUFFIX>_CAL`` output directories (ledger recovery:
    whatever cameras were configured when they were written)."""
    try:
        entries = os.listdir(root / date)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    prefix = f"{date}-"
    found = [name[len(prefix):-len("_CAL")] for name in entries if name.startswith(prefix) and name.endswith("_CAL")]
    return [night_unit(date, c) for c in sorted(found) if CAMERA_NAME.match(c)]


def night_units(root: Path, date: str, cameras: Sequence[str] = (DEFAULT_CAMERA,)) -> list[str]:
    """The night keys of one date directory, in the configured order (``auto``: sorted suffixes)."""
    if tuple(cameras) == (AUTO_CAMERAS,):
        found = camera_dirs(root, date)
        return [night_unit(date, c) for c in found] or [night_unit(date, DEFAULT_CAMERA)]
    units = [night_unit(date, c) for c in cameras]
    present = [u for u in units if cams_dir(root, u).is_dir() or skyflat_dir(root, u).is_dir()]
    return present or units[:1]


def discover_units(root: Path, cameras: Sequence[str] = (DEFAULT_CAMERA,)) -> tuple[list[str], list[Problem]]:
    """Every night key under ``root``, oldest date first, and the date-like directories refused."""
    dates, problems = discover_nights(root)
    return [unit for date in dates for unit in night_units(root, date, cameras)], problems


def units_of_dates(root: Path, nights: Sequence[str], cameras: Sequence[str]) -> list[str]:
    """Night keys for the nights a user or an event named: a date means each of its cameras, a key itself."""
    units: list[str] = []
    for night in nights:
        for unit in (night_units(root, night, cameras) if night == unit_date(night) else [night]):
            if unit not in units:
                units.append(unit)
    return units
