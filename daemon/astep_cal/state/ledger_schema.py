"""The ledger's files checked on load: well-formed JSON is not yet a ledger.

A ledger file may be damaged, hand-edited, or planted by whoever can write the state directory. The
readers behind :class:`~astep_cal.state.ledger.Ledger` index into it freely (``totals["science"]``,
``masters["darks"]`` sorted as numbers, a night's date joined to a path), so a wrong type anywhere
would raise from deep inside the daemon's constructor — a restart loop — and an index key like
``"../../../victim"`` would name a file outside the state directory. So every file is checked here
first, against the layout it must have (the containers, the fields the readers use, the keys that
become paths); whatever fails is not a ledger and is treated like a corrupt file: kept aside and
rebuilt. Unknown extra fields are allowed (older and newer versions add some), but nothing may nest
deeper than :data:`MAX_DEPTH` (the serialiser and the checks themselves recurse).

No numpy, no astropy: ``status`` imports it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astep_cal.formats.names import valid_unit

MAX_DEPTH = 24  # deepest nesting of a real ledger file is 6
MAX_BYTES = 256 << 20  # a night of 1000 frames is ~1.5 MB; the index of 1000 nights ~0.5 MB


class LedgerInvalid(ValueError):
    """A ledger file that is not a ledger (its reason says where)."""


def is_night_key(key: object) -> bool:
    """A night's key (it becomes ``nights/<key>.json``): a real calendar date as YYYY-MM-DD, or
    ``YYYY-MM-DD-CAMERA`` for a camera other than the default (:func:`names.valid_unit`: capitals and
    digits after the date, so never a path)."""
    return valid_unit(key)


def is_file_name(key: object) -> bool:
    """A raw frame's name: one path component (it is joined to directories)."""
    return isinstance(key, str) and key not in ("", ".", "..") and "/" not in key and "\0" not in key


def is_relative_path(value: object) -> bool:
    """A path under the data root (a master's file): relative, no ``..``."""
    return (isinstance(value, str) and value != "" and "\0" not in value and not value.startswith("/")
            and ".." not in value.split("/"))


def is_number_key(key: object) -> bool:
    """An exposure time as a key (``"60"``): the readers sort them as numbers."""
    try:
        return isinstance(key, str) and float(key) == float(key) and abs(float(key)) != float("inf")
    except ValueError:
        return False


# --- the specification language: a type, a check, or a record/map/list of them ----------------------

Spec = Any  # a type, a tuple of types, a Check, a Record, a MapOf or a ListOf
NUM = (int, float)
ANY = object


@dataclass(frozen=True)
class Check:
    """A value that must pass ``test`` (described by ``what``)."""

    test: Callable[[Any], bool]
    what: str


@dataclass(frozen=True)
class Record:
    """A JSON object with these known fields (others allowed); ``required`` ones must be there."""

    fields: dict[str, Spec]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class MapOf:
    """A JSON object of any keys passing ``key``, every value matching ``value``."""

    value: Spec
    key: Check = field(default_factory=lambda: Check(lambda k: isinstance(k, str), "a string"))


@dataclass(frozen=True)
class ListOf:
    item: Spec


def _type_ok(value: Any, expected: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a number
        return bool in expected or object in expected
    return isinstance(value, expected)


def check(value: Any, spec: Spec, where: str) -> None:
    """Raise :class:`LedgerInvalid` naming the first place where ``value`` does not match ``spec``."""
    if isinstance(spec, tuple) and not all(isinstance(option, type) for option in spec):
        _check_union(value, spec, where)
    elif isinstance(spec, Check):
        if not spec.test(value):
            raise LedgerInvalid(f"{where}: expected {spec.what}, got {_short(value)}")
    elif isinstance(spec, Record):
        if not isinstance(value, dict):
            raise LedgerInvalid(f"{where}: expected an object, got {_short(value)}")
        for name in spec.required:
            if name not in value:
                raise LedgerInvalid(f"{where}: {name} missing")
        for name, sub in spec.fields.items():
            if name in value:
                check(value[name], sub, f"{where}.{name}")
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise LedgerInvalid(f"{where}: expected an object, got {_short(value)}")
        for key, item in value.items():
            if not spec.key.test(key):
                raise LedgerInvalid(f"{where}: key {_short(key)} is not {spec.key.what}")
            check(item, spec.value, f"{where}[{key!r}]")
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise LedgerInvalid(f"{where}: expected a list, got {_short(value)}")
        for index, item in enumerate(value):
            check(item, spec.item, f"{where}[{index}]")
    else:
        expected = spec if isinstance(spec, tuple) else (spec,)
        if not _type_ok(value, expected) or (isinstance(value, float) and value != value):
            raise LedgerInvalid(f"{where}: expected {'/'.join(t.__name__ for t in expected)}, got {_short(value)}")


def _check_union(value: Any, spec: tuple, where: str) -> None:
    """A tuple mixing specs and types (``(ListOf(int), NoneType)``): the value matches one of them."""
    errors = []
    for option in spec:
        try:
            check(value, option if not isinstance(option, type) else (option,), where)
            return
        except LedgerInvalid as error:
            errors.append(str(error))
    raise LedgerInvalid(errors[0])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the layout (state/entries.py describes the records) -------------------------------------------

DATE = Check(is_night_key, "a night key (YYYY-MM-DD or YYYY-MM-DD-CAMERA)")
FILE_NAME = Check(is_file_name, "a file name")
REL_PATH = Check(is_relative_path, "a relative path without ..")
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
SCALAR = (int, float, str, bool, type(None))

PROBLEM = Record({"path": str, "event": str, "reason": str, "raw": MapOf(int)})
FINGERPRINT = Record({"size": int, "mtime_ns": int}, ("size", "mtime_ns"))
STEP = {"status": str, "error": str, "duration_s": NUM}
QUALITY = Record({**STEP, **{key: OPT_NUM for key in ("fwhm_px", "fwhm_arcsec", "sky_noise_e", "n_stars", "ellipticity",
                                                     "masked_fraction", "pixel_scale_arcsec", "n_fwhm_stars")}})
CALIBRATE = Record({**STEP, "output": FILE_NAME, "config": str, "software": str, "dark": MapOf(ANY),
                    "flat": Record({"night": DATE, "borrowed": bool}), "gain": OPT_NUM, "n_cosmic": int,
                    "n_saturated": int, "sky_e": OPT_NUM, "date_obs": OPT_STR, "quality": QUALITY})
SOLVE = Record({**STEP, "tries": int, "retry_after": NUM, "hinted": bool, "n_matched": int,
                "residual_arcsec": OPT_NUM, "pixel_scale_arcsec": OPT_NUM})
# a frame's and a night's health records (engine/frame_health, engine/night_health): the figures the
# night's medians, the index row (alerts.compact) and the alerts read
FRAME_HEALTH = Record({**STEP, **{key: OPT_NUM for key in ("zp", "zp_scatter", "zp_stars", "sky_mag_arcsec2",
                                                          "moon_alt_deg", "moon_illumination")}})
ALERT = Record({"kind": str}, ("kind",))
FLAT_CHANGE = Record({"against": OPT_STR, "large_scale_std": OPT_NUM, "n_structures": OPT_NUM,
                      "structures": ListOf(Record({"area_px": NUM, "depth": NUM}))})
NIGHT_HEALTH = Record({**STEP, **{key: OPT_NUM for key in (
    "throughput", "zp_median", "n_zp", "zp_frame_scatter", "sky_mag_arcsec2", "moon_alt_max_deg", "moon_illumination",
    "fwhm_arcsec", "ellipticity", "bias_adu", "n_hot", "dark_e_per_s", "gain", "ccd_temp_c")},
    "flat_change": (FLAT_CHANGE, type(None)), "alerts": ListOf((str, ALERT))})
FRAME = Record({"raw": FINGERPRINT, "calibrate": CALIBRATE, "catalogue": Record({**STEP, "file": FILE_NAME}),
                "astrometry": SOLVE, "health": FRAME_HEALTH})
MASTER_FILE = Record({"file": REL_PATH, "inputs": ListOf(str), "night": DATE, "borrowed": bool})
MASTERS = Record({"darks": MapOf(MASTER_FILE, Check(is_number_key, "an exposure time")), "flat": MASTER_FILE,
                  "bias": MASTER_FILE, "mask": MASTER_FILE, "problems": ListOf(PROBLEM), "shape": ListOf(int),
                  "complete": bool})
NIGHT = Record({"frames": MapOf(FRAME, FILE_NAME), "masters": MASTERS, "problems": ListOf(PROBLEM),
                "inventory": MapOf(int), "listing": str, "stuck": Record({"reason": str}), "photometry": MapOf(ANY),
                "health": (NIGHT_HEALTH, type(None))},
               ("frames",))
# a night's health as the index row keeps it (alerts.compact): read by status (alert lines), trends, alerts
HEALTH_KEYS = ("throughput", "zp_median", "n_zp", "sky_mag_arcsec2", "moon_alt_max_deg", "fwhm_arcsec", "ellipticity",
               "bias_adu", "n_hot", "dark_e_per_s", "gain", "ccd_temp_c", "flat_structures", "flat_large_scale_std")
HEALTH = Record({**{key: OPT_NUM for key in HEALTH_KEYS}, "flat_against": OPT_STR, "alerts": ListOf(str),
                 "alert_details": ListOf(Record({"kind": str}, ("kind",)))})  # alerts' kinds and figures
TOTALS = Record({"science": int, "calibrated": int, "cal_failed": int, "blocked": int, "solved": int,
                 "solve_failed": int,
                 "failed_solve_tries": MapOf(int, Check(lambda k: isinstance(k, str) and k.isdigit(), "a try count")), "next_retry": OPT_NUM,
                 "fwhm_arcsec": OPT_NUM, "darks": ListOf(Check(is_number_key, "an exposure time")),
                 "flat": OPT_STR, "problems": int, "stuck": OPT_STR, "health": (HEALTH, type(None))},
                ("science", "calibrated", "cal_failed", "blocked", "solved", "solve_failed", "failed_solve_tries",
                 "next_retry", "fwhm_arcsec", "darks", "flat", "problems"))
ROW = Record({"totals": TOTALS, "file": (ListOf(int), type(None))}, ("totals",))
INDEX = {1: Record({"nights": MapOf(NIGHT, DATE), "root_problems": ListOf(PROBLEM)}, ("nights",)),
         2: Record({"nights": MapOf(ROW, DATE), "root_problems": ListOf(PROBLEM), "software": str, "updated": str},
                   ("nights",))}


# --- reading --------------------------------------------------------------------------------------

def depth(value: Any) -> int:
    """How deeply ``value`` nests (iteratively: a hostile file must not exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_document(path: Path) -> Any:
    """A ledger file's JSON, refusing what no ledger is: not a regular file (a FIFO would block the
    reader for ever), larger than :data:`MAX_BYTES`, nested deeper than :data:`MAX_DEPTH`.

    Raises FileNotFoundError, OSError, or ValueError (:class:`LedgerInvalid`, JSON errors)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise LedgerInvalid(f"{path.name} is not a regular file")
        if info.st_size > MAX_BYTES:
            raise LedgerInvalid(f"{path.name} is {info.st_size} bytes (more than {MAX_BYTES})")
        payload = handle.read(MAX_BYTES + 1)
    try:
        document = json.loads(payload)
    except RecursionError:
        raise LedgerInvalid(f"{path.name} nests too deeply") from None
    except UnicodeDecodeError as error:
        raise LedgerInvalid(f"{path.name}: {error}") from None
    if depth(document) > MAX_DEPTH:
        raise LedgerInvalid(f"{path.name} nests deeper than {MAX_DEPTH}")
    return document


def check_index(document: Any) -> int:
    """The index's schema (1 or 2) once it matches that schema's layout; raises :class:`LedgerInvalid`."""
    schema = document.get("schema") if isinstance(document, dict) else None
    if not isinstance(schema, int) or isinstance(schema, bool) or schema not in INDEX:  # {} is unhashable
        raise LedgerInvalid(f"unknown ledger schema {_short(schema)}")
    check(document, INDEX[schema], "ledger")
    return schema


def check_night(document: Any, date: str) -> dict[str, Any]:
    """A night file's record once it matches the layout; raises :class:`LedgerInvalid`."""
    check(document, NIGHT, date)
    return document
