"""The ledger's records, defined once: a frame's entry, a night's record, and typed accessors.

Every reader (rules, status rows, summary, recovery, reprocess, the tools) goes through these instead
of spelling the layout again (``entry.get("calibrate", {}).get("status")`` in five modules drifted).
The layout (docs/pages/data-products.md, "The ledger")::

    night record  {"masters": MastersRecord, "problems": [...], "listing": str, "inventory": {...},
                   "frames": {raw name: FrameEntry}}
    FrameEntry    {"raw": "size:mtime_ns", "output": "size:mtime_ns",
                   "calibrate": CalibrateRecord, "catalogue": CatalogueRecord, "astrometry": SolveRecord,
                   "health": {"zp", "zp_scatter", "zp_stars", "sky_mag_arcsec2", "moon_alt_deg", ...}}
    and the night record's "health" (its figures and alerts: docs/pages/health.md)

A step's record always has ``status`` (ok/failed/blocked for calibrate, solved/failed for astrometry)
and, when it failed, ``error`` — the stage runner's convention (``stages``). No numpy or astropy: the
light commands import it.
"""

from __future__ import annotations

from typing import Any, TypedDict

CALIBRATE = "calibrate"
CATALOGUE = "catalogue"
ASTROMETRY = "astrometry"
MASTERS = "masters"
PHOTOMETRY = "photometry"
CLOSE_PENDING = "close_pending"  # "pending": the daemon deferred the light curves and summary PNG (done when idle)
STUCK = "stuck"  # a night the daemon could not look at (permissions, I/O): {"reason", "since", "tries", "retry_after"}


class StepRecord(TypedDict, total=False):
    status: str
    error: str
    duration_s: float


class CalibrateRecord(StepRecord, total=False):
    output: str            # the CAL file's name
    config: str            # calibration settings fingerprint (rules.calibration_fingerprint)
    software: str
    dark: dict[str, Any]   # exptime, scale, bias_origin of the master dark used
    flat: dict[str, Any]   # night, borrowed
    gain: float
    gain_source: str       # header, measured (the night's sky flats) or default
    read_noise_e: float    # the read noise of the noise model (ERR, cosmic rays, catalogue)
    read_noise_source: str  # header, measured (the night's biases or darks) or default
    n_cosmic: int
    n_saturated: int
    sky_e: float
    date_obs: str | None
    quality: dict[str, Any]  # the quality metrics (quality.FrameQuality.record), or a failed step's record
    foreign_kept_as: str   # a file not ours found at the CAL name, moved aside


class CatalogueRecord(StepRecord, total=False):
    file: str              # the CAT file beside the CAL file
    n_sources: int
    fwhm_px: float         # the FWHM the apertures were scaled by


class SolveRecord(StepRecord, total=False):
    tries: int
    retry_after: float     # epoch seconds: no new try before (exponential back-off)
    hinted: bool           # the pointing from the header was used
    n_matched: int
    residual_arcsec: float
    pixel_scale_arcsec: float
    input: str             # sources (the quality step's star list) or image
    catalogue: str         # RA/Dec put into the catalogue: ok, missing, or "failed: why"


class FrameEntry(TypedDict, total=False):
    raw: str               # fingerprint of the raw file calibrated
    output: str            # fingerprint of the CAL file written
    calibrate: CalibrateRecord
    catalogue: CatalogueRecord
    astrometry: SolveRecord


def calibration(entry: FrameEntry | dict[str, Any]) -> CalibrateRecord:
    """The frame's calibration record ({} when never calibrated)."""
    return entry.get(CALIBRATE, {})  # type: ignore[return-value]


def calibration_status(entry: FrameEntry | dict[str, Any]) -> str | None:
    return calibration(entry).get("status")


def catalogue(entry: FrameEntry | dict[str, Any]) -> CatalogueRecord:
    """The frame's catalogue record ({} when photometry was off when it was calibrated)."""
    return entry.get(CATALOGUE, {})  # type: ignore[return-value]


def solve(entry: FrameEntry | dict[str, Any]) -> SolveRecord:
    """The frame's astrometry record ({} when never solved)."""
    return entry.get(ASTROMETRY, {})  # type: ignore[return-value]


def solve_status(entry: FrameEntry | dict[str, Any]) -> str | None:
    return solve(entry).get("status")


def solve_tries(entry: FrameEntry | dict[str, Any]) -> int:
    """Solves tried so far (the next try is this + 1)."""
    return int(solve(entry).get("tries", 0))


def quality(entry: FrameEntry | dict[str, Any]) -> dict[str, Any]:
    return calibration(entry).get("quality", {})


def photometry_record(night: dict[str, Any]) -> dict[str, Any] | None:
    """The night's photometry record (light curves per target); None before photometry ran."""
    return night.get(PHOTOMETRY)


def masters_record(night: dict[str, Any]) -> dict[str, Any]:
    """The night's masters record ({} before its masters are made)."""
    return night.get(MASTERS, {})


def stuck_reason(night: dict[str, Any]) -> str | None:
    """Why the daemon could not work on the night (None when it could: the record is dropped by the
    next inventory that succeeds)."""
    record = night.get(STUCK)
    return str(record.get("reason", "unknown")) if isinstance(record, dict) else None
