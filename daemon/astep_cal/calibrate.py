"""Calibrating one science frame: a pure function of the raw pixels and the masters.

Order (the user's guide's steps, with the old pipeline's unit bug fixed):

1. saturated pixels are found on the raw ADU values, before anything changes them;
2. dark subtraction (the dark already holds the bias, or was scaled around it: see ``masters``);
3. division by the flat (dead pixels are divided by 1 and masked instead);
4. ADU -> electrons with the gain;
5. bad pixels are replaced by the sky level so they cannot pass for stars or cosmic rays;
6. cosmic rays are found and replaced by astroscrappy (L.A.Cosmic) on the data *in electrons*, so its
   gain is 1 and its saturation level is the electron equivalent of the raw saturation level.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import astroscrappy
import astroscrappy.astroscrappy as _scrappy_core
import numpy as np

from .config import CosmicSettings
from .masters import MaskBit


_LEAKY_DILATE5 = getattr(_scrappy_core, "dilate5", None)


def dilate5_without_leak(data: np.ndarray, niter: int) -> np.ndarray:
    """astroscrappy's ``dilate5``, one iteration at a time.

    Every ``detect_cosmics`` call dilates the saturation mask with ``dilate5(satpixels, 2)``; for
    ``niter > 1`` its C helper ``PyDilate5`` (``utils/imutils.c``, astroscrappy 1.3.0) mallocs an
    ``nx * ny`` byte scratch array and never frees it: one frame's worth of bytes lost per call, 17 MB a
    4096² frame, ~17 GB for a 1000-frame night in the long-running daemon (found by ``make soak``:
    +0.84 MB a night of three 512² frames, none of it Python objects). With ``niter == 1`` the helper
    returns before that allocation, and n single passes are the same dilation as one call of n
    iterations (the helper copies the output back in as the next input), so the result is identical.
    """
    output = _LEAKY_DILATE5(data, 1)
    for _ in range(niter - 1):
        output = _LEAKY_DILATE5(output, 1)
    return output


if _LEAKY_DILATE5 is not None:  # detect_cosmics looks dilate5 up in its module's globals at each call
    _scrappy_core.dilate5 = dilate5_without_leak


class CalibrationError(ValueError):
    """A frame that cannot be calibrated with the masters given (e.g. different dimensions)."""


@dataclass
class CalibratedFrame:
    data: np.ndarray  # float32, electrons
    mask: np.ndarray  # uint8, MaskBit values
    n_cosmic: int  # pixels replaced as cosmic-ray hits
    n_saturated: int
    sky_e: float  # median of the calibrated frame


def sky_level(data: np.ndarray, usable: np.ndarray) -> float:
    """Median of the usable pixels on a sparse grid: the sky, cheaply (stars are a small fraction)."""
    step = max(1, data.shape[0] // 512)
    sample = data[::step, ::step][usable[::step, ::step]]
    return float(np.median(sample)) if sample.size else 0.0


COSMIC_BYTES_PER_PIXEL = 64  # astroscrappy's peak working memory per pixel (measured ~1 GB for 4096²)
COSMIC_BAND_MARGIN = 32  # rows of context above and below a band: well beyond L.A.Cosmic's 7x7 filters


EDGE_PAD = 8  # mirrored pixels around the frame: L.A.Cosmic misses hits on the outermost rows otherwise


def _detect_padded(data: np.ndarray, inmask: np.ndarray, **parameters) -> tuple[np.ndarray, np.ndarray]:
    """astroscrappy with the frame mirrored outwards by EDGE_PAD pixels, so edge hits look like hits."""
    padded = np.pad(data, EDGE_PAD, mode="reflect")
    padded_mask = np.pad(inmask, EDGE_PAD, mode="reflect")
    cosmic, cleaned = astroscrappy.detect_cosmics(padded, inmask=padded_mask, **parameters)
    inner = (slice(EDGE_PAD, -EDGE_PAD), slice(EDGE_PAD, -EDGE_PAD))
    return cosmic[inner], cleaned[inner]


def detect_cosmics_in_bands(data: np.ndarray, inmask: np.ndarray, max_pixels: int | None,
                            **parameters) -> tuple[np.ndarray, np.ndarray]:
    """astroscrappy on the whole frame, or on overlapping row bands when memory is short.

    Each band is processed with ``COSMIC_BAND_MARGIN`` extra rows on both sides and only its centre
    is kept, so the result matches a whole-frame run while peak memory follows the band, not the
    frame: this is how ``--mem-limit`` also bounds the cosmic-ray step.
    """
    rows = data.shape[0]
    if max_pixels is None or data.size <= max_pixels:
        return _detect_padded(data, inmask, **parameters)
    height = max(4 * COSMIC_BAND_MARGIN, max_pixels // data.shape[1] - 2 * COSMIC_BAND_MARGIN)
    mask = np.zeros(data.shape, dtype=bool)
    cleaned = np.empty_like(data)
    for start in range(0, rows, height):
        stop = min(start + height, rows)
        lo, hi = max(0, start - COSMIC_BAND_MARGIN), min(rows, stop + COSMIC_BAND_MARGIN)
        band_mask, band_clean = _detect_padded(data[lo:hi], inmask[lo:hi], **parameters)
        mask[start:stop] = band_mask[start - lo: stop - lo]
        cleaned[start:stop] = band_clean[start - lo: stop - lo]
    return mask, cleaned


REPAIR_WINDOW = 7  # side of the window whose clean pixels estimate the background under a hit


def _window_medians(image: np.ndarray, excluded: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Median of the non-excluded pixels of ``image`` in a square window around each (y, x).

    Gathered only at the given pixels (a few thousand), not filtered over the whole frame: a full
    median filter of a 4096² frame would cost more than the cosmic-ray detection itself.
    """
    if not len(ys):
        return np.empty(0, dtype=image.dtype)
    half = REPAIR_WINDOW // 2
    offsets = np.arange(-half, half + 1)
    wy = np.clip(ys[:, None, None] + offsets[None, :, None], 0, image.shape[0] - 1)
    wx = np.clip(xs[:, None, None] + offsets[None, None, :], 0, image.shape[1] - 1)
    values = np.where(excluded[wy, wx], np.nan, image[wy, wx]).reshape(len(ys), -1)
    with warnings.catch_warnings():  # a window with no clean pixel: fall back to the pixel itself
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(values, axis=1)
    return np.where(np.isfinite(medians), medians, image[ys, xs])


def _ring(flagged: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major coordinates of the 8-neighbours of ``flagged`` pixels that are neither flagged nor
    ``excluded``: a 3x3 binary dilation minus the flagged pixels, computed from the few thousand flagged
    pixels instead of over the whole frame (a full-frame dilation of 4096² costs ~0.25 s a round)."""
    ys, xs = np.nonzero(flagged)
    offsets = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    ny, nx = flagged.shape
    yy = (ys[:, None] + offsets[:, 0]).ravel()
    xx = (xs[:, None] + offsets[:, 1]).ravel()
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    linear = np.unique(yy[inside] * nx + xx[inside])
    ry, rx = np.divmod(linear, nx)
    keep = ~flagged[ry, rx] & ~excluded[ry, rx]
    return ry[keep], rx[keep]


def grow_cosmic_mask(data: np.ndarray, cosmic: np.ndarray, bad: np.ndarray, sky_e: float, read_noise_e: float,
                     n_sigma: float = 3.0, rounds: int = 2) -> np.ndarray:
    """The faint edges of cosmic-ray tracks that L.A.Cosmic leaves (wide and diagonal tracks).

    A neighbour of a flagged pixel joins the mask when it stands ``n_sigma`` above the local clean
    background; repeated ``rounds`` times, so a three-pixel-wide track is covered. Never on a star:
    where the local background itself is well above the sky, nothing grows (otherwise a star core
    flagged by mistake would be eaten). Returns only the added pixels. Measured on synthetic nights:
    this lifts the removed fraction of injected cosmic-ray pixels from ~94 % to above 98 %.
    """
    flagged = cosmic.copy()
    sky_sigma = np.sqrt(max(sky_e, 0.0) + read_noise_e ** 2)
    for _ in range(rounds):
        ys, xs = _ring(flagged, bad)
        if not len(ys):
            break
        excluded = flagged | bad
        excluded[ys, xs] = True
        background = _window_medians(data, excluded, ys, xs)
        sigma = np.sqrt(np.clip(background, 0, None) + read_noise_e ** 2)
        on_sky = background < sky_e + n_sigma * sky_sigma
        hits = on_sky & (data[ys, xs] - background > n_sigma * sigma)
        if not hits.any():
            break
        flagged[ys[hits], xs[hits]] = True
    return flagged & ~cosmic


def replace_on_sky(data: np.ndarray, cleaned: np.ndarray, cosmic: np.ndarray, bad: np.ndarray, sky_e: float,
                   read_noise_e: float, n_sigma: float = 3.0) -> np.ndarray:
    """Replace flagged pixels on the sky by the median of the clean pixels around them.

    astroscrappy's ``meanmask`` averages unflagged neighbours, which on a wide track are themselves
    hit; the median of the unflagged pixels in a 7x7 window is robust to that. On a star (local
    background well above the sky) astroscrappy's own estimate is kept, as it follows the profile.
    """
    out = np.asarray(cleaned, dtype=np.float32).copy()
    ys, xs = np.nonzero(cosmic)
    background = _window_medians(data, cosmic | bad, ys, xs)
    on_sky = background < sky_e + n_sigma * np.sqrt(max(sky_e, 0.0) + read_noise_e ** 2)
    out[ys[on_sky], xs[on_sky]] = background[on_sky]
    return out


def calibrate_frame(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, pixel_mask: np.ndarray, *,
                    gain: float, read_noise_e: float, saturation_adu: float,
                    cosmics: CosmicSettings, max_cosmic_pixels: int | None = None) -> CalibratedFrame:
    """Dark, flat, gain, bad pixels and cosmic rays for one frame; no file or state is touched."""
    if raw.shape != dark.shape or raw.shape != flat.shape or raw.shape != pixel_mask.shape:
        raise CalibrationError(f"frame is {raw.shape[1]}x{raw.shape[0]} but the masters are "
                               f"{flat.shape[1]}x{flat.shape[0]}")
    saturated = raw >= saturation_adu
    bad = (pixel_mask & MaskBit.BAD).astype(bool) | ~np.isfinite(raw)  # NaN from a broken readout
    data = np.subtract(raw, dark, dtype=np.float32)
    data /= np.where(bad, np.float32(1), flat)
    data *= np.float32(gain)
    sky = sky_level(data, ~bad & ~saturated)
    data[bad] = sky
    saturation_e = float((saturation_adu - np.median(dark[:: max(1, dark.shape[0] // 256)])) * gain)
    cosmic_mask, cleaned = detect_cosmics_in_bands(
        data, bad, max_cosmic_pixels, sigclip=cosmics.sigclip, sigfrac=cosmics.sigfrac, objlim=cosmics.objlim,
        gain=1.0, readnoise=read_noise_e, satlevel=saturation_e, niter=cosmics.niter,
        sepmed=cosmics.sepmed, cleantype=cosmics.cleantype, fsmode=cosmics.fsmode,
    )
    cosmic_mask |= grow_cosmic_mask(data, cosmic_mask, bad, sky, read_noise_e)
    cleaned = replace_on_sky(data, cleaned, cosmic_mask, bad, sky, read_noise_e)
    mask = pixel_mask.astype(np.uint8, copy=True)
    mask[bad] |= MaskBit.BAD.value
    mask[saturated] |= MaskBit.SATURATED.value
    mask[cosmic_mask] |= MaskBit.COSMIC.value
    return CalibratedFrame(
        data=np.asarray(cleaned, dtype=np.float32),
        mask=mask,
        n_cosmic=int(np.count_nonzero(cosmic_mask)),
        n_saturated=int(np.count_nonzero(saturated)),
        sky_e=sky,
    )
