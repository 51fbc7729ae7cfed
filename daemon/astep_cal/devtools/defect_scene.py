"""One frame with placed defects, hits and stars (``defect_scene``): the truth for the cosmic-ray,
error-map and photometry tests at the places that went wrong (hits beside dead columns and hot pixels,
on frame edges, on stars' wings, beside saturated stars)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy.special import erf

from astep_cal.devtools.sensor import SATURATION_ADU
from astep_cal.devtools.sky import render_stars


@dataclass
class DefectScene:
    """One science frame with its masters, built in memory, and the truth to judge its calibration.

    Unlike :func:`make_night` (random Tycho-2 fields written as files), everything hard is *placed*:
    cosmic rays next to dead columns and hot pixels, on the frame edges, on stars' wings and beside
    saturated stars, so a test can count exactly what happens at each kind of place. The masters are
    made from simulated raw darks and sky flats with the pipeline's own combine, so their noise is real.
    """

    raw: np.ndarray  # science frame, ADU (float32)
    dark: np.ndarray  # master dark, ADU
    flat: np.ndarray  # master flat, median 1
    n_darks: int
    n_flats: int
    flat_levels_adu: list[float]  # dark-subtracted median of each sky flat
    bad: np.ndarray  # bool: dead columns and hot pixels (what the bad-pixel mask should hold)
    truth_e: np.ndarray  # noiseless sky + stars, electrons, as the calibrated frame should read
    cosmic: np.ndarray  # bool: pixels hit by a placed cosmic ray
    cosmic_place: np.ndarray  # int8: 0 none, 1 random sky, 2 beside a dead column, 3 beside a hot pixel,
    #                           4 frame edge, 5 star wing, 6 beside a saturated star
    stars: Table  # x, y (0-based px), flux_e, peak_e, saturated (bool)
    true_flat: np.ndarray
    gain: float
    read_noise_e: float
    sky_e: float
    exptime: float
    dark_e_per_s: float


COSMIC_PLACES = {1: "sky", 2: "beside a dead column", 3: "beside a hot pixel", 4: "frame edge",
                 5: "star wing", 6: "beside a saturated star"}


def _grid_stars(shape: tuple[int, int], spacing: int, rng: np.random.Generator, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Star centres on a jittered grid: isolated by construction (``spacing`` px apart)."""
    ys, xs = np.meshgrid(np.arange(margin, shape[0] - margin, spacing, dtype=float),
                         np.arange(margin, shape[1] - margin, spacing, dtype=float), indexing="ij")
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    return xs, ys


def defect_scene(shape: tuple[int, int] = (512, 512), *, seed: int = 3, sky_e: float = 1200.0,
                 exptime: float = 60.0, gain: float = 2.0, read_noise_e: float = 9.0, bias_adu: float = 1000.0,
                 dark_e_per_s: float = 0.2, n_darks: int = 5, n_flats: int = 5, flat_level_e: float = 60000.0,
                 dead_columns: tuple[int, ...] = (61, 200, 333, 334), hot_fraction: float = 1 / 500,
                 fwhm_px: float = 2.5, star_spacing: int = 24, n_saturated: int = 4,
                 random_tracks: int = 60, combine_sigma: float = 3.0) -> DefectScene:
    """Build a :class:`DefectScene` (see there); every random draw comes from ``seed``."""
    from astep_cal.science.masters import combine_stack, normalise

    rng = np.random.default_rng([seed, shape[0], shape[1], 14])
    ny, nx = shape
    sigma = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    true_flat = (rng.normal(1.0, 0.01, shape) * np.linspace(0.9, 1.05, nx)[None, :]).astype(np.float32)
    bad = np.zeros(shape, bool)
    for column in dead_columns:
        true_flat[:, column] = 0.02
        bad[:, column] = True
    true_flat /= np.float32(np.median(true_flat))  # the masters' convention: median 1, dead pixels included
    hot_rate = np.zeros(shape, np.float32)
    hot = (rng.random(shape) < hot_fraction) & ~bad
    hot_rate[hot] = rng.uniform(20.0, 400.0, int(hot.sum()))
    bad |= hot
    bias = (bias_adu + rng.normal(0.0, 1.0, shape)).astype(np.float32)  # a fixed pattern of ~1 ADU

    def expose(electrons: np.ndarray) -> np.ndarray:
        noisy = rng.poisson(np.clip(electrons, 0, None)).astype(np.float32)
        noisy += rng.normal(0.0, read_noise_e, shape).astype(np.float32)
        return noisy / np.float32(gain) + bias

    dark_e = np.float32(dark_e_per_s * exptime) + hot_rate * np.float32(exptime)
    dark = combine_stack(np.stack([expose(dark_e) for _ in range(n_darks)]), combine_sigma)
    flat_exptime = 5.0
    flat_dark_e = np.float32(dark_e_per_s * flat_exptime) + hot_rate * np.float32(flat_exptime)
    flat_dark = combine_stack(np.stack([expose(flat_dark_e) for _ in range(n_darks)]), combine_sigma)
    levels, normalised = [], []
    for _ in range(n_flats):
        level = flat_level_e * rng.uniform(0.8, 1.2)
        frame = expose(level * true_flat + flat_dark_e) - flat_dark
        median = float(np.median(frame))
        levels.append(median)
        normalised.append(frame / np.float32(median))
    flat = normalise(combine_stack(np.stack(normalised), combine_sigma))

    xs, ys = _grid_stars(shape, star_spacing, rng, margin=12)
    flux = np.exp(rng.uniform(np.log(2e3), np.log(3e5), xs.size))
    saturated = np.zeros(xs.size, bool)
    saturated[rng.choice(xs.size, n_saturated, replace=False)] = True
    flux[saturated] = rng.uniform(3e6, 6e6, n_saturated)  # peaks well above 65535 ADU
    truth = np.full(shape, sky_e, np.float32)
    render_stars(truth, xs, ys, flux, sigma)
    peak = 0.5 * (erf(0.5 / (np.sqrt(2.0) * sigma)) * 2.0) ** 2 * flux / 2.0  # centred pixel's share
    stars = Table({"x": xs, "y": ys, "flux_e": flux, "peak_e": peak, "saturated": saturated})

    charge = np.zeros(shape, np.float32)
    place = np.zeros(shape, np.int8)

    def hit(y: int, x: int, kind: int) -> None:
        if 0 <= y < ny and 0 <= x < nx and not bad[y, x] and place[y, x] == 0:
            charge[y, x] += np.float32(np.exp(rng.uniform(np.log(500.0), np.log(20000.0))))
            place[y, x] = kind

    def track(y: int, x: int, kind: int) -> None:
        """1-4 pixels in a random direction from (y, x)."""
        dy, dx = [(0, 1), (1, 0), (1, 1), (1, -1)][int(rng.integers(4))]
        for step in range(int(rng.integers(1, 5))):
            hit(y + step * dy, x + step * dx, kind)

    for column in dead_columns:
        for y in rng.choice(np.arange(4, ny - 4), 12, replace=False):
            side = int(rng.choice([-1, 1]))
            if column + side not in dead_columns:
                track(int(y), column + side, 2)
    hot_y, hot_x = np.nonzero(hot)
    for index in rng.choice(len(hot_y), min(40, len(hot_y)), replace=False):
        dy, dx = [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1)][int(rng.integers(6))]
        hit(int(hot_y[index] + dy), int(hot_x[index] + dx), 3)
    for position in rng.integers(0, min(ny, nx), 10):
        for y, x in ((0, position), (ny - 1, position), (position, 0), (position, nx - 1)):
            hit(int(y), int(x), 4)
    ordinary = np.flatnonzero(~saturated)
    for index in rng.choice(ordinary, min(60, ordinary.size), replace=False):
        angle = rng.uniform(0, 2 * np.pi)
        radius = rng.uniform(2.0, 3.0) * sigma + 1.0
        y, x = int(round(ys[index] + radius * np.sin(angle))), int(round(xs[index] + radius * np.cos(angle)))
        hit(y, x, 5)
        hit(y + int(rng.integers(-1, 2)), x + int(rng.integers(-1, 2)), 5)
    for index in np.flatnonzero(saturated):
        for _ in range(3):
            angle = rng.uniform(0, 2 * np.pi)
            radius = rng.uniform(9.0, 11.0)
            track(int(round(ys[index] + radius * np.sin(angle))), int(round(xs[index] + radius * np.cos(angle))), 6)
    for _ in range(random_tracks):
        track(int(rng.integers(0, ny)), int(rng.integers(0, nx)), 1)

    raw = expose(truth * true_flat + dark_e)
    raw += charge / np.float32(gain)
    np.clip(raw, 0, SATURATION_ADU, out=raw)
    raw = np.rint(raw).astype(np.float32)
    return DefectScene(raw=raw, dark=dark, flat=flat, n_darks=n_darks, n_flats=n_flats, flat_levels_adu=levels,
                       bad=bad, truth_e=truth, cosmic=place > 0, cosmic_place=place, stars=stars,
                       true_flat=true_flat, gain=gain, read_noise_e=read_noise_e, sky_e=sky_e, exptime=exptime,
                       dark_e_per_s=dark_e_per_s)
