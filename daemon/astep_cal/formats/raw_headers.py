"""What astep-cal reads from a raw frame's header: frame type, exposure, time, CCD temperature, and where
the image is. Each reader returns None for a value that is absent or malformed (never raises): the
inventory turns a None it needs into a per-frame problem.
"""

from __future__ import annotations

import math
import re

from astropy.io import fits

from astep_cal.formats.header_profile import DEFAULT_PROFILE, read_frame_header

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
            return value if value >= 0 and math.isfinite(value) else None
    return None


def read_date_obs(header: fits.Header) -> str | None:
    """The exposure start as an ISO date-time (the summary's time axis), through the built-in header profile
    (``BEGINOBS``, else ``DATE-OBS``); None when absent or garbage."""
    return read_frame_header(header, DEFAULT_PROFILE).exposure_start


def read_ccd_temp(header: fits.Header) -> float | None:
    try:
        value = float(header["CCD-TEMP"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def image_hdu(hdul: fits.HDUList) -> int:
    """Index of the image: the primary HDU, or the first tile-compressed one (fpack puts it in HDU 1)."""
    if hdul[0].header.get("NAXIS", 0) == 0 and len(hdul) > 1 and isinstance(hdul[1], fits.CompImageHDU):
        return 1
    return 0


# Keys of a WCS (with SIP): a solve-field solution replaces them all (``wcs_cards``).
WCS_KEY = re.compile(
    r"^(WCSAXES|CRPIX\d|CRVAL\d|CTYPE\d|CUNIT\d|CDELT\d|CD\d_\d|PC\d_\d|CROTA\d|LONPOLE|LATPOLE|"
    r"RADESYS|EQUINOX|WCSNAME|MJDREF|DATEREF|(A|B|AP|BP)_(ORDER|DMAX|\d_\d))$"
)
_CELESTIAL_TYPES = ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT")


def pseudo_wcs_keys(header: fits.Header) -> list[str]:
    """The WCS keys of a header whose axes are not on the sky (a camera's ``CTYPE1 = 'PIXEL'``,
    ``CRVAL1 = 512`` ...): a CAL file must not carry them, they would read as a (wrong) solution.
    A celestial WCS (both ``CTYPEn`` on the sky) is kept: empty list."""
    keys = [key for key in header.keys() if WCS_KEY.match(key)]
    types = [str(header.get(f"CTYPE{axis}", "")).upper() for axis in (1, 2)]
    if keys and all(t.startswith(_CELESTIAL_TYPES) for t in types):
        return []
    return keys
