"""Where things live and what they are called, defined once: the night directories, the CAL and
master file names, and file names as FITS header values.

Layout of a data root (docs/pages/data-products.md, "The data root")::

    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS/          *_SCIENCE*.fits, *_DARK*.fits, *_BIAS*.fits
    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS_SKYFLAT/  *_SKYFLAT*.fits, *_DARK*.fits
    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS_CAL/      *_CAL.fits, summary.json/png (astep-cal writes only here)
    ROOT/YYYY-MM-DD/YYYY-MM-DD-CAMS_CAL/masters/

The camera suffix is a parameter: a night key ``YYYY-MM-DD-CAMR`` (:func:`night_unit`) names the same
directories with ``-CAMR`` for ASTEP+'s red camera; the plain date is the default camera, ``CAMS``.

No numpy or astropy: the light commands (status, rescan, retry) and the watcher import it.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from urllib.parse import quote, unquote

FITS_SUFFIXES = tuple(f"{stem}{packed}" for stem in (".fits", ".fit", ".fts") for packed in ("", ".gz", ".fz"))

MASTER_BIAS = "master_bias.fits"
MASTER_FLAT = "master_flat.fits"
PIXEL_MASK = "bad_pixel_mask.fits"
SUMMARY_JSON = "summary.json"
SUMMARY_PNG = "summary.png"
FLAT_RATIO = "health/flat_ratio.fits"  # under the _CAL directory: the flat-ratio thumbnail (summary PNG)


DEFAULT_CAMERA = "CAMS"  # ASTEP 400's one camera; ASTEP+ writes CAMB (blue) and CAMR (red)
BLUE_CAMERA, RED_CAMERA = "CAMB", "CAMR"  # the pair whose transit depths are compared (science/depth_ratio.py)
AUTO_CAMERAS = "auto"  # the ``cameras`` setting that takes every DATE-<SUFFIX> science directory of a night
CAMERA_NAME = re.compile(r"^[A-Z0-9]+$")  # a camera suffix: no '_' (that starts _SKYFLAT, _CAL), no '/', no '.'
_CAMERA = re.compile(r"^(\d{4}-\d{2}-\d{2})-([A-Z0-9]+)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def night_unit(date: str, camera: str = DEFAULT_CAMERA) -> str:
    """The key of one camera's night (the unit of work): the date for the default camera, so single-camera
    data roots and ledgers are unchanged, else ``DATE-CAMERA`` (``2024-09-06-CAMR``)."""
    return date if camera == DEFAULT_CAMERA else f"{date}-{camera}"


def split_unit(night: str) -> tuple[str, str]:
    """``(date, camera)`` of a night key (:func:`night_unit`)."""
    match = _CAMERA.match(night)
    return (match.group(1), match.group(2)) if match else (night, DEFAULT_CAMERA)


def valid_date(name: str) -> bool:
    """``YYYY-MM-DD`` and a real calendar date."""
    if not isinstance(name, str) or not _DATE.match(name):
        return False
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def valid_unit(key: object) -> bool:
    """A night key: a valid date, or ``DATE-CAMERA`` for a camera other than the default (the default
    camera's night is only ever the plain date, so one night never has two keys). Keys become file
    names (``nights/<key>.json``) and directory names: nothing else passes."""
    if not isinstance(key, str):
        return False
    date, camera = split_unit(key)
    return valid_date(date) and (key == date or (camera != DEFAULT_CAMERA and bool(CAMERA_NAME.match(camera))))


def unit_date(night: str) -> str:
    """The date of a night key: the name of the night's directory under the data root."""
    return split_unit(night)[0]


def _camera_dir(root: Path, night: str, what: str = "") -> Path:
    date, camera = split_unit(night)
    return root / date / f"{date}-{camera}{what}"


def cams_dir(root: Path, date: str) -> Path:
    """The raw science (and dark, bias) directory of a night key: ``DATE/DATE-CAMS`` (``DATE-CAMR``...)."""
    return _camera_dir(root, date)


def skyflat_dir(root: Path, date: str) -> Path:
    return _camera_dir(root, date, "_SKYFLAT")


def cal_dir(root: Path, date: str) -> Path:
    return _camera_dir(root, date, "_CAL")


def masters_dir(root: Path, date: str) -> Path:
    return cal_dir(root, date) / "masters"


def unit_of_cal_file(cal_path: Path) -> str:
    """The night key a CAL file belongs to, from its directory ``DATE/DATE-CAMERA_CAL/``."""
    date = cal_path.parents[1].name
    return night_unit(date, cal_path.parent.name.removeprefix(f"{date}-").removesuffix("_CAL"))


def fits_stem(name: str) -> str:
    """The name without its FITS suffix: ``a_SCIENCE.fits.fz`` -> ``a_SCIENCE``."""
    lower = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def cal_name(raw_name: str) -> str:
    """``2026-07-01_20.00.00_SCIENCE.fits`` -> ``2026-07-01_20.00.00_SCIENCE_CAL.fits``.

    Compressed raw frames (``.fits.gz``, ``.fits.fz``) give the same, uncompressed, CAL name.
    """
    return f"{fits_stem(raw_name)}_CAL.fits"


def cat_path(cal_path: Path) -> Path:
    """The source catalogue beside a CAL file: ``..._SCIENCE_CAT.fits`` (docs/pages/data-products.md)."""
    return cal_path.with_name(cal_path.name.removesuffix("_CAL.fits") + "_CAT.fits")


def dark_file_name(exptime: float) -> str:
    return f"master_dark_{exptime:g}s.fits"


_HEADER_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


def header_name(name: str) -> str:
    """A file name as a FITS header value, which must be printable ASCII: any other character (and
    ``%``) is percent-encoded as UTF-8 (RFC 3986), so the exact name comes back with
    :func:`name_from_header` (ledger recovery maps CAL files back to their raw frames by it)."""
    return quote(name, safe=_HEADER_SAFE, errors="surrogateescape")


def name_from_header(value: str) -> str:
    return unquote(value, errors="surrogateescape")
