"""The night's detector, measured from its own frames, and the noise model each frame is calibrated with.

The science is in :mod:`astep_cal.science.detector`; this module picks the frames (pairs of biases, or
of darks of one exposure time, the shortest first; pairs of the sky flats the master flat used), reads
them, and records the figures in the night's masters record (``detector``) of the ledger. It also
decides, per frame, where the gain and read noise come from — the frame's header, else the night's
measurement, else the configured default — and logs ``detector_mismatch`` once a night when a
configured or header value is more than 20 % from the measurement.

Only a central window of the frame (inside the trimmed border, at most WINDOW² pixels) is used: a
million pixels measure the noise to 0.1 %, and four 4096² frames need not be held at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal.engine.stages import DETECTOR_STEP, run_stage
from astep_cal.formats import keywords as kw
from astep_cal.formats.fitsio import read_window
from astep_cal.formats.raw_night import NightInventory, RawFrame
from astep_cal.science import detector
from astep_cal.science.masters import DarkLibrary
from astep_cal.support.config import CalibrationSettings

WINDOW = 1536  # px: side of the central window measured (at most)
MAX_PAIRS = 4  # pairs per figure (their median is kept)
MISMATCH = 0.2  # a configured or header value this far (relative) from the measurement is logged


def window(shape: tuple[int, int], trim: int) -> tuple[slice, slice]:
    """The central window inside the trimmed border, at most WINDOW pixels on a side."""
    def axis(size: int) -> slice:
        inner = max(size - 2 * trim, 1)
        side = min(inner, WINDOW)
        start = trim + (inner - side) // 2 if inner > 1 else 0
        return slice(start, start + side)
    return axis(shape[0]), axis(shape[1])


def _read_pairs(pairs: list[tuple[RawFrame, RawFrame]], cut: tuple[slice, slice],
                prepare: Callable[[RawFrame, np.ndarray], np.ndarray] | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The windows of consecutive pairs, each frame read once though it is in two pairs, and only its
    window (``read_window``: a third of a 4096² frame's bytes)."""
    windows: dict[Path, np.ndarray] = {}

    def window_of(frame: RawFrame) -> np.ndarray:
        if frame.path not in windows:
            data = read_window(frame.path, frame.hdu, cut)
            windows[frame.path] = data if prepare is None else prepare(frame, data)
        return windows[frame.path]

    return [(window_of(a), window_of(b)) for a, b in pairs]


def _noise_pairs(biases: list[RawFrame], darks: list[RawFrame]) -> tuple[list[tuple[RawFrame, RawFrame]], str]:
    """Pairs for the read noise: consecutive biases, else darks of one exposure time, shortest first
    (their dark current adds shot noise); longer groups only until there are two pairs."""
    by_exptime: dict[float, list[RawFrame]] = {}
    for frame in darks:
        by_exptime.setdefault(round(frame.exptime, 2), []).append(frame)
    groups = [("biases", biases)] + [(f"darks {t:g} s", by_exptime[t]) for t in sorted(by_exptime)]
    pairs: list[tuple[RawFrame, RawFrame]] = []
    used: list[str] = []
    for label, frames in groups:
        if len(frames) >= 2 and len(pairs) < 2:
            pairs += list(pairwise(sorted(frames, key=lambda f: f.name)))[: MAX_PAIRS - len(pairs)]
            used.append(label)
    return pairs, ", ".join(used)


def _measure_read_noise(record: dict[str, Any], biases: list[RawFrame], darks: list[RawFrame],
                        cut: tuple[slice, slice]) -> float | None:
    pairs, source = _noise_pairs(biases, darks)
    try:
        found = detector.read_noise_adu(_read_pairs(pairs, cut))
    except ValueError as error:
        record["read_noise_unmeasured"] = f"{error} (needs two biases or two darks of one exposure time)"
        return None
    record.update(read_noise_adu=round(found.value, 3), read_noise_pairs=found.n_pairs, read_noise_from=source,
                  read_noise_adu_per_pair=[round(v, 3) for v in found.per_pair])
    return found.value


def _measure_gain(record: dict[str, Any], flats: list[RawFrame], library: DarkLibrary, read_noise: float,
                  cut: tuple[slice, slice]) -> float | None:
    pairs = list(pairwise(sorted(flats, key=lambda f: f.name)))[:MAX_PAIRS]

    def dark_subtracted(frame: RawFrame, data: np.ndarray) -> np.ndarray:
        choice = library.dark_for(frame.exptime)
        if choice is None:
            raise ValueError("no dark for the sky flats")
        return data - choice.data[cut]

    try:
        found = detector.gain_e_per_adu(_read_pairs(pairs, cut, dark_subtracted), read_noise)
    except ValueError as error:
        record["gain_unmeasured"] = f"{error} (needs two usable sky flats of the night)"
        return None
    record.update(gain=round(found.value, 4), gain_pairs=found.n_pairs,
                  gain_per_pair=[round(v, 4) for v in found.per_pair])
    return found.value


def measure_night(inventory: NightInventory, shape: tuple[int, int], library: DarkLibrary, flat_inputs: list[str],
                  settings: CalibrationSettings) -> dict[str, Any]:
    """The night's detector record: read noise (ADU, e-), gain, dark current, and what each rests on.

    ``flat_inputs``: the sky flats the night's own master flat used (none for a borrowed flat: no gain
    is measured then). A figure that cannot be measured says why instead (``*_unmeasured``).
    """
    cut = window(shape, settings.trim)
    biases = [f for f in inventory.biases if f.shape == shape]
    darks = [f for f in inventory.darks if f.shape == shape]
    flats = [f for f in inventory.flats if f.shape == shape and f.name in set(flat_inputs)]
    record: dict[str, Any] = {"trim": settings.trim, "window": [cut[0].stop - cut[0].start, cut[1].stop - cut[1].start]}
    noise = _measure_read_noise(record, biases, darks, cut)
    assumed = settings.default_read_noise / settings.default_gain
    gain = _measure_gain(record, flats, library, noise if noise is not None else assumed, cut)
    if noise is not None and gain is not None:
        record["read_noise_e"] = round(noise * gain, 3)
    longest = max((t for t in library.darks if t > 0), default=None)
    if library.bias is not None and longest is not None:
        current = detector.dark_current_adu_s(library.darks[longest][cut], library.bias[cut], longest)
        record["dark_current_adu_s"] = round(current, 5)
        if gain is not None:
            record["dark_current_e_s"] = round(current * gain, 5)
    return record


def _header_value(header: Mapping[str, Any], key: str) -> float | None:
    try:
        value = float(header[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def frame_noise(header: Mapping[str, Any], measured: Mapping[str, Any],
                settings: CalibrationSettings) -> detector.NoiseModel:
    """The noise model of one frame: its header's ``GAIN``/``RDNOISE``, else the night's measurement
    (``measured``: the masters record's ``detector``), else the configured defaults."""
    return detector.resolve_noise(_header_value(header, "GAIN"), _header_value(header, "RDNOISE"),
                                  measured.get("gain"), measured.get("read_noise_adu"),
                                  settings.default_gain, settings.default_read_noise)


def first_science_header(inventory: NightInventory) -> fits.Header:
    """The header of the night's first science frame (empty when there is none or it is unreadable):
    the header values a night's frames are checked against once."""
    for frame in sorted(inventory.science, key=lambda f: f.name)[:1]:
        try:
            return fits.getheader(frame.path, frame.hdu)
        except (OSError, ValueError):
            break
    return fits.Header()


def mismatches(measured: Mapping[str, Any], header: Mapping[str, Any],
               settings: CalibrationSettings) -> list[dict[str, Any]]:
    """Configured and header values more than 20 % from the night's measurement (read noise in e-,
    through the gain the night is calibrated with)."""
    noise = frame_noise(header, measured, settings)
    read_noise_e = measured["read_noise_adu"] * noise.gain if "read_noise_adu" in measured else None
    candidates = [("gain", "configured", settings.default_gain, measured.get("gain")),
                  ("read_noise_e", "configured", settings.default_read_noise, read_noise_e),
                  ("gain", "header", _header_value(header, "GAIN"), measured.get("gain")),
                  ("read_noise_e", "header", _header_value(header, "RDNOISE"), read_noise_e)]
    return [{"quantity": quantity, "source": source, "value": value, "measured": round(found, 4)}
            for quantity, source, value, found in candidates
            if value is not None and detector.mismatch(value, found, MISMATCH)]


def noise_cards(noise: detector.NoiseModel, measured: Mapping[str, Any], trim: int) -> dict[str, tuple]:
    """The CAL file's noise-model provenance: what was applied, from where, and the night's measurement."""
    cards = dict([kw.GAIN.card(noise.gain), kw.GAIN_SOURCE.card(noise.gain_source),
                  kw.READ_NOISE.card(round(noise.read_noise_e, 3)), kw.READ_NOISE_SOURCE.card(noise.read_noise_source),
                  kw.TRIM.card(trim)])
    for keyword, key in ((kw.GAIN_MEASURED, "gain"), (kw.READ_NOISE_MEASURED, "read_noise_adu"),
                         (kw.DARK_CURRENT, "dark_current_adu_s")):
        if key in measured:
            cards.update([keyword.card(measured[key])])
    return cards


def detector_step(root: Path, inventory: NightInventory, shape: tuple[int, int], library: DarkLibrary,
                  flat_record: Mapping[str, Any] | None, settings: CalibrationSettings, log: Any) -> dict[str, Any]:
    """Measure the night's detector in the stage runner (``detector_measured``; a failure is logged as
    ``detector_failed`` and recorded, never raised: the defaults then serve) and log each
    ``detector_mismatch``. Returns the masters record's ``detector`` entry."""
    own = flat_record is not None and not flat_record.get("borrowed")
    inputs = list(flat_record.get("inputs", [])) if own else []
    with run_stage("detector", log, DETECTOR_STEP, root=root) as record:
        record.update(measure_night(inventory, shape, library, inputs, settings))
    if record["status"] == "ok":
        found = mismatches(record, first_science_header(inventory), settings)
        for item in found:
            log.warning("detector_mismatch", **item)
        if found:
            record["mismatches"] = found
    return record
