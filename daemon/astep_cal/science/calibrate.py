"""Calibrating one science frame: a pure function of the raw pixels and the masters.

Order (the user's guide's steps, with the old pipeline's unit bug fixed):

1. saturated pixels are found on the raw ADU values, before anything changes them;
2. dark subtraction (the dark already holds the bias, or was scaled around it: see ``masters``);
3. division by the flat (dead pixels are divided by 1 and masked instead);
4. ADU -> electrons with the gain;
5. bad pixels are filled from their neighbours along the row (interpolated across a bad column), still
   flagged ``BAD``: the frame stays smooth where they were, so they pass neither for stars nor for
   cosmic rays, and a star beside a dead column keeps a usable profile;
6. cosmic rays are found and replaced (``cosmics``: L.A.Cosmic where a hit is possible, then the
   checks of ``cosmic_checks`` beside defects and on stars) on the data *in electrons*, so
   astroscrappy's gain is 1 and its saturation level is the electron equivalent of the raw saturation
   level. The bad pixels are *not* given to it as ``inmask`` (see ``cosmics``): filled, they need no mask;
7. the uncertainty of every pixel (``ERR``, electrons, 1 sigma): photon noise of the signal and the dark
   current, read noise, and the noise of the master dark and master flat (:class:`MasterNoise`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from astep_cal.science.chunks import row_chunks
from astep_cal.science.cosmics import COSMIC_BYTES_PER_PIXEL, remove_cosmic_rays
from astep_cal.science.detector import border_mask
from astep_cal.science.masters import MaskBit, MasterNoise
from astep_cal.support.config import CosmicSettings

__all__ = ["COSMIC_BYTES_PER_PIXEL", "CalibratedFrame", "CalibrationError", "REPLACED_ERR", "calibrate_frame",
           "error_map", "fill_bad_pixels", "sky_level"]


class CalibrationError(ValueError):
    """A frame that cannot be calibrated with the masters given (e.g. different dimensions)."""


@dataclass
class CalibratedFrame:
    data: np.ndarray  # float32, electrons
    mask: np.ndarray  # uint8, MaskBit values
    n_cosmic: int  # pixels replaced as cosmic-ray hits
    n_saturated: int
    sky_e: float  # median of the calibrated frame
    error: np.ndarray | None = None  # float32, electrons, 1 sigma per pixel (REPLACED_ERR where replaced)


REPLACED_ERR = np.float32(1e6)  # ERR of BAD, COSMIC and SATURATED pixels: no measurement there (docs/pages/data-products.md)


def sky_level(data: np.ndarray, usable: np.ndarray) -> float:
    """Median of the usable pixels on a sparse grid: the sky, cheaply (stars are a small fraction)."""
    step = max(1, data.shape[0] // 512)
    sample = data[::step, ::step][usable[::step, ::step]]
    return float(np.median(sample)) if sample.size else 0.0


FILL_MAX_GAP = 16  # widest run of bad pixels interpolated across; wider runs take the other axis or the sky


def _nearest_good(bad: np.ndarray, ys: np.ndarray, xs: np.ndarray, axis: int, step: int) -> np.ndarray:
    """Offset (1..FILL_MAX_GAP) to the nearest good pixel from each (y, x) along ``axis`` in direction
    ``step``; 0 where there is none within reach (a frame edge or a wide bad region)."""
    size = bad.shape[axis]
    offset = np.zeros(len(ys), dtype=np.int64)
    pending = np.ones(len(ys), dtype=bool)
    for distance in range(1, FILL_MAX_GAP + 1):
        if not pending.any():
            break
        position = (ys if axis == 0 else xs) + step * distance
        inside = pending & (position >= 0) & (position < size)
        candidates = np.flatnonzero(inside)
        py = position[candidates] if axis == 0 else ys[candidates]
        px = xs[candidates] if axis == 0 else position[candidates]
        good = ~bad[py, px]
        offset[candidates[good]] = distance
        pending[candidates[good]] = False
        pending &= (position >= 0) & (position < size)
    return offset


def fill_bad_pixels(data: np.ndarray, bad: np.ndarray, fallback: float) -> None:
    """Fill ``bad`` pixels of ``data`` in place from their good neighbours.

    Linear interpolation along the row between the nearest good pixels left and right (across a bad
    column, whose neighbours are its best predictors: a star's profile continues, the sky stays flat);
    then along the column for what the rows could not reach (a bad row); ``fallback`` (the sky) last.
    Only the bad pixels are touched, so the cost follows their number, not the frame's size.

    """
    ys, xs = np.nonzero(bad)
    todo = np.ones(len(ys), dtype=bool)
    for axis in (1, 0):
        index = np.flatnonzero(todo)
        if not len(index):
            break
        y, x = ys[index], xs[index]
        before = _nearest_good(bad, y, x, axis, -1)
        after = _nearest_good(bad, y, x, axis, +1)
        either = (before > 0) | (after > 0)
        both = (before > 0) & (after > 0)
        if axis == 1:
            low = data[y, np.where(before > 0, x - before, x)]
            high = data[y, np.where(after > 0, x + after, x)]
        else:
            low = data[np.where(before > 0, y - before, y), x]
            high = data[np.where(after > 0, y + after, y), x]
        weight = np.where(both, before / np.maximum(before + after, 1), 0.0)
        value = np.where(both, low + (high - low) * weight, np.where(before > 0, low, high))
        data[y[either], x[either]] = value[either]
        todo[index[either]] = False
    rest = np.flatnonzero(todo)
    data[ys[rest], xs[rest]] = fallback


def error_map(data: np.ndarray, flat: np.ndarray, gain: float, read_noise_e: float,
              noise: MasterNoise | None, replaced: np.ndarray | None = None) -> np.ndarray:
    """1-sigma uncertainty (electrons) of each calibrated pixel, float32; ``REPLACED_ERR`` where
    ``replaced`` (bad, saturated, cosmic: no measurement there, whatever the flat holds).

    In the raw frame (electrons): Poisson noise of what was detected, ``data * flat`` plus the dark
    current; the read noise; the master dark's noise, ``k (read_noise^2 (s^2 + (1 - s)^2) + s * dark)``
    for a dark built from frames with variance factor ``k`` and scaled by ``s`` (the ``(1 - s)`` part:
    the bias it was scaled around, taken as noisy as the dark). Divided by the flat, then the master
    flat's relative variance times ``data^2``. The photon term uses the calibrated (cosmic-cleaned) value
    as the expected signal, as BANZAI does. Computed a chunk of rows at a time (``chunks``).
    """
    noise = noise or MasterNoise()
    scale = noise.dark_scale
    constant = np.float32(read_noise_e ** 2 * (1.0 + noise.dark_k * (scale ** 2 + (1.0 - scale) ** 2)))
    dark_factor = np.float32(gain * (1.0 + noise.dark_k * scale))  # dark current's Poisson and master terms
    flat1 = np.float32(noise.flat_var1 / gain)
    flat2 = np.float32(noise.flat_var2 * read_noise_e ** 2 / gain ** 2)
    error = np.empty(data.shape, np.float32)
    for rows in row_chunks(data.shape[0]):
        value, response, out = data[rows], flat[rows], error[rows]
        if replaced is not None:
            response = np.where(replaced[rows], np.float32(1), response)
        np.multiply(value, response, out=out)
        np.maximum(out, 0, out=out)
        if noise.dark_current_adu is not None:
            out += np.maximum(noise.dark_current_adu[rows], 0) * dark_factor
        out += constant
        squared = response * response
        out /= squared
        if noise.flat_var1 or noise.flat_var2:
            out += value * value * (flat1 / response + flat2 / squared)
        np.sqrt(out, out=out)
        if replaced is not None:
            out[replaced[rows]] = REPLACED_ERR
    return error


def first_pass(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, pixel_mask: np.ndarray, gain: float,
                saturation_adu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over the raw frame and the masters: the electrons ``(raw - dark) / flat * gain``
    (bad pixels divided by 1), the saturated pixels (on the raw ADU) and the bad ones (the mask's
    BAD bit, or not finite: NaN from a broken readout)."""
    data = np.empty(raw.shape, np.float32)
    saturated = np.empty(raw.shape, bool)
    bad = np.empty(raw.shape, bool)
    bad_bit = np.uint8(MaskBit.BAD.value)
    for rows in row_chunks(raw.shape[0]):
        values = raw[rows]
        np.greater_equal(values, saturation_adu, out=saturated[rows])
        chunk_bad = bad[rows]
        np.not_equal(pixel_mask[rows] & bad_bit, 0, out=chunk_bad)
        chunk_bad |= ~np.isfinite(values)
        out = data[rows]
        np.subtract(values, dark[rows], out=out, dtype=np.float32)
        out /= np.where(chunk_bad, np.float32(1), flat[rows])
        out *= np.float32(gain)
    return data, saturated, bad


def calibrate_frame(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, pixel_mask: np.ndarray, *,
                    gain: float, read_noise_e: float, saturation_adu: float,
                    cosmics: CosmicSettings, max_cosmic_pixels: int | None = None,
                    noise: MasterNoise | None = None, timings: dict[str, float] | None = None,
                    trim: int = 0) -> CalibratedFrame:
    """Dark, flat, gain, bad pixels, cosmic rays and the error map for one frame; no file or state is
    touched. ``noise`` describes the masters' own noise for the error map (None: masters taken as exact).
    The ``trim`` outermost pixels of each edge are flagged ``BORDER`` (calibrated, not cropped).
    ``timings``, when given, receives the CPU seconds of the steps (``arithmetic``, ``cosmic_rays``,
    ``error_map``): what ``make bench`` reports per stage."""
    if raw.shape != dark.shape or raw.shape != flat.shape or raw.shape != pixel_mask.shape:
        raise CalibrationError(f"frame is {raw.shape[1]}x{raw.shape[0]} but the masters are "
                               f"{flat.shape[1]}x{flat.shape[0]}")
    clock = _StepClock(timings)
    data, saturated, bad = first_pass(raw, dark, flat, pixel_mask, gain, saturation_adu)
    sky = sky_level(data, ~bad & ~saturated)
    fill_bad_pixels(data, bad, sky)
    saturation_e = float((saturation_adu - np.median(dark[:: max(1, dark.shape[0] // 256)])) * gain)
    clock.lap("arithmetic")
    cosmic_mask = remove_cosmic_rays(data, bad, saturated, sky, read_noise_e, saturation_e, cosmics,
                                     max_cosmic_pixels)
    fill_bad_pixels(data, bad, sky)  # again, from neighbours now free of cosmic rays
    clock.lap("cosmic_rays")
    mask = pixel_mask.astype(np.uint8, copy=True)
    mask |= bad.view(np.uint8) * np.uint8(MaskBit.BAD.value)
    mask |= saturated.view(np.uint8) * np.uint8(MaskBit.SATURATED.value)
    mask |= cosmic_mask.view(np.uint8) * np.uint8(MaskBit.COSMIC.value)
    mask |= border_mask(mask.shape, trim).view(np.uint8) * np.uint8(MaskBit.BORDER.value)
    replaced = bad
    replaced |= saturated
    replaced |= cosmic_mask
    error = error_map(data, flat, gain, read_noise_e, noise, replaced)
    clock.lap("error_map")
    return CalibratedFrame(
        data=data,
        mask=mask,
        n_cosmic=int(np.count_nonzero(cosmic_mask)),
        n_saturated=int(np.count_nonzero(saturated)),
        sky_e=sky,
        error=error,
    )


class _StepClock:
    """CPU seconds (all threads of the process) between laps, added to a dict when one is given."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.process_time()

    def lap(self, name: str) -> None:
        now = time.process_time()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now
