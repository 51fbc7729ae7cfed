"""The detector, measured from a night's own calibration frames: read noise, gain and dark current.

Why: the noise model (``ERR``, the cosmic-ray step's thresholds, the catalogue's errors) rests on the
gain and the read noise. A camera whose headers carry no ``GAIN``/``RDNOISE`` was calibrated with
configured defaults, and a wrong read noise made ``ERR`` 1.6x too small and thousands of false
cosmic rays per frame. The frames to measure both are taken every night anyway.

* Read noise (ADU) from two biases, or two darks of one exposure time: ``std(b1 - b2) / sqrt(2)``. The
  difference removes the fixed pattern (bias structure, hot pixels); a robust std (MAD) ignores the
  cosmic rays and the hot pixels' own shot noise.
* Gain (e-/ADU) from two sky flats by photon transfer. With ``f1``, ``f2`` the dark-subtracted flats
  and ``m1``, ``m2`` their levels (ADU), ``var(f1/m1 - f2/m2) = (1/m1 + 1/m2)/g + s^2 (1/m1^2 + 1/m2^2)``
  (``s`` the read noise in ADU): the pixel-to-pixel flat cancels in the normalised difference. The
  photon term of a pixel scales with its response ``r`` (vignetting, dust), so the difference is
  divided by ``sqrt(r)`` first; slow gradients (twilight sky differs between flats) are taken out by
  subtracting each block's median.
* Dark current (ADU/s) from a master dark and the bias: the median of ``(dark - bias) / t``.

Pure functions on arrays: inputs are never changed; each result says how many pairs it rests on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLOCK = 32  # px: block whose median is removed from a difference (slow gradients between two frames)
MAX_SAMPLE = 1_000_000  # pixels used by one robust statistic (more adds nothing but time)
MAD_TO_SIGMA = 1.482602218505602
CLIP = 4.0  # sigmas: values further from the mean are outliers
CLIPPED_STD_FACTOR = 0.99946  # std of a unit Gaussian clipped at +-4 sigma


@dataclass(frozen=True)
class Measurement:
    """One detector figure: the median over pairs, the number of pairs, and each pair's value."""

    value: float
    n_pairs: int
    per_pair: tuple[float, ...]


def border_mask(shape: tuple[int, int], trim: int) -> np.ndarray:
    """True on the ``trim`` outermost pixels of each edge (ASTEP's frames: 30 unusable pixels)."""
    border = np.zeros(shape, bool)
    if trim > 0:
        border[:trim, :] = border[-trim:, :] = True
        border[:, :trim] = border[:, -trim:] = True
    return border


def _without_gradients(difference: np.ndarray) -> np.ndarray:
    """``difference`` less the median of each BLOCK x BLOCK block (edges cropped to whole blocks)."""
    ny, nx = (s // BLOCK * BLOCK for s in difference.shape)
    if ny == 0 or nx == 0:
        return difference - np.nanmedian(difference)
    blocks = difference[:ny, :nx].reshape(ny // BLOCK, BLOCK, nx // BLOCK, BLOCK)
    return (blocks - np.nanmedian(blocks, axis=(1, 3), keepdims=True)).reshape(ny, nx)


def robust_std(values: np.ndarray) -> float:
    """Standard deviation of the finite values (a sparse sample of at most MAX_SAMPLE) clipped at
    CLIP sigmas about their mean, iterated from the MAD: cosmic rays, hot pixels and stars are far
    out and ignored. Not the MAD alone: on integer ADU differences the MAD is a multiple of 1/2 and
    a read noise of ~10 ADU would be off by up to 4 %."""
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size < 100:
        raise ValueError(f"only {finite.size} usable pixels")
    sample = finite[:: max(1, finite.size // MAX_SAMPLE)]
    centre = float(np.median(sample))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(sample - centre))) or float(np.std(sample))
    for _ in range(4):
        kept = sample[np.abs(sample - centre) < CLIP * sigma]
        centre, sigma = float(np.mean(kept)), float(np.std(kept))
    return sigma / CLIPPED_STD_FACTOR


def _usable(shape: tuple[int, int], usable: np.ndarray | None) -> np.ndarray:
    return np.ones(shape, bool) if usable is None else usable


def pair_read_noise(first: np.ndarray, second: np.ndarray, usable: np.ndarray | None = None) -> float:
    """Read noise (ADU) from two biases or two darks of one exposure time: robust std of the difference
    (gradients removed) over the ``usable`` pixels, divided by sqrt(2)."""
    difference = _without_gradients(np.subtract(first, second, dtype=np.float32))
    keep = _usable(first.shape, usable)[: difference.shape[0], : difference.shape[1]]
    return robust_std(difference[keep]) / np.sqrt(2.0)


def pair_gain(first: np.ndarray, second: np.ndarray, read_noise_adu: float,
              usable: np.ndarray | None = None) -> float:
    """Gain (e-/ADU) from two dark-subtracted sky flats of any two levels (photon transfer, see above)."""
    keep = _usable(first.shape, usable) & np.isfinite(first) & np.isfinite(second)
    m1, m2 = float(np.median(first[keep])), float(np.median(second[keep]))
    if m1 <= 0 or m2 <= 0:
        raise ValueError(f"a sky flat has no positive level ({m1:.0f}, {m2:.0f} ADU)")
    n1, n2 = (first / np.float32(m1)).astype(np.float32), (second / np.float32(m2)).astype(np.float32)
    response = 0.5 * (n1 + n2)
    keep &= response > 0.5  # dead and deeply shadowed pixels say little and scale badly
    scaled = _without_gradients(np.where(keep, (n1 - n2) / np.sqrt(np.clip(response, 0.5, None)), np.nan))
    variance = robust_std(scaled[keep[: scaled.shape[0], : scaled.shape[1]]]) ** 2
    read_term = read_noise_adu ** 2 * (1 / m1 ** 2 + 1 / m2 ** 2) * float(np.mean(1.0 / response[keep]))
    photon = variance - read_term
    if photon <= 0:
        raise ValueError("the flats' difference is no noisier than the read noise")
    return (1 / m1 + 1 / m2) / photon


def read_noise_adu(pairs: Sequence[tuple[np.ndarray, np.ndarray]], usable: np.ndarray | None = None) -> Measurement:
    """Read noise (ADU) from several pairs of biases or equal darks: the median of the pairs' values."""
    values = tuple(float(pair_read_noise(a, b, usable)) for a, b in pairs)
    if not values:
        raise ValueError("no pair of biases or equal darks")
    return Measurement(float(np.median(values)), len(values), values)


def gain_e_per_adu(pairs: Sequence[tuple[np.ndarray, np.ndarray]], read_noise: float,
                   usable: np.ndarray | None = None) -> Measurement:
    """Gain (e-/ADU) from several pairs of dark-subtracted sky flats: the median of the pairs' values.
    ``read_noise`` in ADU (its term is ~1 % of the variance of bright flats: an estimate will do)."""
    values = tuple(float(pair_gain(a, b, read_noise, usable)) for a, b in pairs)
    if not values:
        raise ValueError("no pair of sky flats")
    return Measurement(float(np.median(values)), len(values), values)


def dark_current_adu_s(master_dark: np.ndarray, bias: np.ndarray, exptime: float,
                       usable: np.ndarray | None = None) -> float:
    """Median dark current (ADU/s) of a master dark of ``exptime`` seconds over the ``usable`` pixels."""
    if exptime <= 0:
        raise ValueError("a dark of 0 s holds no dark current")
    current = np.subtract(master_dark, bias, dtype=np.float32)[_usable(master_dark.shape, usable)]
    return float(np.median(current[np.isfinite(current)])) / exptime


@dataclass(frozen=True)
class NoiseModel:
    """The gain and read noise one frame is calibrated with, and where each came from
    (``header``, ``measured`` or ``default``): ``ERR``, the cosmic-ray step and the catalogue use it."""

    gain: float  # e-/ADU
    gain_source: str
    read_noise_e: float
    read_noise_source: str


def _positive(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value)) and value > 0


def resolve_noise(header_gain: float | None, header_read_noise_e: float | None, measured_gain: float | None,
                  measured_read_noise_adu: float | None, default_gain: float,
                  default_read_noise_e: float) -> NoiseModel:
    """Header value when present, else the night's measurement, else the configured default.

    A measured read noise is in ADU: it is turned into electrons with the gain the frame is calibrated
    with (whatever its source), which is the read noise of the calibrated data's own units.
    """
    if _positive(header_gain):
        gain, gain_source = float(header_gain), "header"
    elif _positive(measured_gain):
        gain, gain_source = float(measured_gain), "measured"
    else:
        gain, gain_source = float(default_gain), "default"
    if _positive(header_read_noise_e):
        return NoiseModel(gain, gain_source, float(header_read_noise_e), "header")
    if _positive(measured_read_noise_adu):
        return NoiseModel(gain, gain_source, float(measured_read_noise_adu) * gain, "measured")
    return NoiseModel(gain, gain_source, float(default_read_noise_e), "default")


def mismatch(value: float, measured: float | None, tolerance: float = 0.2) -> bool:
    """Whether a configured or header ``value`` is more than ``tolerance`` (relative) from the measurement."""
    return _positive(measured) and abs(value - measured) > tolerance * measured
