"""A night's masters: built from its raw frames (bias, darks per exposure time, flat, bad-pixel mask),
read back when a previous run made them, or a flat borrowed from an earlier night.

The science is in ``masters`` (pure functions on arrays); this module reads the raw frames, writes the
master files and describes them in the ledger's masters record (with the problems found on the way).
The night's inventory is never changed: the masters narrow the frames down on a working copy.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from . import __version__, products
from .config import Settings
from .masters import (DarkLibrary, MaskBit, bad_pixel_mask, combine_files, flat_from_files, flat_level_usable,
                      flat_noise_cards)
from .night import NightInventory, Problem, RawFrame, make_output_dirs, masters_dir, problem_record, valid_date
from .stages import FrameBlocked
from .storage import StorageUnavailable


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


def working_copy(inventory: NightInventory) -> NightInventory:
    """A copy of the inventory for the masters to narrow down (frames of another size, darks off
    temperature) and note problems in: the night's inventory itself stays as it was taken, so every run
    and every front-end records the same counts and problems from it."""
    return replace(inventory, science=list(inventory.science), darks=list(inventory.darks),
                   biases=list(inventory.biases), flats=list(inventory.flats), problems=[], notes=[])


def _report_masters_problems(work: NightInventory, masters_record: dict[str, Any], root: Path, log: Any) -> None:
    """Problems found while building (frames of another size, darks off temperature, rejected flats)
    are logged once, when found, and kept with the masters: later runs load the masters instead of
    building them, and must still show these problems in the ledger and the status."""
    for problem in work.problems:
        log.warning(problem.event, path=str(problem.path), error=problem.reason)
    known = masters_record.setdefault("problems", [])
    known += [p for p in (problem_record(p, root) for p in work.problems) if p not in known]


def build_masters(root: Path, inventory: NightInventory, settings: Settings, log: Any) -> Masters:
    """Build and write every master of the night (bias, darks, flat, mask) from its raw frames."""
    shape = common_shape(inventory)
    if shape is None:
        raise FrameBlocked("no frames in the night")
    out = masters_dir(root, inventory.date)
    make_output_dirs(root, inventory.date)
    record: dict[str, Any] = {"shape": list(shape), "darks": {}, "software": __version__}
    work = working_copy(inventory)
    try:
        work.darks = _of_shape(work.darks, shape, work.problems)
        work.biases = _of_shape(work.biases, shape, work.problems)
        work.flats = _of_shape(work.flats, shape, work.problems)
        bias = None
        if work.biases:
            paths = [f.path for f in work.biases]
            bias = combine_files(paths, shape, settings.calibration.combine_sigma, memory_budget(settings, 0),
                                 hdus=[f.hdu for f in work.biases])
            products.write_master(out / products.MASTER_BIAS, bias, "MASTER_BIAS", work.date, {},
                                  [p.name for p in paths])
            record["bias"] = {"file": products.MASTER_BIAS, "inputs": [p.name for p in paths]}
            log.info("master_built", kind="bias", n_inputs=len(paths))
        darks = _build_darks(work, shape, settings, bias, out, record, log)
        masters = Masters(shape, DarkLibrary.build(darks, bias), record=record)
        record["bias_origin"] = masters.library.bias_origin
        _build_flat(root, work, masters, settings, out, log)
        _build_mask(work.date, masters, settings, out, log)
    finally:
        _report_masters_problems(work, record, root, log)
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
                work = working_copy(inventory)
                try:
                    _build_flat(root, work, masters, settings, out, log)
                    _build_mask(inventory.date, masters, settings, out, log)
                finally:
                    _report_masters_problems(work, masters.record, root, log)
            return masters
    try:
        return build_masters(root, inventory, settings, log)
    except StorageUnavailable:
        raise  # not the night's fault: nothing to report as a masters failure
    except Exception as error:
        log.error("masters_failed", error=f"{type(error).__name__}: {error}")
        raise
