"""What changed in the optics and the detector from one night to the next (pure functions on arrays).

* The master flat against the previous night's own flat: their ratio, normalised to 1, shows what
  moved in the light path. Ice or dust on the camera window throws out-of-focus shadows — rings
  ("donuts", the central obstruction's shadow in the middle) tens of pixels wide, a few % deep. Two
  figures: the large-scale change (robust std of the ratio smoothed over ``large_px``: a changed
  vignetting or illumination) and local structures (connected regions of the ratio, smoothed over a few
  pixels and with the large scale removed, deviating by more than ``threshold``), each with its size
  and depth. Pixel noise of the two flats (~0.3 % each on a good night) stays far below the threshold.
* The night's clear-sky throughput: an upper percentile of its frames' zero points. Clouds only ever
  remove light, so the clearest frames tell the telescope's own throughput; the median would call a
  cloudy night frost.
* Detector figures from the masters: bias level, hot-pixel count, dark current.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from astep_cal.science.zeropoint import robust_std


@dataclass(frozen=True)
class FlatChange:
    """The ratio of two flats: its large-scale robust std and its local structures (largest first)."""

    large_scale_std: float
    structures: list[dict[str, Any]] = field(default_factory=list)
    thumbnail: np.ndarray | None = field(default=None, compare=False, repr=False)  # the ratio, binned small

    def record(self) -> dict[str, Any]:
        return {"large_scale_std": round(self.large_scale_std, 5), "n_structures": len(self.structures),
                "structures": self.structures[:5]}


def _binned(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` averaged in size x size blocks (edges cropped): fast smoothing of a large frame."""
    ny, nx = (image.shape[0] // size) * size, (image.shape[1] // size) * size
    return image[:ny, :nx].reshape(ny // size, size, nx // size, size).mean(axis=(1, 3))


THUMBNAIL_PIXELS = 96  # the ratio map is block-averaged to at most this many pixels a side (summary PNG)


def ratio_thumbnail(ratio: np.ndarray, pixels: int = THUMBNAIL_PIXELS) -> np.ndarray:
    """``ratio`` block-averaged to at most ``pixels`` a side (NaN blocks where it had no good pixel)."""
    factor = max(1, int(np.ceil(max(ratio.shape) / pixels)))
    ny, nx = ratio.shape[0] // factor * factor, ratio.shape[1] // factor * factor
    blocks = ratio[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    good = np.isfinite(blocks).sum(axis=(1, 3))
    total = np.where(np.isfinite(blocks), blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(good > 0, total / np.maximum(good, 1), np.nan).astype(np.float32)


def flat_ratio(flat: np.ndarray, previous: np.ndarray, min_response: float = 0.5) -> np.ndarray:
    """``flat / previous`` normalised to median 1; NaN where either flat is dead or low."""
    ok = np.isfinite(flat) & np.isfinite(previous) & (flat > min_response) & (previous > min_response)
    ratio = np.full(flat.shape, np.nan, np.float32)
    ratio[ok] = flat[ok] / previous[ok]
    ratio /= np.float32(np.nanmedian(ratio[ok])) if ok.any() else np.float32(1.0)
    return ratio


def _large_scale(small: np.ndarray, blocks: int) -> np.ndarray:
    """A median-filtered copy of ``small`` over ~2 x ``blocks``, computed on a 4x coarser grid and
    repeated back (a full-resolution median filter of a 4096² frame's ratio took 6 s)."""
    step = max(1, blocks // 4)
    coarse = _binned(small, step) if step > 1 else small
    smooth = ndimage.median_filter(coarse, size=2 * max(1, blocks // step) + 1, mode="nearest")
    full = np.repeat(np.repeat(smooth, step, axis=0), step, axis=1)
    pad = ((0, small.shape[0] - full.shape[0]), (0, small.shape[1] - full.shape[1]))
    return np.pad(full, pad, mode="edge")


def compare_flats(flat: np.ndarray, previous: np.ndarray, *, threshold: float = 0.01, smooth_px: int = 4,
                  large_px: int = 64, min_pixels: int = 30) -> FlatChange:
    """The change between two master flats of one camera (see the module's docstring).

    Sizes are in pixels of the frame: ``smooth_px`` the block the ratio is averaged over before the
    structures are searched (beats down pixel noise), ``large_px`` the scale above which a change is
    "large-scale", ``min_pixels`` the smallest structure reported (in full-resolution pixels).
    """
    if flat.shape != previous.shape:
        raise ValueError(f"the flats differ in size: {flat.shape} and {previous.shape}")
    ratio = flat_ratio(flat, previous)
    filled = np.where(np.isfinite(ratio), ratio, 1.0).astype(np.float32)
    small = _binned(filled, smooth_px)
    large_blocks = max(1, large_px // smooth_px)
    background = _large_scale(small, large_blocks)
    large_scale = float(robust_std(_binned(filled, large_px))) if min(flat.shape) >= 2 * large_px else 0.0
    residual = small - background
    noise = robust_std(residual)
    cut = max(threshold, 5.0 * noise)
    labels, count = ndimage.label(np.abs(residual) > cut)
    structures = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[region] == index
        n_pixels = int(np.count_nonzero(inside)) * smooth_px ** 2
        if n_pixels < min_pixels:
            continue
        values = residual[region][inside]
        deepest = float(values[np.argmax(np.abs(values))])
        rows, cols = region
        structures.append({
            "x": round((cols.start + cols.stop) / 2 * smooth_px, 1), "y": round((rows.start + rows.stop) / 2 * smooth_px, 1),
            "size_px": int(max(rows.stop - rows.start, cols.stop - cols.start) * smooth_px),
            "area_px": n_pixels, "depth": round(deepest, 4)})
    structures.sort(key=lambda s: -s["area_px"])
    return FlatChange(large_scale, structures, ratio_thumbnail(ratio))


def clear_sky_throughput(zero_points: list[float], percentile: float = 90.0) -> float | None:
    """The night's clear-sky zero point: an upper percentile of its frames' (clouds only dim)."""
    values = np.asarray([z for z in zero_points if z is not None and np.isfinite(z)], float)
    return float(np.percentile(values, percentile)) if values.size else None


def detector_figures(bias: np.ndarray | None, dark_rate_adu: np.ndarray | None, mask_bad: np.ndarray | None,
                     flat: np.ndarray | None, dead_flat_level: float, gain: float) -> dict[str, Any]:
    """Bias level (ADU: the master bias, else None), median dark current (e-/s) and hot pixels (the
    mask's bad pixels that the flat does not call dead: those are the dark current's)."""
    figures: dict[str, Any] = {}
    if bias is not None:
        figures["bias_adu"] = round(float(np.median(bias)), 2)
    if dark_rate_adu is not None:
        figures["dark_e_per_s"] = round(float(np.median(dark_rate_adu)) * gain, 4)
    if mask_bad is not None:
        dead = ~np.isfinite(flat) | (flat < dead_flat_level) if flat is not None else np.zeros(mask_bad.shape, bool)
        figures["n_hot"] = int(np.count_nonzero(mask_bad & ~dead))
    return figures
