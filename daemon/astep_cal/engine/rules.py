"""The decision rules: what work a frame or a night needs, from the ledger and the file system.

Pure reads (``clear_failures`` aside): a frame needs calibrating when it is new or changed, its CAL
file is gone or the calibration settings changed; a solve when it was never solved and its back-off is
over; a night has work when any of that holds or its raw files changed since their inventory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from astep_cal.formats import names
from astep_cal.formats.names import cal_dir, cams_dir
from astep_cal.formats.raw_night import RawFrame, is_fits_name, is_temporary, kind_from_name, raw_listing
from astep_cal.state import entries
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import Settings
from astep_cal.support.storage import fingerprint


def calibration_fingerprint(settings: Settings) -> str:
    return settings.fingerprint("calibration") + settings.fingerprint("cosmics")


def needs_calibration(entry: dict[str, Any], frame: RawFrame, cal_path: Path, settings: Settings) -> bool:
    done = entries.calibration(entry)
    same_input = entry.get("raw") == fingerprint(frame.path)
    if done.get("status") == "failed" and same_input and done.get("config") == calibration_fingerprint(settings):
        return False  # a frame that failed on these very bytes fails again: wait for a new file or --force
    return not (done.get("status") == "ok" and same_input and cal_path.is_file()
                and done.get("config") == calibration_fingerprint(settings))


def needs_solve(entry: dict[str, Any], settings: Settings, deferred: bool = False) -> bool:
    """A solve is due: never solved, its back-off over, tries left; a solve ``deferred`` by a night's
    budget (``solve_budget``) only when ``deferred`` is asked (the daemon when idle, the next ``once``)."""
    if not settings.astrometry.enabled or entries.calibration_status(entry) != "ok":
        return False
    solved = entries.solve(entry)
    if solved.get("status") == "solved":
        return False
    if solved.get("status") == "deferred":
        return deferred
    if solved.get("retry_after", 0) > time.time():
        return False  # backing off after a failure
    return solved.get("tries", 0) < settings.astrometry.max_tries


def clear_failures(ledger: Ledger, nights: list[str] | None = None) -> int:
    """Forget failed stages (and solve tries) so the next run retries them; returns how many frames.

    Only nights whose totals show failures are opened; a date in ``nights`` means every camera of it."""
    cleared = 0
    for date in ledger.dates():
        totals = ledger.totals(date)
        named = nights is None or date in nights or names.unit_date(date) in nights
        if not named or not (totals["cal_failed"] or totals["solve_failed"]):
            continue
        for entry in ledger.night(date).get("frames", {}).values():
            touched = False
            if entries.calibration_status(entry) == "failed":
                entry.pop("calibrate")
                touched = True
            if entries.solve_status(entry) == "failed":
                entry.pop("astrometry")
                touched = True
            cleared += touched
    return cleared


def night_has_work(root: Path, date: str, ledger: Ledger, settings: Settings, retry_blocked: bool,
                   new_settings_count: bool = False, deferred: bool = False, close_pending: bool = True,
                   solves: bool = True) -> bool:
    """Cheap check (directory listings and stat, no FITS read) for work left in a night.

    Work is: a night never looked at; raw files not seen as they are now (new, changed or removed
    since the inventory was recorded; for a night recorded before listings were kept, a science file
    without its frame entry), a solve due, a CAL file or the summary gone, and — when asked — blocked
    frames (``retry_blocked``: a calibration they lack may have appeared) and frames made with other
    calibration settings (``new_settings_count``: what ``once`` redoes; the daemon does not redo the
    archive on a reload), and solves deferred by a night's budget (``deferred``: the daemon when idle, ``once``).
    A close a daemon deferred is work (``close_pending``) unless that daemon has it scheduled itself.
    ``solves=False``: a solve due is not work (the daemon's question: does the night have more than solves?).
    An unusable file is recorded with the inventory, so it is never work again until it changes.
    """
    if ledger.totals(date).get("stuck"):
        return True  # the daemon could not read it last time: tried again (its back-off is the caller's)
    cams = cams_dir(root, date)
    if not cams.is_dir():
        return date not in ledger.dates()  # looked at once, to record (and report) the missing directory
    night = ledger.peek(date)
    frames = night.get("frames", {})
    listing = night.get("listing")
    if listing is None:  # never looked at, or recorded before listings were kept
        if date not in ledger.dates() or _unrecorded_science(cams, frames):
            return True
    elif listing != raw_listing(root, date):
        return True
    outputs = _names_in(cal_dir(root, date))
    if frames and names.SUMMARY_JSON not in outputs:
        return True
    if frames and close_pending and night.get(entries.CLOSE_PENDING) == "pending":
        return True  # light curves and picture deferred by a daemon that stopped before making them
    config = calibration_fingerprint(settings)
    for name, entry in frames.items():
        calibrated = entries.calibration(entry)
        status = calibrated.get("status")
        if status == "blocked" and retry_blocked:
            return True
        if new_settings_count and status in ("ok", "failed") and calibrated.get("config") != config:
            return True
        if status == "ok" and ((solves and needs_solve(entry, settings, deferred)) or names.cal_name(name) not in outputs):
            return True
    return False


def _names_in(directory: Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _unrecorded_science(cams: Path, frames: dict[str, Any]) -> bool:
    """A science file whose frame entry is missing or names another version of the file."""
    for path in cams.iterdir():
        name = path.name
        if is_temporary(name) or kind_from_name(name) != "SCIENCE" or not is_fits_name(name):
            continue
        entry = frames.get(name)
        if entry is None or entry.get("raw") != fingerprint(path):
            return True
    return False
