"""A night's masters: built from its raw frames (bias, darks per exposure time, flat, bad-pixel mask),
read back when a previous run made them, or a flat borrowed from an earlier night.

The science is in ``masters`` (pure functions on arrays); this module reads the raw frames, writes the
master files and describes them in the ledger's masters record (with the problems found on the way).
The night's inventory is never changed: the masters narrow the frames down on a working copy.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal import __version__
from astep_cal.engine.night_detector import detector_step, first_science_header, frame_noise
from astep_cal.engine.stages import MASTER_STEP, MASTERS_STEP, FrameBlocked, StepSkipped, run_stage
from astep_cal.formats import keywords as kw
from astep_cal.formats import names, products
from astep_cal.formats.names import masters_dir
from astep_cal.formats.raw_night import NightInventory, Problem, RawFrame, make_output_dirs, problem_record, valid_date
from astep_cal.science.flat_change import detector_figures
from astep_cal.science.masters import (
    DarkLibrary,
    MaskBit,
    bad_pixel_mask,
    combine_files,
    flat_from_files,
    flat_level_usable,
    flat_noise_cards,
)
from astep_cal.support.config import Settings


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


def of_shape(frames: list[RawFrame], shape: tuple[int, int]) -> tuple[list[RawFrame], list[Problem]]:
    """The frames of the night's size, and a ``frame_shape_mismatch`` problem for each other one."""
    kept = [f for f in frames if f.shape == shape]
    return kept, [Problem(f.path, "frame_shape_mismatch", f"{f.shape[1]}x{f.shape[0]}, night is "
                          f"{shape[1]}x{shape[0]}") for f in frames if f.shape != shape]


def find_borrowed_flat(root: Path, date: str, max_age_days: int) -> tuple[str, Path] | None:
    """The nearest earlier night of the same camera (within ``max_age_days``) that made a master flat from
    its own flats: its night key and the flat."""
    day, camera = names.split_unit(date)
    night = dt.date.fromisoformat(day)
    candidates = sorted((p.name for p in root.iterdir() if p.is_dir() and valid_date(p.name)), reverse=True)
    for other_day in candidates:
        age = (night - dt.date.fromisoformat(other_day)).days
        if age <= 0:
            continue
        if age > max_age_days:
            break
        other = names.night_unit(other_day, camera)
        path = masters_dir(root, other) / names.MASTER_FLAT
        if path.is_file() and fits.getval(path, kw.MASTER_NIGHT.name) == other:
            return other, path
    return None


def darks_at_science_temperature(darks: list[RawFrame], science: list[RawFrame],
                                 tolerance_c: float) -> tuple[list[RawFrame], list[Problem]]:
    """The darks taken at the science frames' CCD temperature (median CCD-TEMP, within ``tolerance_c``),
    and a ``dark_temperature_mismatch`` problem for each dark off it.

    Dark current doubles every ~6 deg C: a dark from a warmer CCD over-subtracts. A dark off
    temperature is left out only while darks of its exposure time within tolerance remain; when none
    do, all are kept (with the problem noted), since an approximate dark beats a blocked night.
    """
    temps = [f.ccd_temp for f in science if f.ccd_temp is not None]
    if not temps:
        return list(darks), []
    reference = float(np.median(temps))
    by_exptime: dict[float, list[RawFrame]] = {}
    for frame in darks:
        by_exptime.setdefault(round(frame.exptime, 2), []).append(frame)
    kept: list[RawFrame] = []
    problems: list[Problem] = []
    for frames in by_exptime.values():
        off = [f for f in frames if f.ccd_temp is not None and abs(f.ccd_temp - reference) > tolerance_c]
        within = [f for f in frames if f not in off]
        action = "left out" if within else "used anyway: no dark of this exposure time is within tolerance"
        problems += [Problem(f.path, "dark_temperature_mismatch",
                             f"CCD-TEMP {f.ccd_temp:g} C, science {reference:g} C; {action}") for f in off]
        kept.extend(within or frames)
    return kept, problems


def _master_step(kind: str, log: Any, root: Path, **fields: Any) -> Any:
    """The stage runner for one master: ``master_built`` (kind, ..., duration_s) or ``masters_failed``."""
    return run_stage(kind, log, MASTER_STEP, root=root, fields={"kind": kind, **fields})


def _build_bias(biases: list[RawFrame], shape: tuple[int, int], settings: Settings, date: str, out: Path,
                log: Any) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The master bias and its ledger record (None, None without biases: the dark model does without)."""
    if not biases:
        return None, None
    inputs = [f.path.name for f in biases]
    with _master_step("bias", log, out.parents[2]) as step:
        bias = combine_files([f.path for f in biases], shape, settings.calibration.combine_sigma,
                             memory_budget(settings, 0), hdus=[f.hdu for f in biases])
        products.write_master(out / names.MASTER_BIAS, bias, "MASTER_BIAS", date, {}, inputs)
        step["n_inputs"] = len(inputs)
    return bias, {"file": names.MASTER_BIAS, "inputs": inputs, **detector_figures(bias, None, None, None, 0, 1)}


def _build_darks(darks: list[RawFrame], shape: tuple[int, int], settings: Settings, bias: np.ndarray | None,
                 date: str, out: Path, log: Any) -> tuple[dict[float, np.ndarray], dict[str, Any]]:
    """One master dark per exposure time, and their ledger records by exposure time."""
    built: dict[float, np.ndarray] = {}
    records: dict[str, Any] = {}
    by_exptime: dict[float, list[RawFrame]] = {}
    for frame in darks:
        by_exptime.setdefault(round(frame.exptime, 2), []).append(frame)
    resident = 0 if bias is None else bias.nbytes
    for exptime, frames in sorted(by_exptime.items()):
        inputs = [f.path.name for f in frames]
        with _master_step("dark", log, out.parents[2], exptime=exptime) as step:
            built[exptime] = combine_files([f.path for f in frames], shape, settings.calibration.combine_sigma,
                                           memory_budget(settings, resident), hdus=[f.hdu for f in frames])
            name = names.dark_file_name(exptime)
            products.write_master(out / name, built[exptime], "MASTER_DARK", date, {"EXPTIME": exptime}, inputs)
            step["n_inputs"] = len(inputs)
        resident += built[exptime].nbytes
        records[_exptime_key(exptime)] = {"file": name, "inputs": inputs}
    return built, records


@dataclass(frozen=True)
class FlatOutcome:
    """A night's master flat (None when it has none), its ledger record, the problems found making it."""

    flat: np.ndarray | None = None
    record: dict[str, Any] | None = None
    problems: tuple[Problem, ...] = ()


def _own_flat(inventory: NightInventory, shape: tuple[int, int], library: DarkLibrary, resident_bytes: int,
              settings: Settings, out: Path, log: Any) -> FlatOutcome:
    """The night's master flat from its own sky flats; no flat (and why, as problems) when it can't."""
    flats = inventory.flats
    if not flats:
        return FlatOutcome()
    choices = [library.dark_for(f.exptime) for f in flats]
    if any(choice is None for choice in choices):
        return FlatOutcome(problems=(Problem(inventory.skyflat_dir, "flat_without_dark",
                                             "no dark to subtract from the sky flats"),))
    calibration = settings.calibration
    level_range = (calibration.flat_min_level_adu, calibration.flat_max_level_adu)
    with _master_step("flat", log, out.parents[2]) as step:
        try:
            flat, levels = flat_from_files([f.path for f in flats], shape, [c.data for c in choices],
                                           calibration.combine_sigma, memory_budget(settings, resident_bytes),
                                           hdus=[f.hdu for f in flats], level_range=level_range)
        except ValueError as error:
            unusable = Problem(inventory.skyflat_dir, "flat_unusable", str(error))
            raise StepSkipped(str(error)) from error
        usable = [flat_level_usable(level, level_range) for level in levels]
        used = [f.name for f, ok in zip(flats, usable) if ok]
        products.write_master(out / names.MASTER_FLAT, flat, "MASTER_FLAT", inventory.date,
                              flat_noise_cards([v for v, ok in zip(levels, usable) if ok], calibration.combine_sigma),
                              used)
        step["n_inputs"] = len(used)
    if step["status"] == "skipped":
        return FlatOutcome(problems=(unusable,))
    rejected = tuple(Problem(f.path, "flat_rejected", f"median {level:.0f} ADU after the dark, "
                             f"usable {level_range[0]:g}-{level_range[1]:g}")
                     for f, level, ok in zip(flats, levels, usable) if not ok)
    record = {"night": inventory.date, "file": str((out / names.MASTER_FLAT).relative_to(inventory.night_dir.parent)),
              "inputs": used, "levels_adu": [round(v, 1) for v in levels]}
    return FlatOutcome(flat, record, rejected)


def _borrowed_flat(root: Path, date: str, shape: tuple[int, int], settings: Settings, log: Any) -> FlatOutcome:
    """The nearest earlier night's own master flat (the polar-winter case), if one is young enough."""
    borrowed = find_borrowed_flat(root, date, settings.calibration.flat_max_age_days)
    if borrowed is None:
        log.warning("flat_unavailable", max_age_days=settings.calibration.flat_max_age_days)
        return FlatOutcome()
    other, path = borrowed
    flat, _ = products.read_master(path)
    if flat.shape != shape:
        log.warning("flat_unavailable", reason=f"the {other} flat has another size")
        return FlatOutcome()
    log.info("flat_borrowed", from_night=other)
    return FlatOutcome(flat.astype(np.float32), {"night": other, "file": str(path.relative_to(root)), "borrowed": True})


def _night_flat(root: Path, inventory: NightInventory, shape: tuple[int, int], library: DarkLibrary,
                resident_bytes: int, settings: Settings, out: Path, log: Any) -> FlatOutcome:
    """The night's own flat, else a borrowed one (the problems of the own attempt kept either way)."""
    own = _own_flat(inventory, shape, library, resident_bytes, settings, out, log)
    if own.flat is not None:
        return own
    borrowed = _borrowed_flat(root, inventory.date, shape, settings, log)
    return replace(borrowed, problems=own.problems)


def _build_mask(date: str, library: DarkLibrary, flat: np.ndarray | None, gain: float, settings: Settings,
                out: Path, log: Any) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The bad-pixel mask (from the dark current, in electrons with the night's ``gain``, and the flat)
    and its ledger record; none without a flat."""
    if flat is None:
        return None, None
    with _master_step("mask", log, out.parents[2]) as step:
        rate = library.dark_rate()
        mask = bad_pixel_mask(None if rate is None else rate[0], flat, gain, settings.calibration)
        products.write_master(out / names.PIXEL_MASK, mask, "BAD_PIXEL_MASK", date, {}, [])
        step["n_bad"] = int(np.count_nonzero(mask & MaskBit.BAD))
        detector = detector_figures(None, None if rate is None else rate[0], (mask & MaskBit.BAD) > 0, flat,
                                    settings.calibration.dead_flat_level, settings.calibration.default_gain)
    return mask, {"file": names.PIXEL_MASK, "n_bad": step["n_bad"],
                  "n_low_flat": int(np.count_nonzero(mask & MaskBit.LOW_FLAT)), **detector}


def _with_flat_and_mask(root: Path, inventory: NightInventory, masters: Masters, settings: Settings,
                        log: Any) -> tuple[Masters, list[Problem]]:
    """``masters`` completed with the night's flat (own or borrowed), the detector measured from the
    night's frames (once) and the mask made from the flat, hot pixels judged in the night's electrons."""
    out = masters_dir(root, inventory.date)
    found = _night_flat(root, inventory, masters.shape, masters.library, masters.resident_bytes(), settings, out, log)
    record = dict(masters.record)
    if "detector" not in record:
        record["detector"] = detector_step(root, inventory, masters.shape, masters.library, found.record,
                                           settings.calibration, log)
    gain = frame_noise(first_science_header(inventory), record["detector"], settings.calibration).gain
    mask, mask_record = _build_mask(inventory.date, masters.library, found.flat, gain, settings, out, log)
    if found.record is not None:
        record["flat"] = found.record
    if mask_record is not None:
        record["mask"] = mask_record
    return replace(masters, flat=found.flat, mask=mask, record=record), list(found.problems)


def _report_problems(problems: list[Problem], masters_record: dict[str, Any], root: Path, log: Any) -> None:
    """Problems found while building (frames of another size, darks off temperature, rejected flats)
    are logged once, when found, and kept with the masters: later runs load the masters instead of
    building them, and must still show these problems in the ledger and the status."""
    for problem in problems:
        log.warning(problem.event, path=str(problem.path), error=problem.reason)
    known = masters_record.setdefault("problems", [])
    known += [p for p in (problem_record(p, root) for p in problems) if p not in known]


def build_masters(root: Path, inventory: NightInventory, settings: Settings, log: Any) -> Masters:
    """Build and write every master of the night (bias, darks, flat, mask) from its raw frames.

    The inventory is left as it was taken (every run and front-end records the same counts and problems
    from it): the frames the masters use are narrowed down here, and what was left out is returned as
    problems in the masters' record.
    """
    shape = common_shape(inventory)
    if shape is None:
        raise FrameBlocked("no frames in the night")
    out = masters_dir(root, inventory.date)
    make_output_dirs(root, inventory.date)
    record: dict[str, Any] = {"shape": list(shape), "darks": {}, "software": __version__}
    problems: list[Problem] = []
    try:
        (darks, wrong_darks), (biases, wrong_biases), (flats, wrong_flats) = (
            of_shape(inventory.darks, shape), of_shape(inventory.biases, shape), of_shape(inventory.flats, shape))
        problems += wrong_darks + wrong_biases + wrong_flats
        bias, bias_record = _build_bias(biases, shape, settings, inventory.date, out, log)
        if bias_record is not None:
            record["bias"] = bias_record
        darks, temperature_problems = darks_at_science_temperature(
            darks, inventory.science, settings.calibration.dark_temp_tolerance_c)
        problems += temperature_problems
        built, record["darks"] = _build_darks(darks, shape, settings, bias, inventory.date, out, log)
        masters = Masters(shape, DarkLibrary.build(built, bias), record=record)
        record["bias_origin"] = masters.library.bias_origin
        masters, flat_problems = _with_flat_and_mask(root, replace(inventory, flats=flats), masters, settings, log)
        problems += flat_problems
    finally:
        _report_problems(problems, record, root, log)
    masters.record["problems"] = record["problems"]
    masters.record["complete"] = True
    return masters


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
    ``masters.record`` in the ledger. A failure is logged once (``masters_failed``, by the step that
    failed) and raised: the frames that need the masters record it as theirs.
    """
    if record.get("complete"):
        try:
            masters = load_masters(root, inventory.date, record)
        except (OSError, KeyError, ValueError) as error:
            log.warning("masters_reload_failed", error=str(error))
        else:
            if masters.flat is not None:
                if "detector" not in masters.record:  # masters made before the detector was measured
                    masters.record["detector"] = detector_step(root, inventory, masters.shape, masters.library,
                                                               masters.record.get("flat"), settings.calibration, log)
                return masters
            with run_stage("masters", log, MASTERS_STEP, root=root):
                completed, problems = _with_flat_and_mask(root, inventory, masters, settings, log)
                _report_problems(problems, completed.record, root, log)
            return completed
    with run_stage("masters", log, MASTERS_STEP, root=root):
        return build_masters(root, inventory, settings, log)
