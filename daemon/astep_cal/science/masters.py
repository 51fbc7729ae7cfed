"""Master calibration frames: bias, darks (one per exposure time), flat and the bad-pixel mask.

The science here is pure functions on arrays (``combine_stack``, ``normalise``, ``bad_pixel_mask``,
``DarkLibrary.dark_for``); the functions that read many files in row bands to stay within the memory
limit are at the bottom, clearly separated (``combine_files``, ``flat_from_files``).

Dark model. A raw dark of exposure ``t`` is ``bias + rate * t``. A science frame whose exposure time has
a master dark uses it as is (scale 1). Otherwise the nearest master dark is scaled: ``bias + (D_t0 -
bias) * t / t0``. The bias comes from, in order of preference: the master bias; the per-pixel
intercept of two dark exposure times; the median of the dark (a cooled CCD's mean dark current is tiny
next to the bias pedestal, while the hot pixels that matter are above it and scale correctly).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntFlag
from pathlib import Path
from typing import Any

import numpy as np

from astep_cal.formats.fitsio import iter_row_bands
from astep_cal.science.clipped_mean import clipped_mean
from astep_cal.support.config import CalibrationSettings


class MaskBit(IntFlag):
    """Bits of the ``MASK`` extension of every calibrated frame (documented in docs/pages/data-products.md)."""

    BAD = 1  # hot pixel (dark current) or dead pixel (flat response near 0): value replaced
    SATURATED = 2  # raw value at or above the saturation level
    COSMIC = 4  # cosmic-ray hit found by L.A.Cosmic: value replaced by astroscrappy
    LOW_FLAT = 8  # flat response below calibration.low_flat_level: divided, but noisy
    BORDER = 16  # within calibration.trim of an edge: calibrated, but the camera's edge is not trusted


MIN_FRAMES_FOR_CLIPPING = 5  # below this a median rejects outliers better than sigma clipping


def combine_stack(stack: np.ndarray, sigma: float) -> np.ndarray:
    """Combine frames along axis 0 with outlier rejection, as float32.

    With few frames (the usual 3 darks) the median is the robust choice; with more, a sigma-clipped
    mean (median centre, MAD-based width) keeps more signal-to-noise and still rejects cosmic rays and
    stars in the sky flats.
    """
    if stack.shape[0] < MIN_FRAMES_FOR_CLIPPING:
        return np.median(stack, axis=0).astype(np.float32)
    return clipped_mean(stack, sigma, maxiters=2)  # astropy's sigma_clip + nanmean, sooner


@functools.lru_cache(maxsize=64)
def combine_variance_factor(n_frames: int, sigma: float) -> float:
    """Variance of :func:`combine_stack` of ``n_frames`` frames, relative to one frame's variance.

    1/N for a plain mean; more for the median of few frames (1.35/3 for 3) and a little more for the
    sigma-clipped mean: measured by combining unit Gaussian noise with the very function the masters
    use (fixed seed, 40 000 pixels: 1 % precision), so it stays right whatever the combine becomes.
    """
    if n_frames <= 0:
        return 0.0
    noise = np.random.default_rng(14).standard_normal((n_frames, 200, 200), dtype=np.float32)
    return float(np.var(combine_stack(noise, sigma), dtype=np.float64))


def flat_noise_cards(levels_adu: list[float], sigma: float) -> dict[str, tuple[float, str]]:
    """Header cards giving the master flat's variance (read by :func:`flat_noise_from_header`).

    Each sky flat of level ``L`` (ADU, dark-subtracted) normalised to 1 has, at a pixel of response
    ``f``, variance ``f / (L g) + rn^2 / (L g)^2`` (photons, read noise; ``g`` the gain); the combine
    of N of them has ``k`` times the mean of those (``k`` = :func:`combine_variance_factor`). Kept as
    two numbers without the gain and read noise, which the science frame supplies.
    """
    levels = np.asarray([level for level in levels_adu if level > 0], dtype=np.float64)
    if not levels.size:
        return {}
    k = combine_variance_factor(len(levels), sigma)
    return {"FLTVAR1": (float(k * np.mean(1.0 / levels)), "[1/ADU] flat variance = FLTVAR1*f/gain + ..."),
            "FLTVAR2": (float(k * np.mean(1.0 / levels ** 2)), "[1/ADU2] ... + FLTVAR2*(rdnoise/gain)**2")}


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, which systemd's CPUAffinity= or a container narrows)."""
    return max(1, len(os.sched_getaffinity(0)))


def combine_stack_threaded(stack: np.ndarray, sigma: float, workers: int,
                           combine: Callable[[np.ndarray, float], np.ndarray] = combine_stack) -> np.ndarray:
    """:func:`combine_stack` on ``workers`` slices of rows at once; the same result, sooner.

    astropy's sigma clipping along the frame axis is compiled code that releases the GIL, and it is
    the whole cost of a master (20 darks of 4096²: ~20 s on one core). Each pixel is combined on its
    own, so cutting the rows between threads changes nothing in the result and nothing in the peak
    memory (each thread's temporaries cover its own rows only). ``combine``: the per-slice combine (the
    benchmark passes astropy's to compare on the same cutting).
    """
    rows = stack.shape[1]
    if workers <= 1 or rows < 2 * workers:
        return combine(stack, sigma)
    edges = np.linspace(0, rows, workers + 1).astype(int)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="combine") as pool:
        parts = pool.map(lambda lo, hi: combine(stack[:, lo:hi], sigma), edges[:-1], edges[1:])
        return np.concatenate(list(parts), axis=0)


def normalise(frame: np.ndarray) -> np.ndarray:
    """Divide by the median of the finite, positive pixels, so the result has median 1."""
    valid = frame[np.isfinite(frame) & (frame > 0)]
    level = float(np.median(valid)) if valid.size else 0.0
    if level <= 0:
        raise ValueError("frame has no positive signal to normalise by")
    return (frame / level).astype(np.float32)


@dataclass(frozen=True)
class MasterNoise:
    """What the masters add to the variance of a calibrated pixel (see :func:`astep_cal.science.calibrate.error_map`).

    ``dark_k``: variance of the master dark relative to that of one raw dark (1/N for a mean of N
    frames; more for a median: :func:`combine_variance_factor`). ``dark_scale``: the
    exposure-time scale applied to the dark. ``dark_current_adu``: the dark current held in the dark
    that is subtracted (ADU, per pixel), whose electrons are Poisson noise in the science frame too.
    ``flat_var1`` (ADU^-1) and ``flat_var2`` (ADU^-2): the master flat's variance is
    ``flat_var1 * f / gain + flat_var2 * read_noise**2 / gain**2`` at a pixel of response ``f`` (the
    ``FLTVAR1``/``FLTVAR2`` cards of the master flat). Zeros: a master without noise (unknown).
    """

    dark_k: float = 0.0
    dark_scale: float = 1.0
    dark_current_adu: np.ndarray | None = None
    flat_var1: float = 0.0
    flat_var2: float = 0.0


def master_noise(library: "DarkLibrary", choice: "DarkChoice", dark_header: Mapping[str, Any] | None,
                 flat_header: Mapping[str, Any] | None, sigma: float) -> MasterNoise:
    """The masters' noise for one frame, from the masters' headers (``NCOMBINE`` of the dark, the
    ``FLTVAR1``/``FLTVAR2`` cards of the flat). A header without them (a master written before they
    were recorded) counts as a noiseless master: the error map is then a little low."""
    n_darks = int(dark_header.get("NCOMBINE", 0)) if dark_header is not None else 0
    flat_header = flat_header if flat_header is not None else {}
    return MasterNoise(dark_k=combine_variance_factor(n_darks, sigma), dark_scale=choice.scale,
                       dark_current_adu=library.dark_current(choice),
                       flat_var1=float(flat_header.get("FLTVAR1", 0.0)), flat_var2=float(flat_header.get("FLTVAR2", 0.0)))


def bias_from_two_darks(short: np.ndarray, t_short: float, long: np.ndarray, t_long: float) -> np.ndarray:
    """Per-pixel intercept of the dark level against exposure time: the bias without bias frames."""
    return ((t_long * short - t_short * long) / (t_long - t_short)).astype(np.float32)


@dataclass
class DarkChoice:
    """The dark to subtract from one frame, and how it was made (recorded in headers and the ledger)."""

    data: np.ndarray
    source_exptime: float
    scale: float
    bias_origin: str  # none | master_bias | two_darks | dark_median


@dataclass
class DarkLibrary:
    """Master darks by exposure time, plus the best available bias, ready to serve any exposure."""

    darks: dict[float, np.ndarray]
    bias: np.ndarray | None = None
    bias_origin: str = "none"
    _pedestals: dict[float, float] = field(default_factory=dict)

    @classmethod
    def build(cls, darks: dict[float, np.ndarray], master_bias: np.ndarray | None) -> "DarkLibrary":
        if master_bias is not None:
            return cls(darks, master_bias, "master_bias")
        positive = sorted(t for t in darks if t > 0)
        if len(positive) >= 2:
            short, long = positive[0], positive[-1]
            return cls(darks, bias_from_two_darks(darks[short], short, darks[long], long), "two_darks")
        return cls(darks, None, "dark_median")

    def nearest_exptime(self, exptime: float) -> float | None:
        if not self.darks:
            return None
        return min(self.darks, key=lambda t: (abs(t - exptime), -t))

    def dark_for(self, exptime: float) -> DarkChoice | None:
        """The dark for ``exptime``: exact when one exists, else the nearest one scaled."""
        source = self.nearest_exptime(exptime)
        if source is None:
            return None
        master = self.darks[source]
        if abs(source - exptime) < 1e-3:
            return DarkChoice(master, source, 1.0, "none")
        if source <= 0:
            return None  # a zero-second dark has no dark current to scale
        scale = exptime / source
        if self.bias is not None:
            return DarkChoice(self.bias + (master - self.bias) * scale, source, scale, self.bias_origin)
        pedestal = self._pedestals.setdefault(source, float(np.median(master)))
        return DarkChoice(pedestal + (master - pedestal) * scale, source, scale, "dark_median")

    def dark_current(self, choice: DarkChoice) -> np.ndarray:
        """The dark current (ADU) held in ``choice``: the dark less the bias (the dark's median when
        no bias is known). Its electrons are Poisson noise in the science frame (the error map)."""
        bias = self.bias if self.bias is not None else np.float32(np.median(choice.data[::8, ::8]))
        return np.clip(choice.data - bias, 0, None).astype(np.float32)

    def dark_rate(self) -> tuple[np.ndarray, float] | None:
        """Dark current (ADU/s) from the longest dark, for finding hot pixels."""
        longest = max((t for t in self.darks if t > 0), default=None)
        if longest is None:
            return None
        master = self.darks[longest]
        bias = self.bias if self.bias is not None else np.float32(np.median(master))
        return ((master - bias) / longest).astype(np.float32), longest


def _robust_sigma(values: np.ndarray) -> float:
    sample = values[:: max(1, values.size // 1_000_000)]
    median = np.median(sample)
    return float(1.4826 * np.median(np.abs(sample - median)))


def bad_pixel_mask(dark_rate_adu: np.ndarray | None, flat: np.ndarray, gain: float,
                   settings: CalibrationSettings) -> np.ndarray:
    """MASK bits from the masters alone: hot pixels (dark current) and dead/low pixels (flat).

    Vectorised thresholds on two arrays: milliseconds where the old ``ccdmask`` took 98 s a night. A
    pixel is hot when its dark current exceeds the median by both ``hot_pixel_rate`` e-/s and
    ``hot_pixel_sigma`` robust sigmas (the second guard keeps a noisy short dark from flagging noise).
    """
    mask = np.zeros(flat.shape, dtype=np.uint8)
    finite = np.isfinite(flat)
    mask[~finite | (flat < settings.dead_flat_level)] |= MaskBit.BAD.value
    mask[finite & (flat >= settings.dead_flat_level) & (flat < settings.low_flat_level)] |= MaskBit.LOW_FLAT.value
    if dark_rate_adu is not None:
        rate_e = dark_rate_adu * gain
        median = float(np.median(rate_e[:: max(1, rate_e.shape[0] // 512)]))
        threshold = median + max(settings.hot_pixel_rate, settings.hot_pixel_sigma * _robust_sigma(rate_e))
        mask[rate_e > threshold] |= MaskBit.BAD.value
    return mask


# --- the file side: combining many frames in row bands within the memory limit --------------------

BYTES_PER_STACK_VALUE = 16  # float32 stack, its float32 reads and the combine's temporaries (a margin)


def band_height(n_frames: int, width: int, memory_bytes: float) -> int:
    """Rows per band so that ``n_frames`` bands and the clipping temporaries fit in ``memory_bytes``."""
    rows = int(memory_bytes // (max(n_frames, 1) * width * BYTES_PER_STACK_VALUE))
    return max(16, rows)


def _subtract_and_scale(stack: np.ndarray, band: slice, subtract: list[np.ndarray] | None,
                       divisors: np.ndarray | None) -> None:
    if subtract is not None:
        for index, dark in enumerate(subtract):
            stack[index] -= dark[band]
    if divisors is not None:
        stack /= divisors


def combine_files(paths: list[Path], shape: tuple[int, int], sigma: float, memory_bytes: float,
                  subtract: list[np.ndarray] | None = None, scales: Iterable[float] | None = None,
                  hdus: list[int] | None = None, workers: int | None = None) -> np.ndarray:
    """Combine the primary images of ``paths`` band by band, each band on ``workers`` threads
    (default: every CPU this process may use).

    ``subtract`` (one full-frame array per path, e.g. the dark for that frame's exposure time; the
    same array object may serve several frames) is removed from every frame first, and ``scales`` (one
    number per frame) divide each frame afterwards: that is how flats are normalised before the combine
    without ever holding more than one band of every flat. ``hdus``: the image HDU of each file.
    """
    result = np.empty(shape, dtype=np.float32)
    divisors = None if scales is None else np.asarray(list(scales), dtype=np.float32)[:, None, None]
    rows = band_height(len(paths), shape[1], memory_bytes)
    workers = cpu_count() if workers is None else workers
    for band, stack in iter_row_bands(paths, shape[0], rows, hdus):
        _subtract_and_scale(stack, band, subtract, divisors)
        result[band] = combine_stack_threaded(stack, sigma, workers)
    return result


def median_levels(paths: list[Path], shape: tuple[int, int], subtract: list[np.ndarray] | None,
                  memory_bytes: float, hdus: list[int] | None = None) -> list[float]:
    """Median of each (dark-subtracted) frame, from a sparse pixel grid read band by band."""
    step = 4
    samples: list[list[np.ndarray]] = [[] for _ in paths]
    rows = band_height(len(paths), shape[1], memory_bytes)
    for band, stack in iter_row_bands(paths, shape[0], rows, hdus):
        _subtract_and_scale(stack, band, subtract, None)
        for index in range(len(paths)):
            samples[index].append(stack[index, ::step, ::step].ravel())
    return [float(np.median(np.concatenate(parts))) for parts in samples]


def flat_level_usable(level: float, level_range: tuple[float, float]) -> bool:
    """A sky flat is usable when its dark-subtracted median is inside ``level_range`` (ADU): below it
    the twilight was too dark or clouds dimmed it (noise and stars dominate), above it the sky is
    near saturation and the CCD no longer responds linearly."""
    low, high = level_range
    return max(low, 0.0) < level <= high


def flat_from_files(paths: list[Path], shape: tuple[int, int], darks: list[np.ndarray], sigma: float,
                    memory_bytes: float, hdus: list[int] | None = None,
                    level_range: tuple[float, float] = (0.0, float("inf"))) -> tuple[np.ndarray, list[float]]:
    """Master flat: dark-subtracted sky flats, each normalised by its median, combined, normalised to 1.

    ``darks`` holds the dark to subtract from each flat. Returns the flat and the sky levels (ADU) of
    the input flats, which the ledger records; flats whose level is outside ``level_range`` are left out.
    """
    levels = median_levels(paths, shape, darks, memory_bytes, hdus)
    keep = [index for index, level in enumerate(levels) if flat_level_usable(level, level_range)]
    if not keep:
        raise ValueError(f"no sky flat has a usable level (medians {[round(v) for v in levels]} ADU, "
                         f"usable {level_range[0]:g}-{level_range[1]:g})")
    combined = combine_files([paths[i] for i in keep], shape, sigma, memory_bytes,
                             subtract=[darks[i] for i in keep], scales=[levels[i] for i in keep],
                             hdus=None if hdus is None else [hdus[i] for i in keep])
    return normalise(combined), levels
