"""The synthetic detector: flat field (with dust), bias pattern, hot pixels, and electrons turned
into raw ADU (noise, bias, dark current, saturation). Fixed by ``sensor_seed``: two nights of one sensor
share a flat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from astep_cal.devtools.synthetic import NightSpec

SATURATION_ADU = 65535
_ROW_BAND = 256  # rows per band when drawing noise: bounds the int64 Poisson temporaries
_KIND_CODE = {"SCIENCE": 1, "DARK": 2, "BIAS": 3, "SKYFLAT": 4, "FLATDARK": 5}

@dataclass(frozen=True)
class Sensor:
    """The fixed properties of the detector, shared by every night with the same sensor_seed."""

    flat: np.ndarray  # float32, median 1
    bias_pattern: np.ndarray  # float32 ADU, added to bias_adu
    hot_index: np.ndarray  # flat (raveled) indices of the hot pixels
    hot_rate: np.ndarray  # their dark current, e-/s


# ------------------------------------------------------------------------------------------- sensor

def _sensor_rng(spec: NightSpec, part: int) -> np.random.Generator:
    return np.random.default_rng([spec.sensor_seed, spec.shape[0], spec.shape[1], part])


def frame_rng(spec: NightSpec, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _KIND_CODE[kind], index])


def make_flat(spec: NightSpec) -> np.ndarray:
    """The true flat: vignetting (~0.8 in the corners), dust donuts, 1 % pixel noise, dead column."""
    rng = _sensor_rng(spec, 1)
    ny, nx = spec.shape
    cy, cx = (ny - 1) / 2.0 + rng.uniform(-0.03, 0.03) * ny, (nx - 1) / 2.0 + rng.uniform(-0.03, 0.03) * nx
    y2 = ((np.arange(ny, dtype=np.float32) - np.float32(cy)) ** 2)[:, None]
    x2 = ((np.arange(nx, dtype=np.float32) - np.float32(cx)) ** 2)[None, :]
    corner2 = np.float32(((ny - 1) / 2.0) ** 2 + ((nx - 1) / 2.0) ** 2)
    flat = np.float32(1.0) - np.float32(0.2) * (y2 + x2) / corner2
    _add_dust(flat, rng)
    if spec.flat_ring:
        flat *= ring_shadow(flat.shape, *spec.flat_ring)
    noise = rng.standard_normal(size=flat.shape, dtype=np.float32)
    noise *= np.float32(0.01)
    noise += np.float32(1.0)
    flat *= noise
    del noise
    live = np.ones(nx, bool)
    if spec.dead_column is not None:
        live[spec.dead_column] = False
    flat /= np.float32(np.median(flat[:, live]))
    if spec.dead_column is not None:
        flat[:, spec.dead_column] = np.float32(0.02)
    return flat


def _add_dust(flat: np.ndarray, rng: np.random.Generator) -> None:
    """3-6 out-of-focus dust shadows: rings (the central obstruction makes them donuts), in place."""
    ny, nx = flat.shape
    size_scale = min(ny, nx) / 1024.0
    for _ in range(int(rng.integers(3, 7))):
        r_out = 0.5 * rng.uniform(20.0, 60.0) * size_scale
        r_in = 0.4 * r_out
        depth = rng.uniform(0.05, 0.15)
        edge = max(0.8, 0.04 * r_out)
        margin = r_out + 3
        cy, cx = rng.uniform(margin, ny - margin), rng.uniform(margin, nx - margin)
        y0, y1 = int(max(0, cy - margin)), int(min(ny, cy + margin + 1))
        x0, x1 = int(max(0, cx - margin)), int(min(nx, cx + margin + 1))
        r = np.hypot(np.arange(y0, y1)[:, None] - cy, np.arange(x0, x1)[None, :] - cx)
        ring = 1.0 / (1.0 + np.exp(-(r - r_in) / edge)) / (1.0 + np.exp(-(r_out - r) / edge))
        flat[y0:y1, x0:x1] *= (1.0 - depth * ring).astype(np.float32)


def ring_shadow(shape: tuple[int, int], x: float, y: float, r_in: float, r_out: float, depth: float) -> np.ndarray:
    """A donut (an out-of-focus ice crystal or dust grain): 1 - depth between r_in and r_out, soft edges."""
    r = np.hypot(np.arange(shape[0])[:, None] - y, np.arange(shape[1])[None, :] - x)
    ring = 1.0 / (1.0 + np.exp(-(r - r_in) / 1.5)) / (1.0 + np.exp(-(r_out - r) / 1.5))
    return (1.0 - depth * ring).astype(np.float32)


def _bias_pattern(spec: NightSpec) -> np.ndarray:
    """A fixed pattern of a few ADU: column structure, a slow row gradient and per-pixel offsets."""
    rng = _sensor_rng(spec, 2)
    ny, nx = spec.shape
    columns = np.cumsum(rng.normal(0.0, 0.3, nx))
    columns = (2.0 * (columns - columns.mean()) / max(np.ptp(columns), 1e-9)).astype(np.float32)
    rows = np.linspace(-1.0, 1.0, ny, dtype=np.float32)
    pattern = rng.standard_normal(size=spec.shape, dtype=np.float32)
    pattern += columns[None, :]
    pattern += rows[:, None]
    return pattern


def _hot_pixels(spec: NightSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raveled indices of the hot pixels (never on the dead column) and their dark current (e-/s)."""
    rng = _sensor_rng(spec, 3)
    ny, nx = spec.shape
    n = min(spec.n_hot_pixels, ny * nx // 4)
    chosen = np.unique(rng.integers(0, ny * nx, size=4 * n + 16))
    if spec.dead_column is not None:
        chosen = chosen[chosen % nx != spec.dead_column]
    chosen = rng.permutation(chosen)[:n]
    rate = rng.uniform(20.0, 400.0, size=len(chosen))
    order = np.argsort(chosen)
    return chosen[order], rate[order]


def make_sensor(spec: NightSpec) -> Sensor:
    hot_index, hot_rate = _hot_pixels(spec)
    return Sensor(flat=make_flat(spec), bias_pattern=_bias_pattern(spec), hot_index=hot_index,
                   hot_rate=hot_rate)




def to_raw(electrons: np.ndarray, sensor: Sensor, spec: NightSpec, rng: np.random.Generator,
            cr: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Expected electrons -> raw uint16 ADU: Poisson + read noise, cosmic rays, bias, gain, clip.

    ``electrons`` is consumed (overwritten band by band) so a 4096² frame needs no other full-size
    float temporary.
    """
    ny = electrons.shape[0]
    raw = np.empty(electrons.shape, np.uint16)
    for r0 in range(0, ny, _ROW_BAND):
        band = electrons[r0:r0 + _ROW_BAND]
        noisy = rng.poisson(np.clip(band, 0, None)).astype(np.float32)
        noisy += rng.standard_normal(size=band.shape, dtype=np.float32) * np.float32(spec.read_noise_e)
        band[...] = noisy
    if cr is not None and len(cr[0]):
        electrons.reshape(-1)[cr[0]] += cr[1]
    for r0 in range(0, ny, _ROW_BAND):
        band = electrons[r0:r0 + _ROW_BAND]
        band /= np.float32(spec.gain)
        band += sensor.bias_pattern[r0:r0 + _ROW_BAND]
        band += np.float32(spec.bias_adu)
        np.rint(band, out=band)
        np.clip(band, 0, SATURATION_ADU, out=band)
        raw[r0:r0 + _ROW_BAND] = band
    return raw


def dark_electrons(spec: NightSpec, sensor: Sensor, exptime: float, signal: np.ndarray | None) -> np.ndarray:
    """Expected electrons before noise: flat * signal (if any) + dark current (hot pixels included)."""
    if signal is None:
        electrons = np.full(spec.shape, spec.dark_e_per_s * exptime, np.float32)
    else:
        electrons = signal
        electrons *= sensor.flat
        electrons += np.float32(spec.dark_e_per_s * exptime)
    electrons.reshape(-1)[sensor.hot_index] += (sensor.hot_rate * exptime).astype(np.float32)
    return electrons


