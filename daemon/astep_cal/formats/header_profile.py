"""One documented mapping from raw header keywords to what astep-cal needs of a science frame: the telescope
pointing (the plate solve's hint), the science target (its light curve), the exposure start and the filter.

Built in, tried in this order (``[headers]`` in the configuration puts more keywords in front):

===================  ===========================================  ============================================
what                 keywords                                     value
===================  ===========================================  ============================================
target coordinates   ``SCIDCRD`` (ASTEP)                          ``'RA-DEC'``, degrees joined by a hyphen; the
                                                                  Dec may be negative: ``'148.37737--45.71622'``
target name          ``SCINAME`` (ASTEP)                          text (a TIC/TOI identifier)
object name          ``OBJECT``                                   text; a target only with a position
pointing             ``RA``/``DEC``, ``OBJCTRA``/``OBJCTDEC``     degrees as numbers, or sexagesimal text
                                                                  (RA in hours, Dec in degrees)
exposure start       ``BEGINOBS`` (ASTEP), ``DATE-OBS``           ISO date-time, UTC
filter               ``INSTFILT`` (ASTEP), ``FILTER``             text
===================  ===========================================  ============================================

The frame's *target* is the target name with the target coordinates, else (no coordinates) with the
pointing; without a target name, the object name with the target coordinates or the pointing. The
*pointing* is the first sane pointing pair, else the target coordinates (ASTEP points at its target).

Reading never raises: a value present but malformed is a :class:`HeaderProblem` (keyword, value, why),
which the calibration step logs (``header_value_invalid``) and records in the frame's ledger entry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

from astropy.io import fits

from astep_cal.formats import keywords as kw

BUILT_IN = {
    "target_coordinates": ("SCIDCRD",),
    "target_name": ("SCINAME",),
    "object_name": ("OBJECT",),
    "pointing": ("RA/DEC", "OBJCTRA/OBJCTDEC"),
    "exposure_start": ("BEGINOBS", "DATE-OBS"),
    "filter": ("INSTFILT", "FILTER"),
}


@dataclass(frozen=True)
class HeaderProfile:
    """The keywords of each item, in the order they are tried."""

    target_coordinates: tuple[str, ...] = BUILT_IN["target_coordinates"]
    target_name: tuple[str, ...] = BUILT_IN["target_name"]
    object_name: tuple[str, ...] = BUILT_IN["object_name"]
    pointing: tuple[str, ...] = BUILT_IN["pointing"]
    exposure_start: tuple[str, ...] = BUILT_IN["exposure_start"]
    filter: tuple[str, ...] = BUILT_IN["filter"]

    @classmethod
    def configured(cls, settings: Any) -> "HeaderProfile":
        """The built-in profile extended by a :class:`~astep_cal.support.config.HeaderSettings`: the
        configured keywords first, then the built-in ones not already listed."""
        if settings is None:
            return cls()
        return cls(**{name: tuple(dict.fromkeys(tuple(getattr(settings, name)) + BUILT_IN[name]))
                      for name in BUILT_IN})


DEFAULT_PROFILE = HeaderProfile()


@dataclass(frozen=True)
class HeaderProblem:
    keyword: str
    value: str
    reason: str

    def record(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FrameTarget:
    """The science target a frame's header names (degrees, ICRS) and where each part came from."""

    name: str
    ra: float
    dec: float
    source: str  # e.g. "SCINAME+SCIDCRD", "OBJECT+RA/DEC"


@dataclass(frozen=True)
class FrameHeader:
    """What the profile read from one header."""

    pointing: tuple[float, float] | None = None
    pointing_source: str | None = None
    target: FrameTarget | None = None
    exposure_start: str | None = None
    filter: str | None = None
    problems: tuple[HeaderProblem, ...] = ()


# --- single values -----------------------------------------------------------------------------------

_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_RA_DEC = re.compile(rf"^\s*\+?({_NUMBER})\s*-\s*([+-]?(?:{_NUMBER}))\s*$")


def parse_ra_dec(text: Any) -> tuple[float, float] | None:
    """``'RA-DEC'`` in degrees (ASTEP's ``SCIDCRD``): ``'148.37737--45.71622'`` is (148.37737, -45.71622),
    ``'10.5-20.25'`` is (10.5, 20.25). None when it is not two numbers joined by a hyphen, or is off the sky."""
    if not isinstance(text, str):
        return None
    match = _RA_DEC.match(text)
    if match is None:
        return None
    ra, dec = float(match.group(1)), float(match.group(2))
    return (ra, dec) if _on_sky(ra, dec) else None


def _on_sky(ra: float, dec: float) -> bool:
    return math.isfinite(ra) and math.isfinite(dec) and 0 <= ra < 360 and -90 <= dec <= 90


def _angle(value: Any, hours: bool) -> float | None:
    """Degrees from a number (degrees) or text: a decimal number is degrees, sexagesimal text
    (``'10 02 00'``, ``'10:02:00'``) is hours for an RA and degrees for a Dec."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.split(r"[\s:hdms°'\"]+", text.strip("hms°'\" "))
    try:
        numbers = [float(p) for p in parts if p]
    except ValueError:
        return None
    if not 1 <= len(numbers) <= 3 or any(n < 0 for n in numbers[1:]):
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    magnitude = abs(numbers[0]) + sum(n / 60 ** i for i, n in enumerate(numbers[1:], start=1))
    degrees = sign * magnitude * (15.0 if hours else 1.0)
    return degrees if math.isfinite(degrees) else None


def _iso_time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        dt.datetime.fromisoformat(value.strip().rstrip("Z"))
    except ValueError:
        return None
    return value.strip()


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# --- the frame -----------------------------------------------------------------------------------------

class _Reader:
    """Reads items off one header, collecting the problems of values present but malformed."""

    def __init__(self, header: fits.Header):
        self.header = header
        self.problems: list[HeaderProblem] = []

    def first(self, keys: tuple[str, ...], parse: Any, what: str) -> tuple[Any, str | None]:
        for key in keys:
            if key not in self.header:
                continue
            raw = self.header[key]
            value = parse(raw)
            if value is not None:
                return value, key
            if not (isinstance(raw, str) and not raw.strip()):  # an empty card is absent, not wrong
                self.problems.append(HeaderProblem(key, str(raw)[:70], f"not {what}"))
        return None, None

    def pointing(self, pairs: tuple[str, ...]) -> tuple[tuple[float, float] | None, str | None]:
        for pair in pairs:
            ra_key, dec_key = (part.strip() for part in pair.split("/"))
            if ra_key not in self.header and dec_key not in self.header:
                continue
            ra, dec = _angle(self.header.get(ra_key), hours=True), _angle(self.header.get(dec_key), hours=False)
            if ra is not None and dec is not None and _on_sky(ra, dec):
                return (ra, dec), pair
            shown = f"{self.header.get(ra_key)!s} / {self.header.get(dec_key)!s}"
            self.problems.append(HeaderProblem(pair, shown[:70], "not an RA/Dec on the sky"))
        return None, None


def read_frame_header(header: fits.Header, profile: HeaderProfile = DEFAULT_PROFILE) -> FrameHeader:
    """Pointing, target, exposure start and filter of a raw science frame's header (see the module)."""
    reader = _Reader(header)
    coordinates, coordinates_key = reader.first(profile.target_coordinates, parse_ra_dec,
                                                "'RA-DEC' in degrees on the sky")
    pointing, pointing_key = reader.pointing(profile.pointing)
    name, name_key = reader.first(profile.target_name, _text, "a name")
    if name is None:
        name, name_key = reader.first(profile.object_name, _text, "a name")
    start, _ = reader.first(profile.exposure_start, _iso_time, "an ISO date-time")
    filter_name, _ = reader.first(profile.filter, _text, "a name")
    target = None
    position, position_key = (coordinates, coordinates_key) if coordinates is not None else (pointing, pointing_key)
    if name is not None and position is not None:
        target = FrameTarget(name, position[0], position[1], f"{name_key}+{position_key}")
    if pointing is None and coordinates is not None:
        pointing, pointing_key = coordinates, coordinates_key
    return FrameHeader(pointing, pointing_key, target, start, filter_name, tuple(reader.problems))


def profile_cards(described: FrameHeader) -> dict[str, tuple]:
    """A frame's catalogue (``CAT``) header cards of what the profile read: the exposure start as
    ``DATE-OBS`` (the light curves' time), the filter, and the science target (``TARGNAME``, ``TARGRA``,
    ``TARGDEC``, ``TARGSRC``: ``science.targets`` reads them back)."""
    cards: dict[str, tuple] = {}
    if described.exposure_start is not None:
        cards["DATE-OBS"] = (described.exposure_start, "exposure start (header profile)")
    if described.filter is not None:
        cards["FILTER"] = (described.filter, "filter (header profile)")
    target = described.target
    if target is not None:
        cards.update([kw.TARGET_NAME.card(target.name), kw.TARGET_RA.card(target.ra), kw.TARGET_DEC.card(target.dec),
                      kw.TARGET_SOURCE.card(target.source)])
    return cards
