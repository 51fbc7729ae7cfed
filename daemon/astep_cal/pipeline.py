"""One night through the stages: inventory -> masters -> calibrate each frame -> solve each frame.

This is the imperative shell around the science functions: it reads files, writes products, and keeps
the ledger. Every per-frame step runs inside :func:`stage`, which owns timing, logging and error
isolation (the role of BANZAI's ``Stage`` base class): a failing frame is recorded in the ledger with its
reason and the night goes on.

Astrometry of frame N runs in a worker thread (solve-field is a separate process) while frame N+1 is
being calibrated, so both cores are busy. Only the calling thread touches the ledger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from . import __version__, astrometry, products, quality, summary
from .calibrate import COSMIC_BYTES_PER_PIXEL, CalibrationError, calibrate_frame
from .config import Settings
from .faults import checkpoint
from .fitsio import (StorageUnavailable, ensure_root, fingerprint, read_image, remove_stale_temporaries,
                     root_present)
from .ledger import Ledger
from .recovery import raw_fingerprint_card
from .logs import get_logger
from .masters import (DarkLibrary, MaskBit, bad_pixel_mask, combine_files, flat_from_files, flat_level_usable,
                      flat_noise_cards, master_noise)
from .night import (NightInventory, Problem, RawFrame, cal_dir, discover_nights, is_fits_name, is_temporary,
                    kind_from_name, make_output_dirs, masters_dir, take_inventory, valid_date)

ProgressCallback = Callable[[str, int, int], None]  # (night, frames finished, frames to do)


class FrameBlocked(Exception):
    """A frame that cannot be calibrated yet because a calibration (dark, flat) is missing."""


@contextlib.contextmanager
def stage(entry: dict[str, Any], name: str, log: Any, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """Run one step for one frame: time it, log it, and turn any exception into a recorded failure.

    The step fills the yielded record; on success ``status`` defaults to ``ok``. A blocked frame has no
    duration so that re-checking it changes nothing in the ledger. Storage trouble (disk full, the
    data root gone) is not the frame's failure: nothing is recorded and :class:`StorageUnavailable`
    goes up to stop the night, which is resumed when the storage is back.
    """
    previous = entry.get(name)
    record: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        yield record
    except FrameBlocked as reason:
        record = {"status": "blocked", "error": str(reason)}
        log.warning("frame_blocked", stage=name, error=str(reason))
    except Exception as error:  # error isolation: one bad frame never stops the night
        if isinstance(error, StorageUnavailable) or (root is not None and not root_present(root)):
            _put_back(entry, name, previous)
            if root is not None:
                ensure_root(root, error)
            raise
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        record["duration_s"] = round(time.perf_counter() - start, 3)
        log.error("frame_failed", stage=name, error=record["error"])
    else:
        record.setdefault("status", "ok")
        record["duration_s"] = round(time.perf_counter() - start, 3)
    entry[name] = record


def _put_back(entry: dict[str, Any], name: str, previous: dict[str, Any] | None) -> None:
    """Leave a stage's record as it was before the step (nothing learnt about the frame)."""
    if previous is None:
        entry.pop(name, None)
    else:
        entry[name] = previous


# --- masters ------------------------------------------------------------------------------------

@dataclass
class Masters:
    """The night's masters in memory, loaded once and used by every frame."""

    shape: tuple[int, int]
    library: DarkLibrary
    flat: np.ndarray | None = None
    mask: np.ndarray | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def resident_bytes(self) -> int:
        arrays = [*self.library.darks.values(), self.library.bias, self.flat, self.mask]
        return sum(a.nbytes for a in arrays if a is not None)


def memory_budget(settings: Settings, resident_bytes: int) -> float:
    """Bytes a combine may use: the limit, less the interpreter and the masters already in memory."""
    return max(64e6, settings.mem_limit_gb * 1e9 * 0.8 - 350e6 - resident_bytes)


def _exptime_key(exptime: float) -> str:
    return f"{exptime:g}"


def common_shape(inventory: NightInventory) -> tuple[int, int] | None:
    """The frame size of the night: the most common among science frames (else darks, else flats)."""
    for frames in (inventory.science, inventory.darks, inventory.flats):
        if frames:
            return Counter(f.shape for f in frames).most_common(1)[0][0]
    return None


def _of_shape(frames: list[RawFrame], shape: tuple[int, int], problems: list[Problem]) -> list[RawFrame]:
    kept = [f for f in frames if f.shape == shape]
    problems.extend(Problem(f.path, "frame_shape_mismatch", f"{f.shape[1]}x{f.shape[0]}, night is "
                            f"{shape[1]}x{shape[0]}") for f in frames if f.shape != shape)
    return kept


def find_borrowed_flat(root: Path, date: str, max_age_days: int) -> tuple[str, Path] | None:
    """The nearest earlier night (within ``max_age_days``) that made a master flat from its own flats."""
    night = dt.date.fromisoformat(date)
    candidates = sorted((p.name for p in root.iterdir() if p.is_dir() and valid_date(p.name)), reverse=True)
    for other in candidates:
        age = (night - dt.date.fromisoformat(other)).days
        if age <= 0:
            continue
        if age > max_age_days:
            break
        path = masters_dir(root, other) / products.MASTER_FLAT
        if path.is_file() and fits.getval(path, "ASTCNITE") == other:
            return other, path
    return None


def darks_at_science_temperature(inventory: NightInventory, tolerance_c: float) -> list[RawFrame]:
    """The darks taken at the science frames' CCD temperature (median CCD-TEMP, within ``tolerance_c``).

    Dark current doubles every ~6 deg C: a dark from a warmer CCD over-subtracts. A dark off
    temperature is left out (a ``dark_temperature_mismatch`` problem) only while darks of its exposure
    time within tolerance remain; when none do, all are kept (with the problem noted), since an
    approximate dark beats a blocked night.
    """
    temps = [f.ccd_temp for f in inventory.science if f.ccd_temp is not None]
    if not temps:
        return inventory.darks
    reference = float(np.median(temps))
    by_exptime: dict[float, list[RawFrame]] = {}
    for frame in inventory.darks:
        by_exptime.setdefault(round(frame.exptime, 2), []).append(frame)
    kept: list[RawFrame] = []
    for frames in by_exptime.values():
        off = [f for f in frames if f.ccd_temp is not None and abs(f.ccd_temp - reference) > tolerance_c]
        within = [f for f in frames if f not in off]
        for frame in off:
            action = "left out" if within else "used anyway: no dark of this exposure time is within tolerance"
            inventory.problems.append(Problem(frame.path, "dark_temperature_mismatch",
                                              f"CCD-TEMP {frame.ccd_temp:g} C, science {reference:g} C; {action}"))
        kept.extend(within or frames)
    return kept


def _build_darks(inventory: NightInventory, shape: tuple[int, int], settings: Settings,
                 bias: np.ndarray | None, out: Path, record: dict[str, Any], log: Any) -> dict[float, np.ndarray]:
    darks: dict[float, np.ndarray] = {}
    by_exptime: dict[float, list[RawFrame]] = {}
    for frame in darks_at_science_temperature(inventory, settings.calibration.dark_temp_tolerance_c):
        by_exptime.setdefault(round(frame.exptime, 2), []).append(frame)
    resident = 0 if bias is None else bias.nbytes
    for exptime, frames in sorted(by_exptime.items()):
        start = time.perf_counter()
        paths = [f.path for f in frames]
        darks[exptime] = combine_files(paths, shape, settings.calibration.combine_sigma,
                                       memory_budget(settings, resident), hdus=[f.hdu for f in frames])
        resident += darks[exptime].nbytes
        name = products.dark_file_name(exptime)
        products.write_master(out / name, darks[exptime], "MASTER_DARK", inventory.date,
                              {"EXPTIME": exptime}, [p.name for p in paths])
        record["darks"][_exptime_key(exptime)] = {"file": name, "inputs": [p.name for p in paths]}
        log.info("master_built", kind="dark", exptime=exptime, n_inputs=len(paths),
                 duration_s=round(time.perf_counter() - start, 2))
    return darks


def _own_flat(inventory: NightInventory, masters: Masters, settings: Settings, out: Path, log: Any) -> bool:
    """Make the night's master flat from its sky flats; False (and a problem recorded) when it can't."""
    flats = inventory.flats
    if not flats:
        return False
    choices = [masters.library.dark_for(f.exptime) for f in flats]
    if any(choice is None for choice in choices):
        inventory.problems.append(Problem(inventory.skyflat_dir, "flat_without_dark",
                                          "no dark to subtract from the sky flats"))
        return False
    start = time.perf_counter()
    calibration = settings.calibration
    level_range = (calibration.flat_min_level_adu, calibration.flat_max_level_adu)
    try:
        flat, levels = flat_from_files([f.path for f in flats], masters.shape, [c.data for c in choices],
                                       calibration.combine_sigma, memory_budget(settings, masters.resident_bytes()),
                                       hdus=[f.hdu for f in flats], level_range=level_range)
    except ValueError as error:
        inventory.problems.append(Problem(inventory.skyflat_dir, "flat_unusable", str(error)))
        return False
    for frame, level in zip(flats, levels):
        if not flat_level_usable(level, level_range):
            inventory.problems.append(Problem(frame.path, "flat_rejected", f"median {level:.0f} ADU after the dark, "
                                              f"usable {level_range[0]:g}-{level_range[1]:g}"))
    flats = [f for f, level in zip(flats, levels) if flat_level_usable(level, level_range)]
    products.write_master(out / products.MASTER_FLAT, flat, "MASTER_FLAT", inventory.date,
                          flat_noise_cards([v for v in levels if flat_level_usable(v, level_range)],
                                           calibration.combine_sigma),
                          [f.name for f in flats])
    masters.flat = flat
    masters.record["flat"] = {
        "night": inventory.date,
        "file": str((out / products.MASTER_FLAT).relative_to(inventory.night_dir.parent)),
        "inputs": [f.name for f in flats],
        "levels_adu": [round(v, 1) for v in levels],
    }
    log.info("master_built", kind="flat", n_inputs=len(flats), duration_s=round(time.perf_counter() - start, 2))
    return True


def _borrow_flat(root: Path, date: str, masters: Masters, settings: Settings, log: Any) -> None:
    """Use the nearest earlier night's own master flat (the polar-winter case), if one is young enough."""
    borrowed = find_borrowed_flat(root, date, settings.calibration.flat_max_age_days)
    if borrowed is None:
        log.warning("flat_unavailable", max_age_days=settings.calibration.flat_max_age_days)
        return
    other, path = borrowed
    flat, _ = products.read_master(path)
    if flat.shape != masters.shape:
        log.warning("flat_unavailable", reason=f"the {other} flat has another size")
        return
    masters.flat = flat.astype(np.float32)
    masters.record["flat"] = {"night": other, "file": str(path.relative_to(root)), "borrowed": True}
    log.info("flat_borrowed", from_night=other)


def _build_flat(root: Path, inventory: NightInventory, masters: Masters, settings: Settings,
                out: Path, log: Any) -> None:
    if not _own_flat(inventory, masters, settings, out, log):
        _borrow_flat(root, inventory.date, masters, settings, log)


def problem_record(problem: Problem, root: Path) -> dict[str, str]:
    """A problem as the ledger keeps it: the path relative to the data root when it is inside."""
    path = problem.path.relative_to(root) if problem.path.is_relative_to(root) else problem.path
    return {"path": str(path), "event": problem.event, "reason": problem.reason}


def build_masters(root: Path, inventory: NightInventory, settings: Settings, log: Any) -> Masters:
    """Build and write every master of the night (bias, darks, flat, mask) from its raw frames."""
    shape = common_shape(inventory)
    if shape is None:
        raise FrameBlocked("no frames in the night")
    out = masters_dir(root, inventory.date)
    make_output_dirs(root, inventory.date)
    record: dict[str, Any] = {"shape": list(shape), "darks": {}, "software": __version__}
    problems = inventory.problems
    found_before = len(problems)
    inventory.darks = _of_shape(inventory.darks, shape, problems)
    inventory.biases = _of_shape(inventory.biases, shape, problems)
    inventory.flats = _of_shape(inventory.flats, shape, problems)
    bias = None
    if inventory.biases:
        paths = [f.path for f in inventory.biases]
        bias = combine_files(paths, shape, settings.calibration.combine_sigma, memory_budget(settings, 0),
                             hdus=[f.hdu for f in inventory.biases])
        products.write_master(out / products.MASTER_BIAS, bias, "MASTER_BIAS", inventory.date, {},
                              [p.name for p in paths])
        record["bias"] = {"file": products.MASTER_BIAS, "inputs": [p.name for p in paths]}
        log.info("master_built", kind="bias", n_inputs=len(paths))
    darks = _build_darks(inventory, shape, settings, bias, out, record, log)
    masters = Masters(shape, DarkLibrary.build(darks, bias), record=record)
    record["bias_origin"] = masters.library.bias_origin
    _build_flat(root, inventory, masters, settings, out, log)
    _build_mask(inventory.date, masters, settings, out, log)
    # Problems found while building (frames of another size, darks off temperature, rejected flats)
    # are kept with the masters: later runs load the masters instead of building them, and must still
    # show these problems in the ledger and the status.
    record["problems"] = [problem_record(p, root) for p in problems[found_before:]]
    record["complete"] = True
    return masters


def _build_mask(date: str, masters: Masters, settings: Settings, out: Path, log: Any) -> None:
    if masters.flat is None:
        return
    start = time.perf_counter()
    rate = masters.library.dark_rate()
    mask = bad_pixel_mask(None if rate is None else rate[0], masters.flat, settings.calibration.default_gain,
                          settings.calibration)
    products.write_master(out / products.PIXEL_MASK, mask, "BAD_PIXEL_MASK", date, {}, [])
    masters.mask = mask
    masters.record["mask"] = {
        "file": products.PIXEL_MASK,
        "n_bad": int(np.count_nonzero(mask & MaskBit.BAD)),
        "n_low_flat": int(np.count_nonzero(mask & MaskBit.LOW_FLAT)),
    }
    log.info("master_built", kind="mask", n_bad=masters.record["mask"]["n_bad"],
             duration_s=round(time.perf_counter() - start, 2))


def load_masters(root: Path, date: str, record: dict[str, Any]) -> Masters:
    """Read back the masters a previous run wrote (raises OSError/KeyError when any is gone)."""
    directory = masters_dir(root, date)
    bias = products.read_master(directory / record["bias"]["file"])[0] if "bias" in record else None
    darks = {float(t): products.read_master(directory / d["file"])[0] for t, d in record["darks"].items()}
    masters = Masters(tuple(record["shape"]), DarkLibrary.build(darks, bias), record=record)
    if "flat" in record:
        masters.flat = products.read_master(root / record["flat"]["file"])[0]
    if "mask" in record:
        masters.mask = products.read_master(directory / record["mask"]["file"])[0]
    return masters


def ensure_masters(root: Path, inventory: NightInventory, settings: Settings, record: dict[str, Any],
                   log: Any) -> Masters:
    """The night's masters: read back when ``record`` (the ledger's) says they are complete, else built.

    Shared by ``once`` (lazily, on the first frame to calibrate) and ``reprocess`` (one task per night
    on the cluster), so both make the same masters in the same way. Read-back masters without a flat
    get another chance to borrow one (an earlier night may have made one since). The caller stores
    ``masters.record`` in the ledger.
    """
    if record.get("complete"):
        try:
            masters = load_masters(root, inventory.date, record)
        except (OSError, KeyError, ValueError) as error:
            log.warning("masters_reload_failed", error=str(error))
        else:
            if masters.flat is None:
                out = masters_dir(root, inventory.date)
                _build_flat(root, inventory, masters, settings, out, log)
                _build_mask(inventory.date, masters, settings, out, log)
            return masters
    try:
        return build_masters(root, inventory, settings, log)
    except StorageUnavailable:
        raise  # not the night's fault: nothing to report as a masters failure
    except Exception as error:
        log.error("masters_failed", error=f"{type(error).__name__}: {error}")
        raise


# --- frames -------------------------------------------------------------------------------------

def calibration_fingerprint(settings: Settings) -> str:
    return settings.fingerprint("calibration") + settings.fingerprint("cosmics")


def needs_calibration(entry: dict[str, Any], frame: RawFrame, cal_path: Path, settings: Settings) -> bool:
    done = entry.get("calibrate", {})
    same_input = entry.get("raw") == fingerprint(frame.path)
    if done.get("status") == "failed" and same_input and done.get("config") == calibration_fingerprint(settings):
        return False  # a frame that failed on these very bytes fails again: wait for a new file or --force
    return not (done.get("status") == "ok" and same_input and cal_path.is_file()
                and done.get("config") == calibration_fingerprint(settings))


def needs_solve(entry: dict[str, Any], settings: Settings) -> bool:
    if not settings.astrometry.enabled or entry.get("calibrate", {}).get("status") != "ok":
        return False
    solved = entry.get("astrometry", {})
    if solved.get("status") == "solved":
        return False
    if solved.get("retry_after", 0) > time.time():
        return False  # backing off after a failure
    return solved.get("tries", 0) < settings.astrometry.max_tries


def clear_failures(ledger: Ledger, nights: list[str] | None = None) -> int:
    """Forget failed stages (and solve tries) so the next run retries them; returns how many frames."""
    cleared = 0
    for date, night in ledger.nights().items():
        if nights is not None and date not in nights:
            continue
        for entry in night.get("frames", {}).values():
            touched = False
            if entry.get("calibrate", {}).get("status") == "failed":
                entry.pop("calibrate")
                touched = True
            if entry.get("astrometry", {}).get("status") == "failed":
                entry.pop("astrometry")
                touched = True
            cleared += touched
    return cleared


def header_number(header: fits.Header, key: str, default: float) -> tuple[float, str]:
    """A positive numeric header value, or the configured default (and which one was used)."""
    try:
        value = float(header[key])
        if value > 0 and np.isfinite(value):
            return value, "header"
    except (KeyError, TypeError, ValueError):
        pass
    return default, "default"


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
        ours = "ASTCVER" in fits.getheader(cal_path)
    except Exception:  # unreadable: certainly not ours
        ours = False
    if not ours:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = cal_path.with_name(f"{cal_path.name}.foreign-{stamp}")
        cal_path.rename(aside)
        record["foreign_kept_as"] = aside.name
        log.warning("foreign_output_kept", path=str(cal_path), kept_as=aside.name)


def frame_quality(result: Any, settings: Settings, log: Any) -> tuple[dict[str, tuple], dict[str, Any]]:
    """Header cards and ledger record of the frame's quality metrics.

    Metrics are for people, not for the data: a frame they cannot be measured on (no sky, odd
    content) is still a good calibrated frame, so a failure here is logged and recorded, not raised.
    """
    start = time.perf_counter()
    scale = settings.quality.pixel_scale_arcsec
    try:
        measured = quality.measure_frame(result.data, result.mask, settings.quality.detect_sigma,
                                         settings.quality.fwhm_stars)
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("quality_failed", error=f"{type(error).__name__}: {error}")
        return {}, {"error": f"{type(error).__name__}: {error}"}
    record = {**measured.record(scale), "duration_s": round(time.perf_counter() - start, 3)}
    return measured.header_cards(scale, "nominal"), record


def _calibrate_one(frame: RawFrame, masters: Masters, settings: Settings, cal_path: Path,
                   record: dict[str, Any], log: Any) -> None:
    if masters.flat is None or masters.mask is None:
        raise FrameBlocked("no master flat (no sky flats tonight and none borrowable)")
    dark = masters.library.dark_for(frame.exptime)
    if dark is None:
        raise FrameBlocked("no master dark")
    raw, header = read_whole_frame(frame)
    gain, gain_source = header_number(header, "GAIN", settings.calibration.default_gain)
    read_noise, _ = header_number(header, "RDNOISE", settings.calibration.default_read_noise)
    flat_record = masters.record["flat"]
    root = cal_path.parents[2]
    noise = master_noise(masters.library, dark,
                         products.master_header(masters_dir(root, cal_path.parents[1].name)
                                                / products.dark_file_name(dark.source_exptime)),
                         products.master_header(root / flat_record["file"]), settings.calibration.combine_sigma)
    result = calibrate_frame(raw, dark.data, masters.flat, masters.mask, gain=gain, read_noise_e=read_noise,
                             saturation_adu=settings.calibration.saturation_adu, cosmics=settings.cosmics,
                             max_cosmic_pixels=cosmic_pixel_budget(settings, masters, raw), noise=noise)
    quality_cards, quality_record = frame_quality(result, settings, log)
    provenance = {
        "ASTCDARK": (products.dark_file_name(dark.source_exptime), "master dark used"),
        "ASTCDSCL": (round(dark.scale, 6), "dark scale factor (exptime ratio)"),
        "ASTCBORG": (dark.bias_origin, "bias used when scaling the dark"),
        "ASTCFLAT": (flat_record["file"], ""),  # path relative to the data root (README)
        "ASTCFNIT": (flat_record["night"], "night the master flat was made from"),
        "ASTCGAIN": (gain, f"[e-/ADU] gain applied ({gain_source})"),
        # What the ledger needs to be rebuilt from this file alone (recovery.py):
        "ASTCRAW": (frame.name, "raw frame calibrated"),
        "ASTCRAWF": (raw_fingerprint_card(fingerprint(frame.path)), "raw file size:mtime_ns"),
        "ASTCCONF": (calibration_fingerprint(settings), "fingerprint of the calibration settings"),
        **quality_cards,
    }
    make_output_dirs(cal_path.parents[2], cal_path.parents[1].name)
    keep_foreign_file(cal_path, record, log)
    products.write_calibrated(cal_path, products.calibrated_hdul(header, result, provenance, settings.output))
    record.update(
        output=cal_path.name, config=calibration_fingerprint(settings), software=__version__,
        dark={"exptime": dark.source_exptime, "scale": round(dark.scale, 6), "bias_origin": dark.bias_origin},
        flat={"night": flat_record["night"], "borrowed": bool(flat_record.get("borrowed"))},
        gain=gain, gain_source=gain_source, n_cosmic=result.n_cosmic, n_saturated=result.n_saturated,
        sky_e=round(result.sky_e, 2), date_obs=_text_or_none(header.get("DATE-OBS")), quality=quality_record,
    )


def _text_or_none(value: Any) -> str | None:
    """A header string for the ledger (JSON); anything else (missing, undefined, a number) is None."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def solved_pixel_scale(result: astrometry.SolveResult) -> float | None:
    """The pixel scale (arcsec/px) of a solution, which makes FWHM in arcsec exact; None if unknown."""
    if not result.solved or result.wcs_header is None:
        return None
    try:
        return quality.pixel_scale_arcsec(result.wcs_header)
    except (ValueError, KeyError, TypeError):
        return None


def solve_and_merge(cal_path: Path, settings: Settings) -> astrometry.SolveResult:
    """Worker-thread job: plate-solve one CAL file and merge the WCS (or mark the failure) in it."""
    header = products.read_cal_header(cal_path)
    result = astrometry.solve(cal_path, header, settings.astrometry)
    checkpoint("stage:solve_returned")
    if result.solved and result.wcs_header is not None:
        extra = {"ASTCWCS": ("solved", "astrometry status: pending, solved, failed"),
                 "ASTCWNM": (result.n_matched, "stars matched to the index in the solve")}
        if result.residual_arcsec is not None:
            extra["ASTCWRES"] = (round(result.residual_arcsec, 3), "[arcsec] rms of those matches")
        scale = solved_pixel_scale(result)
        if scale is not None and isinstance(header.get("FWHMPIX"), (int, float)):
            extra.update(quality.fwhm_cards(float(header["FWHMPIX"]), scale, "solved"))
        astrometry.merge_wcs(cal_path, result.wcs_header, extra)
    else:
        astrometry.mark_unsolved(cal_path, result.error or "no solution")
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
    with stage(entry, "calibrate", log, root) as record:
        _calibrate_one(frame, masters(), settings, cal_path, record, log)
    checkpoint("stage:frame_calibrated")
    return entry["calibrate"]["status"]


def solve_frame(cal_path: Path, settings: Settings, tries: int) -> dict[str, Any]:
    """Plate-solve one CAL file (WCS merged into it) and return its ledger record.

    ``tries`` counts this attempt. Never raises, but for :class:`StorageUnavailable` (the merge could
    not be written: the frame stays pending and no try is counted). Shared by ``once`` (in its solve
    thread) and ``reprocess`` (in the frame's task).
    """
    try:
        result: astrometry.SolveResult | Exception = solve_and_merge(cal_path, settings)
    except StorageUnavailable:
        raise
    except Exception as error:  # e.g. the CAL file vanished under us
        result = error
    return solve_record(result, tries, settings)


def solve_record(result: astrometry.SolveResult | Exception, tries: int, settings: Settings) -> dict[str, Any]:
    """The ledger's astrometry record; a failure gets its retry time (exponential back-off) while tries remain."""
    backoff = settings.astrometry.retry_backoff_s * 2 ** (tries - 1)
    retry = {"retry_after": round(time.time() + backoff, 1)} if tries < settings.astrometry.max_tries else {}
    if isinstance(result, Exception):
        return {"status": "failed", "tries": tries, "error": f"{type(result).__name__}: {result}", **retry}
    record: dict[str, Any] = {"status": "solved" if result.solved else "failed", "tries": tries,
                              "duration_s": round(result.duration_s, 2), "hinted": result.hinted}
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


# --- a night ------------------------------------------------------------------------------------

@dataclass
class NightResult:
    date: str
    to_do: int = 0
    calibrated: int = 0
    solved: int = 0
    failed: int = 0
    blocked: int = 0


class NightRun:
    """Processes one night; holds what is shared between its frames for the duration of the run."""

    def __init__(self, root: Path, date: str, settings: Settings, ledger: Ledger, force: bool,
                 progress: ProgressCallback | None = None, should_stop: Callable[[], bool] = lambda: False):
        self.root, self.date, self.settings, self.ledger = root, date, settings, ledger
        self.force, self.progress, self.should_stop = force, progress, should_stop
        self.log = get_logger(night=date)
        self.result = NightResult(date)
        self.masters: Masters | None = None
        self._masters_error: Exception | None = None

    def run(self) -> NightResult:
        """Process the night; raises :class:`StorageUnavailable` (nothing recorded) when the data root
        is full or gone, so the caller can wait and run the night again."""
        if not root_present(self.root):
            raise StorageUnavailable(f"the data root {self.root} is not there (unmounted?)")
        try:
            return self._run()
        except OSError as error:
            ensure_root(self.root, error)
            raise

    def _run(self) -> NightResult:
        if self.force:
            self.ledger.forget_night(self.date)
        inventory = take_inventory(self.root, self.date)
        self.inventory = inventory
        checkpoint("stage:inventory_taken")
        remove_stale_temporaries(inventory.cal_dir)
        remove_stale_temporaries(masters_dir(self.root, self.date))
        night = self.ledger.night(self.date)
        frames = self._frames_to_do(inventory)
        self.result.to_do = len(frames)
        if frames:
            self.log.info("night_started", frames=len(frames), science=len(inventory.science))
            self._process(frames)
        self._record_inventory(night, inventory)
        self.ledger.save()
        if frames:
            self.log.info("night_done", **{k: v for k, v in vars(self.result).items() if k != "date"})
        if not self.should_stop() and (frames or not summary.summary_path(inventory.cal_dir).is_file()):
            self._write_summary(night)
        return self.result

    def _write_summary(self, night: dict[str, Any]) -> None:
        """summary.json + summary.png for the night; a failure is logged, never raised (the night is done)."""
        if not night.get("frames"):
            return
        start = time.perf_counter()
        try:
            make_output_dirs(self.root, self.date)  # refuses a _CAL directory that links out of the root
            written = summary.write_summary(self.root, self.date, night, self.settings)
        except Exception as error:  # noqa: BLE001 - the summary must never break the night
            self.log.error("summary_failed", error=f"{type(error).__name__}: {error}")
            return
        if written is not None:
            self.log.info("summary_written", path=str(written.json_path.relative_to(self.root)),
                          json_kb=written.json_kb, png_kb=written.png_kb,
                          duration_s=round(time.perf_counter() - start, 2))

    def _record_inventory(self, night: dict[str, Any], inventory: NightInventory) -> None:
        for problem in inventory.problems:
            self.log.warning(problem.event, path=str(problem.path), error=problem.reason)
        for note in inventory.notes:
            self.log.info(note.event, path=str(note.path), reason=note.reason)
        problems = [problem_record(p, self.root) for p in inventory.problems]
        problems += [p for p in night.get("masters", {}).get("problems", []) if p not in problems]
        night["problems"] = problems
        night["inventory"] = {"science": len(inventory.science), "darks": len(inventory.darks),
                              "biases": len(inventory.biases), "flats": len(inventory.flats)}

    def _frames_to_do(self, inventory: NightInventory) -> list[RawFrame]:
        todo = []
        for frame in sorted(inventory.science, key=lambda f: f.name):
            entry = self.ledger.frame(self.date, frame.name)
            cal_path = inventory.cal_dir / products.cal_name(frame.name)
            if needs_calibration(entry, frame, cal_path, self.settings) or needs_solve(entry, self.settings):
                todo.append(frame)
        return todo

    def _ensure_masters(self) -> Masters:
        if self.masters is not None:
            return self.masters
        if self._masters_error is not None:
            raise self._masters_error  # tried once this run already: don't rebuild for every frame
        night = self.ledger.night(self.date)
        try:
            self.masters = ensure_masters(self.root, self.inventory, self.settings, night.get("masters", {}),
                                          self.log)
        except StorageUnavailable:
            raise  # not the night's fault: nothing cached, built again when the storage is back
        except Exception as error:
            self._masters_error = error
            raise
        checkpoint("stage:masters_built")
        night["masters"] = self.masters.record
        self.ledger.save()
        return self.masters

    def _process(self, frames: list[RawFrame]) -> None:
        pending: list[tuple[str, Future]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="solve") as solver:
            for index, frame in enumerate(frames, start=1):
                if self.should_stop():
                    self.log.info("night_interrupted", remaining=len(frames) - index + 1)
                    for _, future in pending:
                        future.cancel()
                    astrometry.terminate_running_solves()
                    break
                self._calibrate(frame)
                entry = self.ledger.frame(self.date, frame.name)
                if needs_solve(entry, self.settings):
                    cal_path = self.inventory.cal_dir / products.cal_name(frame.name)
                    tries = entry.get("astrometry", {}).get("tries", 0) + 1
                    pending.append((frame.name, solver.submit(solve_frame, cal_path, self.settings, tries)))
                pending = self._collect(pending, wait=False)
                if self.progress:
                    self.progress(self.date, index, len(frames))
            self._collect(pending, wait=True)

    def _calibrate(self, frame: RawFrame) -> None:
        entry = self.ledger.frame(self.date, frame.name)
        cal_path = self.inventory.cal_dir / products.cal_name(frame.name)
        if not needs_calibration(entry, frame, cal_path, self.settings):
            return
        log = self.log.bind(frame=frame.name)
        status = calibrate_entry(frame, self._ensure_masters, self.settings, cal_path, entry, log, self.root)
        if status == "ok":
            self.result.calibrated += 1
            log.info("frame_calibrated", duration_s=entry["calibrate"]["duration_s"],
                     n_cosmic=entry["calibrate"]["n_cosmic"])
        elif status == "blocked":
            self.result.blocked += 1
        else:
            self.result.failed += 1
        self.ledger.save()

    def _collect(self, pending: list[tuple[str, Future]], wait: bool) -> list[tuple[str, Future]]:
        """Record finished solves in the ledger (from this thread only); return those still running."""
        still = []
        for name, future in pending:
            if not wait and not future.done():
                still.append((name, future))
                continue
            self._record_solve(name, future)
        return still

    def _record_solve(self, name: str, future: Future) -> None:
        if future.cancelled():
            return  # never started (shutdown): the frame stays pending
        record = future.result()  # only StorageUnavailable is raised: it stops the night, nothing recorded
        if record["status"] != "solved" and self.should_stop():
            return  # ended by a shutdown, not a failure: stays pending, no try counted
        entry = self.ledger.frame(self.date, name)
        entry["astrometry"] = record
        cal_path = self.inventory.cal_dir / products.cal_name(name)
        if cal_path.is_file():
            entry["output"] = fingerprint(cal_path)
        if record["status"] == "solved":
            self.result.solved += 1
        else:
            self.result.failed += 1
        log_solve(self.log.bind(frame=name), record)
        self.ledger.save()


def log_solve(log: Any, record: dict[str, Any]) -> None:
    """The log line of one finished solve (the ledger record has everything it says)."""
    if record["status"] == "solved":
        log.info("frame_solved", duration_s=record["duration_s"], hinted=record["hinted"])
    else:
        log.error("frame_failed", stage="astrometry", error=record["error"], tries=record["tries"])


def night_has_work(root: Path, date: str, ledger: Ledger, settings: Settings, retry_blocked: bool) -> bool:
    """Cheap check (directory listing and stat, no FITS reads) for science frames not done yet.

    Used by the daemon on every reconcile, so a backlog of hundreds of finished nights costs little.
    Blocked frames count as work only when ``retry_blocked`` (a full rescan): a calibration they lack
    may have appeared since.
    """
    cams = root / date / f"{date}-CAMS"
    if not cams.is_dir():
        return False
    frames = ledger.nights().get(date, {}).get("frames", {})
    for path in cams.iterdir():
        name = path.name
        if is_temporary(name) or kind_from_name(name) != "SCIENCE" or not is_fits_name(name):
            continue
        entry = frames.get(name)
        if entry is None or entry.get("raw") != fingerprint(path):
            return True
        status = entry.get("calibrate", {}).get("status")
        if status == "blocked" and retry_blocked:
            return True
        if status == "ok" and (needs_solve(entry, settings) or not (cal_dir(root, date) / products.cal_name(name)).is_file()):
            return True
    return False


def process_root(root: Path, settings: Settings, ledger: Ledger, *, nights: list[str] | None = None,
                 force: bool = False, progress: ProgressCallback | None = None) -> list[NightResult]:
    """Process every night under ``root`` (or only ``nights``), oldest first."""
    log = get_logger()
    found, problems = discover_nights(root)
    for problem in problems:
        log.warning(problem.event, path=str(problem.path), error=problem.reason)
    ledger.data["root_problems"] = [{"path": p.path.name, "event": p.event, "reason": p.reason} for p in problems]
    selected = [d for d in found if nights is None or d in nights]
    results = [NightRun(root, date, settings, ledger, force, progress).run() for date in selected]
    ledger.save()
    return results
