"""How good is a calibrated frame? Sky noise, stars, seeing, masking: what an astronomer looks at first.

Pure functions of a calibrated frame (electrons) and its mask; no file is touched. The numbers go into
the CAL header, the ledger and the nightly summary, and must be cheap: the whole calibration of a
4096² frame is ~2.4 CPU-s (``make bench``), so everything here is done on sparse samples where a sample
suffices, and the full-frame passes a chunk of rows at a time:

* sky level: sigma-clipped median of a sparse grid of unmasked pixels; sky noise: the same, about
  the background map (a gradient is not noise);
* background: photutils ``Background2D`` on a strided copy (about ``BACKGROUND_STRIDE_PIXELS`` wide,
  which keeps the pixel statistics), interpolated bilinearly back to full size;
* detection: photutils ``detect_sources`` (image segmentation) on the background-subtracted frame,
  smoothed by a small Gaussian, ``detect_sigma`` times the smoothed sky noise, at least 5 pixels;
* shape: ``SourceCatalog`` moments (ellipticity) and a pixel-integrated Gaussian fit
  (``photutils.psf.fit_fwhm``) of the brightest isolated unsaturated stars (FWHM). Segment moments
  are biased by the segment's edge (by 4 % on synthetic stars of 2.5 px); the PRF fit is not.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from photutils.background import Background2D, MedianBackground
from photutils.psf import fit_fwhm
from photutils.segmentation import SourceCatalog, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning

from astep_cal.science import centroids
from astep_cal.science.chunks import row_chunks
from astep_cal.science.masters import MaskBit

SAMPLE_SIDE = 512  # sky statistics on a grid of about this many rows and columns
BACKGROUND_STRIDE_PIXELS = 512  # the background meshes are computed on a strided copy about this wide
BACKGROUND_MESHES = 16  # meshes per side of the frame
DETECT_SMOOTH_SIGMA_PX = 1.0  # Gaussian smoothing before detection (a matched filter for ~2.5 px stars)
MIN_PIXELS = 5  # a detection covers at least this many connected pixels (cosmic-ray residues do not)
FIT_MIN_SNR = 20.0  # only stars whose peak is this many sky sigmas up are fitted for the FWHM
SHARP_FRACTION = 0.75  # a masked-pixel residue is this much sharper than the stars (moments FWHM)
MIN_USABLE_FRACTION = 0.05  # below this (a saturated or dead frame) only sky and masking are reported
UNUSABLE = MaskBit.BAD | MaskBit.SATURATED | MaskBit.LOW_FLAT | MaskBit.BORDER  # not sky or star light to trust


@dataclass(frozen=True)
class Sources:
    """The stars the quality step detected, brightest first: what the plate solve is given
    (``astrometry``), so that solve-field need not find them in the image again. Pixel coordinates
    are 0-based (numpy); ``flux`` is the background-subtracted segment sum (electrons)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    # Per source: one star whose position could be refined (its window inside the frame; the segment's
    # centroid within MAX_PEAK_OFFSET_PX of its brightest pixel, where a blend's lies between its stars).
    # What the plate solve is given (None: not known, all are).
    single: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def positions(self) -> np.ndarray:
        """(n, 2) centroids (x, y), brightest first: what the catalogue step measures apertures at."""
        return np.column_stack([self.x, self.y])


@dataclass(frozen=True)
class FrameQuality:
    """The frame's metrics; ``fwhm_px``/``ellipticity`` are None when no star could be measured."""

    sky_e: float  # sigma-clipped median of the sky
    sky_noise_e: float  # sigma-clipped standard deviation of the sky (per pixel)
    n_stars: int  # sources detected
    fwhm_px: float | None  # median FWHM of the fitted stars
    ellipticity: float | None  # median 1 - b/a of the same stars
    n_fwhm_stars: int  # how many stars the FWHM and ellipticity are the median of
    masked_fraction: float  # pixels with any MASK bit set
    sources: Sources | None = field(default=None, compare=False, repr=False)  # the detections that are stars

    def fwhm_arcsec(self, pixel_scale_arcsec: float) -> float | None:
        return None if self.fwhm_px is None else self.fwhm_px * pixel_scale_arcsec

    def record(self, pixel_scale_arcsec: float) -> dict[str, Any]:
        """For the ledger: rounded, JSON-ready."""
        fwhm = self.fwhm_arcsec(pixel_scale_arcsec)
        return {
            "sky_noise_e": round(self.sky_noise_e, 2),
            "n_stars": self.n_stars,
            "fwhm_px": _rounded(self.fwhm_px, 3),
            "fwhm_arcsec": _rounded(fwhm, 3),
            "pixel_scale_arcsec": round(pixel_scale_arcsec, 4),
            "ellipticity": _rounded(self.ellipticity, 3),
            "n_fwhm_stars": self.n_fwhm_stars,
            "masked_fraction": round(self.masked_fraction, 5),
        }

    def header_cards(self, pixel_scale_arcsec: float, scale_origin: str) -> dict[str, tuple[Any, str]]:
        """FITS cards (8-character keys); FWHM and ELLIPTIC are left out when no star was measured."""
        cards: dict[str, tuple[Any, str]] = {
            "SKYNOISE": (round(self.sky_noise_e, 2), "[e-] robust rms of the sky per pixel"),
            "NSTARS": (self.n_stars, "sources detected"),
            "MASKFRAC": (round(self.masked_fraction, 5), "fraction of pixels flagged in MASK"),
        }
        if self.fwhm_px is not None:
            cards.update(fwhm_cards(self.fwhm_px, pixel_scale_arcsec, scale_origin))
        if self.ellipticity is not None:
            cards["ELLIPTIC"] = (round(self.ellipticity, 3), "median stellar ellipticity 1-b/a")
        return cards


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def fwhm_cards(fwhm_px: float, pixel_scale_arcsec: float, scale_origin: str) -> dict[str, tuple[Any, str]]:
    """``FWHM`` (arcsec) and ``FWHMPIX``; the scale's origin (nominal or solved WCS) is in the comment."""
    return {
        "FWHM": (round(fwhm_px * pixel_scale_arcsec, 3), f"[arcsec] median stellar FWHM ({scale_origin} scale)"),
        "FWHMPIX": (round(fwhm_px, 3), "[px] median stellar FWHM"),
    }


def pixel_scale_arcsec(wcs_header: Any) -> float:
    """Mean pixel scale (arcsec/px) of a celestial WCS header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(wcs_header).celestial
    return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)


# --- the steps ----------------------------------------------------------------------------------

def sky_statistics(data: np.ndarray, usable: np.ndarray) -> tuple[float, float]:
    """Median and standard deviation of the sky, sigma-clipped on a sparse grid (stars are clipped)."""
    step = max(1, min(data.shape) // SAMPLE_SIDE)
    sample = data[::step, ::step][usable[::step, ::step]]
    if sample.size < 100:
        return float(np.median(data)), float(np.std(data))
    _, median, std = sigma_clipped_stats(sample, sigma=3.0, maxiters=5)
    return float(median), float(std)


def background_map(data: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """The smooth sky under the stars (gradients, moonlight), from a strided copy of the frame.

    photutils ``Background2D`` (sigma-clipped median meshes; not median-filtered, which would bias the
    edge meshes of a gradient by half a mesh) runs on every
    ``stride``-th pixel, which keeps each pixel's statistics (unlike binning) at a fraction of the
    cost; its mesh is then interpolated bilinearly to full size as two small matrix products
    (0.05 s for 4096², where a spline zoom of the full frame takes 0.5 s).
    """
    stride = max(1, min(data.shape) // BACKGROUND_STRIDE_PIXELS)
    small, small_usable = data[::stride, ::stride], usable[::stride, ::stride]
    box = max(16, min(small.shape) // BACKGROUND_MESHES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        mesh = Background2D(small, box, mask=~small_usable, filter_size=1,
                            bkg_estimator=MedianBackground()).background_mesh.astype(np.float32)
    rows = _linear_weights(data.shape[0], mesh.shape[0], box * stride)
    columns = _linear_weights(data.shape[1], mesh.shape[1], box * stride)
    return rows @ mesh @ columns.T


def gaussian_smooth(image: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma, truncate=truncate)`` (mode ``reflect``: the edge
    pixel repeated) in float32, two separable passes a chunk of rows at a time (``chunks``): 4x less
    CPU than scipy's (which works in float64 over whole rows and columns) on a 4096² frame."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum()).astype(np.float32)
    ny, nx = image.shape
    across = np.empty(image.shape, np.float32)
    for rows in row_chunks(ny):
        _weighted_sum(np.pad(image[rows], ((0, 0), (radius, radius)), mode="symmetric"), weights, across[rows], 1)
    result = np.empty(image.shape, np.float32)
    for rows in row_chunks(ny):
        index = np.arange(rows.start - radius, rows.stop + radius)
        index = np.where(index < 0, -index - 1, np.where(index >= ny, 2 * ny - 1 - index, index))
        _weighted_sum(across[np.clip(index, 0, ny - 1)], weights, result[rows], 0)
    return result


def _weighted_sum(padded: np.ndarray, weights: np.ndarray, out: np.ndarray, axis: int) -> None:
    """``out`` = the sum of ``weights[k]`` times ``padded`` shifted by k along ``axis``, for symmetric
    ``weights`` (the pair at +-k added first, then weighted once)."""
    size, radius = out.shape[axis], len(weights) // 2

    def shifted(k: int) -> np.ndarray:
        return padded[k: k + size] if axis == 0 else padded[:, k: k + size]

    np.multiply(shifted(radius), weights[radius], out=out)
    pair = np.empty_like(out)
    for k in range(radius):
        np.add(shifted(k), shifted(2 * radius - k), out=pair)
        pair *= weights[k]
        out += pair


def _linear_weights(size: int, n_mesh: int, mesh_pixels: int) -> np.ndarray:
    """(size, n_mesh) weights of linear interpolation between mesh centres, extrapolated linearly
    beyond the outer centres (a sky gradient goes on to the frame's edge; a constant edge would leave
    half a mesh of gradient in the frame and false detections along the border)."""
    weights = np.zeros((size, n_mesh), np.float32)
    if n_mesh == 1:
        weights[:, 0] = 1.0
        return weights
    position = (np.arange(size) - ((mesh_pixels - 1) / 2)) / mesh_pixels  # in mesh units from centre 0
    left = np.clip(np.floor(position), 0, n_mesh - 2).astype(int)
    fraction = position - left
    rows = np.arange(size)
    weights[rows, left] = 1.0 - fraction
    weights[rows, left + 1] = fraction
    return weights


@dataclass(frozen=True)
class MaskedLabels:
    """The segment label and MASK bits of every masked pixel: one pass over the frame, then asked
    per bit (which detections touch bad, saturated, cosmic-ray pixels) at the cost of the masked few."""

    labels: np.ndarray
    bits: np.ndarray

    @classmethod
    def of(cls, segments: np.ndarray, mask: np.ndarray) -> "MaskedLabels":
        flagged = np.flatnonzero(mask)
        return cls(segments.ravel()[flagged], mask.ravel()[flagged])

    def under(self, bits: int) -> np.ndarray:
        """The segment labels found under pixels with any of ``bits`` set (0: the sky included)."""
        return np.unique(self.labels[(self.bits & np.uint8(bits)) != 0])


def _fit_candidates(catalog: SourceCatalog, segments: np.ndarray, masked: MaskedLabels, noise: float,
                    half: int, limit: int) -> np.ndarray:
    """Indices (into ``catalog``) of the brightest stars fit for a clean FWHM: bright, unsaturated,
    whole (not on an edge or on masked pixels), and alone in their fitting box."""
    ny, nx = segments.shape
    x, y = np.asarray(catalog.x_centroid), np.asarray(catalog.y_centroid)
    peak = np.asarray(catalog.max_value)
    spoiled = masked.under(UNUSABLE)
    ok = (peak > FIT_MIN_SNR * noise) & ~np.isin(catalog.labels, spoiled)
    ok &= (x >= half) & (x < nx - half - 1) & (y >= half) & (y < ny - half - 1)
    chosen = []
    for index in np.argsort(-np.where(ok, peak, -np.inf)):
        if not ok[index] or len(chosen) >= limit:
            break
        xi, yi = int(round(x[index])), int(round(y[index]))
        box = segments[yi - half: yi + half + 1, xi - half: xi + half + 1]
        if np.all((box == 0) | (box == catalog.labels[index])):
            chosen.append(index)
    return np.asarray(chosen, dtype=int)


def _touching(catalog: SourceCatalog, masked: MaskedLabels, bits: int) -> np.ndarray:
    """Per detection: does it touch a pixel with any of the MASK ``bits``?"""
    return np.isin(catalog.labels, masked.under(bits))


def typical_moment_fwhm(catalog: SourceCatalog, touching: np.ndarray) -> float:
    """Median segment-moment FWHM (px) of the detections untouched by replaced pixels (all if none)."""
    fwhm = np.asarray(catalog.fwhm.value)
    clean = fwhm[~touching] if (~touching).any() else fwhm
    return float(np.nanmedian(clean)) if np.isfinite(clean).any() else float("nan")


def star_like(catalog: SourceCatalog, touching: np.ndarray, typical_fwhm: float) -> np.ndarray:
    """Per detection: does it look like a star, not a sharp residue of a masked bad pixel or hit?

    A detection touching BAD or COSMIC pixels and sharper than ``SHARP_FRACTION`` of the clean
    detections is what is left around a replaced hit or a dead column, not a star (on a synthetic
    4096² frame: 16 of 111 detections, all of them such residues). ``typical_fwhm``:
    :func:`typical_moment_fwhm`.
    """
    if len(catalog) == 0:
        return np.zeros(0, bool)
    fwhm = np.asarray(catalog.fwhm.value)
    sharp = ~(fwhm >= SHARP_FRACTION * typical_fwhm)  # NaN is sharp too
    return ~(touching & sharp)


MAX_PEAK_OFFSET_PX = 1.0  # one star's segment centroid is within a pixel of its brightest pixel


def source_list(catalog: SourceCatalog, keep: np.ndarray, image: np.ndarray, fwhm_px: float,
                saturated: np.ndarray | None = None) -> Sources:
    """The kept detections' positions and fluxes, brightest first (NaN centroids left out).

    A position is the intensity-weighted centroid in a window about the segment's brightest pixel
    (``centroids.refine``), not the segment's centroid: a segment holding two stars (a blend, a star
    beside a bright one, a star cut by a masked column) has its centroid between them, pixels off
    either, and a plate solve given such positions is off by a tenth of a pixel (measured on the
    512² transit night: 0.28 px). ``single`` marks the sources fit for that solve.
    """
    x, y = np.asarray(catalog.x_centroid, float), np.asarray(catalog.y_centroid, float)
    peak = np.column_stack([np.asarray(catalog.max_value_xindex, float), np.asarray(catalog.max_value_yindex, float)])
    flux = np.asarray(catalog.segment_flux, float)
    keep = keep & np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    order = np.flatnonzero(keep)[np.argsort(-flux[keep], kind="stable")]
    fwhm = fwhm_px if np.isfinite(fwhm_px) and fwhm_px > 0 else 2.5
    refined, ok = centroids.refine(image, peak[order], np.zeros(len(order)), fwhm)
    flat_top = saturated[order] if saturated is not None else np.zeros(len(order), bool)  # no one peak pixel
    single = ok & ((np.hypot(x[order] - peak[order, 0], y[order] - peak[order, 1]) <= MAX_PEAK_OFFSET_PX) | flat_top)
    return Sources(refined[:, 0], refined[:, 1], flux[order], single)


def star_shapes(image: np.ndarray, catalog: SourceCatalog, segments: np.ndarray, mask: np.ndarray,
                masked: MaskedLabels, noise: float, limit: int,
                guess: float) -> tuple[float | None, float | None, int]:
    """Median FWHM (px, from a pixel-integrated Gaussian fit) and ellipticity of the best stars.

    ``guess`` (the typical moment FWHM) starts the fit and sizes its box (±1.5 FWHM).
    """
    if len(catalog) == 0 or not np.isfinite(guess) or guess <= 0:
        return None, None, 0
    half = int(np.clip(np.ceil(1.5 * guess), 2, 15))
    chosen = _fit_candidates(catalog, segments, masked, noise, half, limit)
    if not len(chosen):
        return None, None, 0
    xy = np.column_stack([np.asarray(catalog.x_centroid)[chosen], np.asarray(catalog.y_centroid)[chosen]])
    with warnings.catch_warnings():  # a poor fit of one star is not news: it is dropped below
        warnings.simplefilter("ignore")
        fwhm = np.asarray(fit_fwhm(image, xypos=xy, fwhm=guess, fit_shape=2 * half + 1,
                                   mask=(mask & UNUSABLE) > 0), dtype=float)
    good = np.isfinite(fwhm) & (fwhm > 0.5) & (fwhm < 4 * half)
    if not good.any():
        return None, None, 0
    ellipticity = np.asarray(catalog.ellipticity.value)[chosen][good]
    return float(np.median(fwhm[good])), float(np.median(ellipticity)), int(good.sum())


def measure_frame(data: np.ndarray, mask: np.ndarray, detect_sigma: float = 5.0,
                  max_fit_stars: int = 20) -> FrameQuality:
    """Every metric of one calibrated frame (electrons) with its MASK (``MaskBit`` values)."""
    usable = mask == 0
    masked_fraction = 1.0 - float(np.count_nonzero(usable)) / usable.size
    sky, noise = sky_statistics(data, usable)
    if masked_fraction > 1.0 - MIN_USABLE_FRACTION:  # nothing to find stars in (daylight, a dead read-out)
        return FrameQuality(sky, noise, 0, None, None, 0, masked_fraction)
    image = data - background_map(data, usable)
    _, noise = sky_statistics(image, usable)  # about the background: a sky gradient is not noise
    smoothed = gaussian_smooth(image, DETECT_SMOOTH_SIGMA_PX, truncate=2.5)
    _, smoothed_noise = sky_statistics(smoothed, usable)
    with warnings.catch_warnings():  # an empty (cloudy) frame is a result, not a warning
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segments = detect_sources(smoothed, detect_sigma * smoothed_noise, n_pixels=MIN_PIXELS,
                                  mask=(mask & MaskBit.BAD) > 0)
    if segments is None:
        return FrameQuality(sky, noise, 0, None, None, 0, masked_fraction)
    catalog = SourceCatalog(image, segments)
    masked = MaskedLabels.of(segments.data, mask)
    touching = _touching(catalog, masked, MaskBit.BAD | MaskBit.COSMIC)  # replaced pixels
    typical = typical_moment_fwhm(catalog, touching)
    fwhm, ellipticity, used = star_shapes(image, catalog, segments.data, mask, masked, noise, max_fit_stars,
                                          typical)
    stars = star_like(catalog, touching, typical)
    return FrameQuality(sky, noise, int(np.count_nonzero(stars)), fwhm, ellipticity, used, masked_fraction,
                        source_list(catalog, stars, image, fwhm if fwhm is not None else typical,
                                    _touching(catalog, masked, MaskBit.SATURATED)))
