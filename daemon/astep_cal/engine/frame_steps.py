"""One science frame's steps: calibrate (with its quality metrics) and plate-solve.

Shared by every front-end: ``once`` and the daemon run them in-process (``pipeline.NightRun``),
``reprocess`` in Dask tasks. Each returns or fills the frame's ledger record; ``calibrate_entry`` runs
inside the stage runner (``stages.stage``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal import __version__
from astep_cal.engine import astrometry
from astep_cal.engine.frame_catalogue import Calibrated, measure_frame_catalogue, sky_catalogue, write_frame_catalogue
from astep_cal.engine.frame_health import frame_health
from astep_cal.engine.night_detector import frame_noise, noise_cards
from astep_cal.engine.night_masters import Masters, memory_budget
from astep_cal.engine.prometheus import write_frame
from astep_cal.engine.rules import calibration_fingerprint
from astep_cal.engine.solve_budget import NightSolving
from astep_cal.engine.stages import (
    CALIBRATE_STEP,
    CATALOGUE_STEP,
    HEALTH_STEP,
    QUALITY_STEP,
    SOLVE_STEP,
    FrameBlocked,
    run_stage,
    stage,
)
from astep_cal.formats import keywords as kw
from astep_cal.formats import names, products
from astep_cal.formats.fitsio import read_image
from astep_cal.formats.header_profile import FrameHeader, HeaderProfile, read_frame_header
from astep_cal.formats.names import masters_dir
from astep_cal.formats.raw_night import RawFrame, make_output_dirs
from astep_cal.formats.wcs_cards import mark_unsolved, merge_wcs
from astep_cal.science import quality
from astep_cal.science.calibrate import COSMIC_BYTES_PER_PIXEL, CalibratedFrame, CalibrationError, calibrate_frame
from astep_cal.science.masters import master_noise
from astep_cal.state.recovery import raw_fingerprint_card
from astep_cal.support.config import Settings
from astep_cal.support.faults import checkpoint
from astep_cal.support.storage import fingerprint


def cosmic_pixel_budget(settings: Settings, masters: Masters, raw: np.ndarray) -> int:
    """Pixels astroscrappy may take at once: what the memory limit leaves after masters and frame copies."""
    # raw, dark choice, its dark current (error map), data, the flat used, cleaned output
    resident = masters.resident_bytes() + 6 * raw.nbytes
    return int(memory_budget(settings, resident) // COSMIC_BYTES_PER_PIXEL)


def read_whole_frame(frame: RawFrame) -> tuple[np.ndarray, fits.Header]:
    """The raw pixels, refusing a file that changed while it was read and a frame with no signal.

    A file still being written when read gives a frame that is half old, half new: it is left
    (blocked) for the next run, which sees a new fingerprint and calibrates the finished file.
    """
    before = fingerprint(frame.path)
    raw, header = read_image(frame.path, frame.hdu)
    if fingerprint(frame.path) != before:
        raise FrameBlocked("the raw file changed while it was read (still being written?)")
    finite = np.isfinite(raw)
    if not finite.any() or not np.any(raw[finite]):
        raise CalibrationError("the frame holds no signal (every pixel is 0 or NaN)")
    return raw, header


def keep_foreign_file(cal_path: Path, record: dict[str, Any], log: Any) -> None:
    """A file at our output's name that astep-cal did not write (no ASTCVER) is moved aside, not lost:
    e.g. a product of the old pipeline. Its new name is recorded in the frame's ledger entry."""
    if not cal_path.is_file():
        return
    try:
        ours = kw.VERSION.name in products.read_cal_header(cal_path)  # plain or tile-compressed
    except Exception:  # unreadable: certainly not ours
        ours = False
    if not ours:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = cal_path.with_name(f"{cal_path.name}.foreign-{stamp}")
        cal_path.rename(aside)
        record["foreign_kept_as"] = aside.name
        log.warning("foreign_output_kept", path=str(cal_path), kept_as=aside.name)


def frame_quality(result: Any, settings: Settings,
                  log: Any) -> tuple[dict[str, tuple], dict[str, Any], quality.FrameQuality | None]:
    """Header cards and ledger record of the frame's quality metrics, and the measurement itself: its
    star list (``sources``) feeds the plate solve and the catalogue, which detect nothing again.

    Metrics are for people, not for the data: a frame they cannot be measured on (no sky, odd
    content) is still a good calibrated frame, so a failure here is logged (``quality_failed``) and
    recorded by the stage runner, not raised.
    """
    scale = settings.quality.pixel_scale_arcsec
    cards: dict[str, tuple] = {}
    measured: quality.FrameQuality | None = None
    with run_stage("quality", log, QUALITY_STEP) as record:
        measured = quality.measure_frame(result.data, result.mask, settings.quality.detect_sigma,
                                         settings.quality.fwhm_stars)
        record.update(measured.record(scale))
        cards = measured.header_cards(scale, "nominal")
    if record["status"] == "ok":
        del record["status"]  # the ledger's quality record holds the metrics (and duration_s) only
    return cards, record, measured if record.get("status") != "failed" else None


@dataclass(frozen=True)
class CalFile:
    """A frame's CAL file made in memory, not yet written, and the calibrate record's fields it brings."""

    hdul: fits.HDUList
    fields: dict[str, Any]


def _calibrate_one(frame: RawFrame, masters: Masters, settings: Settings, cal_path: Path,
                   record: dict[str, Any], log: Any) -> tuple[Calibrated, CalFile]:
    """Calibrate the frame in memory: what the catalogue needs of it, and its CAL file to write."""
    if masters.flat is None or masters.mask is None:
        raise FrameBlocked("no master flat (no sky flats tonight and none borrowable)")
    dark = masters.library.dark_for(frame.exptime)
    if dark is None:
        raise FrameBlocked("no master dark")
    raw, header = read_whole_frame(frame)
    described = described_frame(header, settings, record, log)
    measured = masters.record.get("detector", {})
    model = frame_noise(header, measured, settings.calibration)
    flat_record = masters.record["flat"]
    root = cal_path.parents[2]
    noise = master_noise(masters.library, dark,
                         products.master_header(masters_dir(root, names.unit_of_cal_file(cal_path))
                                                / names.dark_file_name(dark.source_exptime)),
                         products.master_header(root / flat_record["file"]), settings.calibration.combine_sigma)
    result = read_only(calibrate_frame(
        raw, dark.data, masters.flat, masters.mask, gain=model.gain, read_noise_e=model.read_noise_e,
        saturation_adu=settings.calibration.saturation_adu, cosmics=settings.cosmics,
        max_cosmic_pixels=cosmic_pixel_budget(settings, masters, raw), noise=noise, trim=settings.calibration.trim))
    quality_cards, quality_record, measured_quality = frame_quality(result, settings, log)
    provenance = dict([
        kw.DARK.card(names.dark_file_name(dark.source_exptime)),
        kw.DARK_SCALE.card(round(dark.scale, 6)),
        kw.BIAS_ORIGIN.card(dark.bias_origin),
        kw.FLAT.card(flat_record["file"]),  # path relative to the data root (docs/pages/data-products.md)
        kw.FLAT_NIGHT.card(flat_record["night"]),
        *noise_cards(model, measured, settings.calibration.trim).items(),
        # What the ledger needs to be rebuilt from this file alone (recovery.py):
        kw.RAW.card(names.header_name(frame.name)),
        kw.RAW_FINGERPRINT.card(raw_fingerprint_card(fingerprint(frame.path))),
        kw.CONFIG.card(calibration_fingerprint(settings)),
    ])
    provenance.update(quality_cards)
    hdul = products.calibrated_hdul(header, result, provenance, settings.output,
                                    measured_quality.sources if measured_quality else None)
    fields = dict(
        output=cal_path.name, config=calibration_fingerprint(settings), software=__version__,
        dark={"exptime": dark.source_exptime, "scale": round(dark.scale, 6), "bias_origin": dark.bias_origin},
        flat={"night": flat_record["night"], "borrowed": bool(flat_record.get("borrowed"))},
        gain=model.gain, gain_source=model.gain_source, read_noise_e=round(model.read_noise_e, 3),
        read_noise_source=model.read_noise_source, n_cosmic=result.n_cosmic, n_saturated=result.n_saturated,
        sky_e=round(result.sky_e, 2), date_obs=described.exposure_start, quality=quality_record,
    )
    return Calibrated(result, measured_quality, header, model.gain, model.read_noise_e, described), CalFile(hdul, fields)


def read_only(frame: CalibratedFrame) -> CalibratedFrame:
    """The calibrated frame with its arrays made read-only: from here on every step only reads them, two at
    once (the CAL file's write and the catalogue, ``frame_catalogue``). A step writing into one fails
    loudly, and astropy's writer, which byteswaps a writable array in place and back, swaps a copy instead
    (in place, the catalogue beside it would read swapped bytes)."""
    for array in (frame.data, frame.mask, frame.error):
        if array is not None:
            array.flags.writeable = False
    return frame


def write_cal_file(cal_file: CalFile, cal_path: Path, record: dict[str, Any], log: Any) -> None:
    """Write the CAL file (a foreign file in its place kept aside) and put its fields in the record."""
    make_output_dirs(cal_path.parents[2], names.unit_of_cal_file(cal_path))
    keep_foreign_file(cal_path, record, log)
    products.write_calibrated(cal_path, cal_file.hdul)
    record.update(cal_file.fields)


def described_frame(header: fits.Header, settings: Settings, record: dict[str, Any], log: Any) -> FrameHeader:
    """The raw header read through the header profile; its malformed values logged
    (``header_value_invalid``) and kept in the frame's record (``header_problems``), its target recorded."""
    described = read_frame_header(header, HeaderProfile.configured(settings.headers))
    for problem in described.problems:
        log.warning("header_value_invalid", keyword=problem.keyword, value=problem.value, error=problem.reason)
    if described.problems:
        record["header_problems"] = [problem.record() for problem in described.problems]
    if described.target is not None:
        target = described.target
        record["target"] = {"name": target.name, "ra": target.ra, "dec": target.dec, "source": target.source}
    return described


def solved_pixel_scale(result: astrometry.SolveResult) -> float | None:
    """The pixel scale (arcsec/px) of a solution, which makes FWHM in arcsec exact; None if unknown."""
    if not result.solved or result.wcs_header is None:
        return None
    try:
        return quality.pixel_scale_arcsec(result.wcs_header)
    except (ValueError, KeyError, TypeError):
        return None


def solve_and_merge(cal_path: Path, settings: Settings, solving: NightSolving | None = None) -> astrometry.SolveResult:
    """Worker-thread job: plate-solve one CAL file and merge the WCS (or mark the failure) in it; the
    night's ``solving`` gives the hints and learns the outcome (``solve_budget``)."""
    header = products.read_cal_header(cal_path)
    budgeted = solving.budgeted(settings.astrometry) if solving is not None else settings.astrometry
    result = astrometry.solve(cal_path, header, budgeted, profile=HeaderProfile.configured(settings.headers),
                              hints=solving.hints() if solving is not None else ())
    if solving is not None:
        shape = (header.get("NAXIS2"), header.get("NAXIS1"))
        if solving.learn(result, shape if all(isinstance(n, int) for n in shape) else None):
            result = replace(result, cut_off=True)
    checkpoint("stage:solve_returned")
    if result.solved and result.wcs_header is not None:
        extra = dict([kw.WCS_STATUS.card("solved"), kw.WCS_MATCHED.card(result.n_matched)])
        if result.residual_arcsec is not None:
            extra.update([kw.WCS_RESIDUAL.card(round(result.residual_arcsec, 3))])
        scale = solved_pixel_scale(result)
        if scale is not None and isinstance(header.get("FWHMPIX"), (int, float)):
            extra.update(quality.fwhm_cards(float(header["FWHMPIX"]), scale, "solved"))
        merge_wcs(cal_path, result.wcs_header, extra)
    else:
        mark_unsolved(cal_path, result.error or "no solution")
    return result


def calibrate_entry(frame: RawFrame, masters: Callable[[], Masters], settings: Settings, cal_path: Path,
                    entry: dict[str, Any], log: Any, root: Path | None = None) -> str:
    """Calibrate one frame and record it in its ledger ``entry``; returns the stage status.

    The one per-frame calibration step of ``once``, the daemon and ``reprocess`` (a Dask task calls it on
    a copy of the entry and sends the entry back). ``masters`` is called only when the frame really is
    calibrated, so a night with nothing to calibrate never builds or reads its masters.
    """
    entry["raw"] = fingerprint(frame.path)
    entry.pop("astrometry", None)  # a new CAL file needs a new solution
    entry.pop("catalogue", None)
    entry.pop("health", None)
    made, measuring = None, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalogue") as beside:
        with stage(entry, "calibrate", log, root, CALIBRATE_STEP) as record:
            made, cal_file = _calibrate_one(frame, masters(), settings, cal_path, record, log)
            if settings.photometry.enabled:  # measured beside the write (frame_catalogue: why)
                measuring = beside.submit(measure_frame_catalogue, made, settings)
            write_cal_file(cal_file, cal_path, record, log)
        checkpoint("stage:frame_calibrated")
        if measuring is not None and entry["calibrate"]["status"] == "ok":
            with stage(entry, "catalogue", log, root, CATALOGUE_STEP) as record:
                write_frame_catalogue(made, measuring.result(), cal_path, record)
    return entry["calibrate"]["status"]


def _cut_short(result: Any, given_s: float | None, settings: Settings) -> bool:
    """Whether a failed solve failed because the night's wait cut its time (it was given less than its
    frame budget and used up what it was given), rather than for its own reason (a crash, its own
    timeout, no match), which is a try like any other."""
    if given_s is None or given_s >= settings.astrometry.frame_budget_s:
        return False
    return float(getattr(result, "duration_s", 0.0) or 0.0) >= 0.9 * given_s


def solve_frame(cal_path: Path, settings: Settings, tries: int, solving: NightSolving | None = None) -> dict[str, Any]:
    """Plate-solve one CAL file (WCS merged into it) and return its ledger record.

    ``tries`` counts this attempt. Runs through the stage runner (an error, e.g. the CAL file vanished,
    is a failed solve); only :class:`StorageUnavailable` is raised (the merge could not be written: the
    frame stays pending and no try is counted). Shared by ``once`` (in its solve thread) and
    ``reprocess`` (in the frame's task); the caller logs the outcome (:func:`log_solve`). With the night's
    ``solving`` (``once``, the daemon) a solve is not run once the night's budget of failed solving is spent:
    the record is ``deferred`` (no try counted).
    """
    if solving is not None and solving.spent():
        return solving.defer(tries - 1)
    given_s = solving.budgeted(settings.astrometry).frame_budget_s if solving is not None else None
    with run_stage("astrometry", None, SOLVE_STEP) as step:
        step["result"] = solve_and_merge(cal_path, settings, solving)
    if step["status"] == "failed":
        return solve_record(step["error"], tries, settings)
    record = solve_record(step["result"], tries, settings)
    if record["status"] == "failed" and (_cut_short(step["result"], given_s, settings) or step["result"].cut_off):
        return solving.defer(tries - 1)  # it ran out of the night's wait, not of its own tries: not a try
    if record["status"] == "solved" and settings.photometry.enabled:
        record["catalogue"] = sky_catalogue(cal_path, step["result"].wcs_header)
        if record["catalogue"] == "ok" and settings.health.enabled:
            with run_stage("health", None, HEALTH_STEP) as health:
                health.update(frame_health(cal_path, settings.health))
            if settings.health.prometheus_textfile and health["status"] == "ok":
                failed = write_frame(Path(settings.health.prometheus_textfile), cal_path, health)
                health.update({"prometheus_error": failed} if failed else {})
            record["health"] = health
    return record


def solve_record(result: astrometry.SolveResult | str, tries: int, settings: Settings) -> dict[str, Any]:
    """The ledger's astrometry record (``result`` is the solve's, or the error that stopped it); a failure
    gets its retry time (exponential back-off) while tries remain."""
    backoff = settings.astrometry.retry_backoff_s * 2 ** (tries - 1)
    retry = {"retry_after": round(time.time() + backoff, 1)} if tries < settings.astrometry.max_tries else {}
    if isinstance(result, str):
        return {"status": "failed", "tries": tries, "error": result, **retry}
    record: dict[str, Any] = {"status": "solved" if result.solved else "failed", "tries": tries,
                              "duration_s": round(result.duration_s, 2), "hinted": result.hinted,
                              "input": "sources" if result.from_list else "image"}
    if result.from_hint:
        record["hint"] = "earlier solution"
    if result.solved:
        record["n_matched"] = result.n_matched
        if result.residual_arcsec is not None:
            record["residual_arcsec"] = round(result.residual_arcsec, 3)
        scale = solved_pixel_scale(result)
        if scale is not None:
            record["pixel_scale_arcsec"] = round(scale, 4)
    else:
        record.update(error=result.error, **retry)
    return record


def record_solve(entry: dict[str, Any], record: dict[str, Any], cal_path: Path) -> None:
    """A finished solve into the frame's ledger entry: its record, and the CAL file's new fingerprint
    (the WCS merge rewrote the file), and the health figures measured after it (their own record)."""
    record = dict(record)
    health = record.pop("health", None)
    if health is not None:
        entry["health"] = health
    entry["astrometry"] = record
    if cal_path.is_file():
        entry["output"] = fingerprint(cal_path)


def log_solve(log: Any, record: dict[str, Any], health: dict[str, Any] | None = None) -> None:
    """The log line of one finished solve (the ledger record has everything it says), and of its health
    step's failure (``health``: the frame's record, when no longer in ``record``)."""
    health = health if health is not None else record.get("health", {})
    if record["status"] == "solved":
        log.info("frame_solved", duration_s=record["duration_s"], hinted=record["hinted"])
        if str(record.get("catalogue", "")).startswith("failed"):
            log.warning("catalogue_failed", stage="sky positions", error=record["catalogue"])
        if health.get("status") == "failed":
            log.warning("health_failed", stage="zero point", error=health["error"])
    else:
        log.error("frame_failed", stage="astrometry", error=record["error"], tries=record["tries"])
