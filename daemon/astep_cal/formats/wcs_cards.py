"""The WCS in a CAL file: a solve-field solution cleaned to its TAN-SIP cards, merged into the CAL
file's header (any previous solution removed first, so a re-solve never leaves a mix of two), or the
file marked unsolved with the reason. Every rewrite is atomic."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from astep_cal.formats import keywords as kw
from astep_cal.formats.fitsio import atomic_write_hdul, set_card
from astep_cal.formats.products import cal_header_for_update
from astep_cal.formats.raw_headers import WCS_KEY


def clean_wcs_header(raw: fits.Header) -> fits.Header:
    """Only the WCS (TAN-SIP) keys of a ``solve-field`` ``.wcs`` header, as astropy writes them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(raw, relax=True)
    if not wcs.has_celestial:
        raise ValueError("solution has no celestial WCS")
    header = wcs.to_header(relax=True)
    for key in ("DATE-OBS", "MJD-OBS", "DATEREF", "MJDREF", "MJDREFI", "MJDREFF"):
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def without_wcs(header: fits.Header) -> None:
    for key in [k for k in header.keys() if WCS_KEY.match(k)]:
        header.remove(key, ignore_missing=True, remove_all=True)


def merge_wcs(cal_path: Path, wcs_header: fits.Header, extra: dict[str, tuple[Any, str]]) -> None:
    """Replace the WCS of ``cal_path``'s primary header by ``wcs_header`` and add ``extra`` cards.

    The file is read whole and rewritten atomically: a crash leaves the old file or the new one.
    """
    with cal_header_for_update(cal_path) as (hdul, header):
        hdul.verify("silentfix")
        without_wcs(header)
        header.remove(kw.WCS_ERROR.name, ignore_missing=True)
        for card in wcs_header.cards:
            header[card.keyword] = (card.value, card.comment)
        for key, (value, comment) in extra.items():
            set_card(header, key, value, comment)
        atomic_write_hdul(cal_path, hdul, make_parents=False)


def mark_unsolved(cal_path: Path, reason: str) -> None:
    """Record a failed solve in the CAL file: ``ASTCWCS = 'failed'`` and the reason in ``ASTCWERR``."""
    printable = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in reason)
    with cal_header_for_update(cal_path) as (hdul, header):
        without_wcs(header)
        header[kw.WCS_STATUS.name] = ("failed", kw.WCS_STATUS.comment)
        set_card(header, kw.WCS_ERROR.name, printable[:60], kw.WCS_ERROR.comment)  # the reason, not the comment
        atomic_write_hdul(cal_path, hdul, make_parents=False)
