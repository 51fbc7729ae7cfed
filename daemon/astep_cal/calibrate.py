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

from dataclasses import dataclass

import astroscrappy
import numpy as np

from .config import CosmicSettings
from .masters import MaskBit


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


def detect_cosmics_in_bands(data: np.ndarray, inmask: np.ndarray, max_pixels: int | None,
                            **parameters) -> tuple[np.ndarray, np.ndarray]:
    """astroscrappy on the whole frame, or on overlapping row bands when memory is short.

    Each band is processed with ``COSMIC_BAND_MARGIN`` extra rows on both sides and only its centre
    is kept, so the result matches a whole-frame run while peak memory follows the band, not the
    frame: this is how ``--mem-limit`` also bounds the cosmic-ray step.
    """
    rows = data.shape[0]
    if max_pixels is None or data.size <= max_pixels:
        return astroscrappy.detect_cosmics(data, inmask=inmask, **parameters)
    height = max(4 * COSMIC_BAND_MARGIN, max_pixels // data.shape[1] - 2 * COSMIC_BAND_MARGIN)
    mask = np.zeros(data.shape, dtype=bool)
    cleaned = np.empty_like(data)
    for start in range(0, rows, height):
        stop = min(start + height, rows)
        lo, hi = max(0, start - COSMIC_BAND_MARGIN), min(rows, stop + COSMIC_BAND_MARGIN)
        band_mask, band_clean = astroscrappy.detect_cosmics(data[lo:hi], inmask=inmask[lo:hi], **parameters)
        mask[start:stop] = band_mask[start - lo: stop - lo]
        cleaned[start:stop] = band_clean[start - lo: stop - lo]
    return mask, cleaned


def calibrate_frame(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, pixel_mask: np.ndarray, *,
                    gain: float, read_noise_e: float, saturation_adu: float,
                    cosmics: CosmicSettings, max_cosmic_pixels: int | None = None) -> CalibratedFrame:
    """Dark, flat, gain, bad pixels and cosmic rays for one frame; no file or state is touched."""
    if raw.shape != dark.shape or raw.shape != flat.shape or raw.shape != pixel_mask.shape:
        raise CalibrationError(f"frame is {raw.shape[1]}x{raw.shape[0]} but the masters are "
                               f"{flat.shape[1]}x{flat.shape[0]}")
    saturated = raw >= saturation_adu
    bad = (pixel_mask & MaskBit.BAD).astype(bool)
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
    mask = pixel_mask.astype(np.uint8, copy=True)
    mask[saturated] |= MaskBit.SATURATED.value
    mask[cosmic_mask] |= MaskBit.COSMIC.value
    return CalibratedFrame(
        data=np.asarray(cleaned, dtype=np.float32),
        mask=mask,
        n_cosmic=int(np.count_nonzero(cosmic_mask)),
        n_saturated=int(np.count_nonzero(saturated)),
        sky_e=sky,
    )
