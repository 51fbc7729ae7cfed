"""The night's targets: those the frames name (their catalogues' ``TARGNAME``/``TARGRA``/``TARGDEC``, read
from the raw headers through the header profile) merged with the configured ones.

ASTEP's targets change from night to night (TESS follow-up): the frames say what the telescope pointed at
(``SCINAME`` + ``SCIDCRD``, or ``OBJECT`` + the pointing), so a light curve needs no configuration. A
configured target still adds a star (a comparison of interest, a second target in the field) or gives an
ephemeris; a frame target that is a configured one — same name (spaces and case aside) or within
``SAME_STAR_ARCSEC`` — is that configured target, which wins (its ephemeris and its name are kept).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from astep_cal.formats import keywords as kw
from astep_cal.support.config import Target

SAME_STAR_ARCSEC = 10.0
NAME_CARD, RA_CARD, DEC_CARD = kw.TARGET_NAME.name, kw.TARGET_RA.name, kw.TARGET_DEC.name  # catalogue header


def name_key(name: str) -> str:
    """Names compare without spaces and case: ``'TIC 1234'`` is ``'tic1234'``."""
    return "".join(name.split()).upper()


def separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (haversine) between two positions in degrees, in arcsec."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return float(np.degrees(2 * np.arcsin(np.sqrt(min(1.0, h)))) * 3600)


def frame_targets(headers: Iterable[Any]) -> list[Target]:
    """One target per name the frames give, at the median of the positions given with it (frames of one
    target all carry the same card; a median keeps one odd frame from moving it). First-seen order."""
    positions: dict[str, tuple[str, list[float], list[float]]] = {}
    for header in headers:
        name, ra, dec = header.get(NAME_CARD), header.get(RA_CARD), header.get(DEC_CARD)
        if not isinstance(name, str) or not name.strip() or not _number(ra) or not _number(dec):
            continue
        shown, ras, decs = positions.setdefault(name_key(name), (name.strip(), [], []))
        ras.append(float(ra))
        decs.append(float(dec))
    return [Target(shown, _median_ra(ras), float(np.median(decs))) for shown, ras, decs in positions.values()]


def merge_targets(configured: Iterable[Target], from_frames: Iterable[Target]) -> list[Target]:
    """The configured targets, then each frame target that is none of them (by name or position)."""
    merged = list(configured)
    for target in from_frames:
        if not any(_same_target(target, known) for known in merged):
            merged.append(target)
    return merged


def _same_target(a: Target, b: Target) -> bool:
    return name_key(a.name) == name_key(b.name) or separation_arcsec(a.ra, a.dec, b.ra, b.dec) <= SAME_STAR_ARCSEC


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _median_ra(ras: list[float]) -> float:
    """Median RA across the 0/360 wrap: taken about the first value."""
    offsets = (np.asarray(ras) - ras[0] + 180.0) % 360.0 - 180.0
    return float((ras[0] + np.median(offsets)) % 360.0)
