"""Science metrics against known truth: how good is a calibrated frame of a synthetic night?

Used by the tests (acceptance thresholds) and by ``astep-cal demo`` (which prints them). The truth
comes from :mod:`astep_cal.devtools.synthetic`; the metrics are plain array statistics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from astep_cal.engine.astrometry import wcs_error_px
from astep_cal.formats import keywords as kw
from astep_cal.formats.products import cal_image_hdu, read_cal_header
from astep_cal.science.masters import MaskBit

if TYPE_CHECKING:
    from astropy.table import Table

    from astep_cal.devtools.defect_scene import DefectScene
    from astep_cal.science.calibrate import CalibratedFrame


@dataclass
class FrameScore:
    name: str
    solved: bool
    wcs_error_px: float | None  # median over a grid of the frame
    stars_matched: int  # truth stars the solved WCS puts within 0.5 px of their true place
    stars_in_field: int
    flat_residual: float  # relative spread (std) of 16x16-block ratios calibrated / true sky
    cosmic_removed: float  # fraction of injected cosmic-ray pixels left consistent with noise
    cosmic_pixels: int
    hot_masked: float  # fraction of injected hot pixels flagged BAD
    dead_column_masked: float | None


def block_ratio_spread(calibrated: np.ndarray, truth: np.ndarray, usable: np.ndarray, block: int = 16) -> float:
    """Std of per-block ratios sum(calibrated)/sum(truth) over usable pixels, relative to their median.

    Blocks with fewer than half their pixels usable are left out (masked columns, saturated stars).
    """
    rows, cols = (s // block * block for s in calibrated.shape)

    def blocks(array: np.ndarray) -> np.ndarray:
        return array[:rows, :cols].reshape(rows // block, block, cols // block, block).sum(axis=(1, 3))

    weight = usable.astype(np.float64)
    cal_sum = blocks(np.where(usable, calibrated, 0.0).astype(np.float64))
    truth_sum = blocks(np.where(usable, truth, 0.0).astype(np.float64))
    enough = blocks(weight) >= block * block / 2
    ratios = cal_sum[enough] / truth_sum[enough]
    return float(np.std(ratios) / np.median(ratios))


def cosmic_removed_fraction(calibrated: np.ndarray, truth: np.ndarray, cosmic_truth: np.ndarray,
                            flat: np.ndarray, read_noise_e: float, n_sigma: float = 5.0) -> float:
    """Fraction of injected cosmic-ray pixels whose calibrated value is back within noise of the truth.

    The noise is that of the pixel without the cosmic ray (photon + read noise, through the flat), so
    a pixel counts as removed only when the hit's charge is really gone, not merely flagged.
    """
    hit = cosmic_truth.astype(bool)
    if not hit.any():
        return 1.0
    sigma = np.sqrt(np.clip(truth[hit], 0, None) * flat[hit] + read_noise_e ** 2) / flat[hit]
    return float(np.mean(np.abs(calibrated[hit] - truth[hit]) < n_sigma * sigma))


def stars_matched(solved: WCS, truth_stars, shape: tuple[int, int], tolerance_px: float = 0.5) -> tuple[int, int]:
    """How many true stars inside the frame the solved WCS places within ``tolerance_px``."""
    inside = ((truth_stars["x"] >= 0) & (truth_stars["x"] < shape[1]) & (truth_stars["y"] >= 0)
              & (truth_stars["y"] < shape[0]))
    stars = truth_stars[inside]
    if len(stars) == 0:
        return 0, 0
    x, y = solved.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    offsets = np.hypot(x - np.asarray(stars["x"]), y - np.asarray(stars["y"]))
    return int(np.count_nonzero(offsets < tolerance_px)), len(stars)


def solved_wcs_of(header: fits.Header) -> WCS | None:
    """The WCS astep-cal merged into a CAL header, or None when the frame is not solved."""
    if header.get(kw.WCS_STATUS.name) != "solved":
        return None
    with warnings.catch_warnings():  # 'datfix' notes about MJD-OBS are not news
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


@dataclass
class CatalogueAccuracy:
    """Bright, isolated, unflagged catalogue stars against their truth (issue 16's acceptance)."""

    offsets_px: np.ndarray  # centroid to the true position
    separations_arcsec: np.ndarray  # catalogue RA/Dec to the true (Tycho-2) place

    def describe(self) -> str:
        if not len(self.offsets_px):
            return "no bright isolated star"
        return (f"{len(self.offsets_px)} bright stars: offset median {np.median(self.offsets_px):.4f} max "
                f"{self.offsets_px.max():.4f} px; RA/Dec median {np.median(self.separations_arcsec):.3f}\" "
                f"p95 {np.percentile(self.separations_arcsec, 95):.3f}\" max {self.separations_arcsec.max():.3f}\"")


def catalogue_accuracy(cat: "Table", stars: "Table", fwhm_px: float, min_flux_e: float = 1e5) -> CatalogueAccuracy:
    """Positions of the catalogue's bright stars against the truth table of the same frame.

    A star counts when it holds ``min_flux_e`` electrons or more, has no neighbour above 1 % of its flux
    within 3 FWHM (a blend's centroid is not the star's), carries no flag, and its nearest true star is
    within 1 px (a match, not a neighbour). RA/Dec only when the frame solved (NaN otherwise).
    """
    from scipy.spatial import cKDTree

    x, y, flux = (np.asarray(stars[k], float) for k in ("x", "y", "flux_e"))
    if not len(x) or not len(cat):
        return CatalogueAccuracy(np.zeros(0), np.zeros(0))
    tree = cKDTree(np.column_stack([x, y]))
    distance, index = tree.query(np.column_stack([np.asarray(cat["x"], float), np.asarray(cat["y"], float)]))
    chosen = (flux[index] >= min_flux_e) & (np.asarray(cat["flags"]) == 0) & (distance < 1)
    for row in np.flatnonzero(chosen):
        k = index[row]
        neighbours = tree.query_ball_point([x[k], y[k]], 3 * fwhm_px)
        chosen[row] = sum(flux[j] > 0.01 * flux[k] for j in neighbours) == 1  # itself only
    rows, truth_rows = np.flatnonzero(chosen), index[chosen]
    ra, dec = np.asarray(cat["ra"], float)[rows], np.asarray(cat["dec"], float)[rows]
    true_ra, true_dec = np.asarray(stars["ra"], float)[truth_rows], np.asarray(stars["dec"], float)[truth_rows]
    separation = 3600 * np.hypot((ra - true_ra) * np.cos(np.deg2rad(true_dec)), dec - true_dec)
    return CatalogueAccuracy(distance[chosen], separation)


def wcs_error_of(cal_path: Path, truth) -> float | None:
    """Median WCS error (px) of a solved CAL file against the truth of its raw frame (header only:
    cheap enough for 4096² benchmarks); None when unsolved."""
    header = read_cal_header(cal_path)
    solved = solved_wcs_of(header)
    if solved is None:
        return None
    return wcs_error_px(solved, truth.wcs(header[kw.RAW.name]), (header["NAXIS2"], header["NAXIS1"]))


def score_frame(cal_path: Path, truth, raw_name: str) -> FrameScore:
    """Every metric for one calibrated frame of a synthetic night."""
    with fits.open(cal_path) as hdul:
        index = cal_image_hdu(hdul)
        data = hdul[index].data.astype(np.float64)
        header = hdul[index].header
        mask = hdul["MASK"].data
    sky = truth.sky_e(raw_name)
    solved_wcs = solved_wcs_of(header)
    solved = solved_wcs is not None
    wcs_error = matched = None
    in_field = 0
    if solved_wcs is not None:
        wcs_error = wcs_error_px(solved_wcs, truth.wcs(raw_name), data.shape)
        matched, in_field = stars_matched(solved_wcs, truth.stars(raw_name), data.shape)
    usable = (mask & (MaskBit.BAD | MaskBit.SATURATED | MaskBit.LOW_FLAT)) == 0
    hot = truth.hot_pixels.astype(bool)
    dead = None
    if truth.dead_column is not None:
        dead = float(np.mean((mask[:, truth.dead_column] & MaskBit.BAD) > 0))
    cosmic = truth.cosmic_mask(raw_name).astype(bool)
    return FrameScore(
        name=cal_path.name,
        solved=solved,
        wcs_error_px=wcs_error,
        stars_matched=matched or 0,
        stars_in_field=in_field,
        flat_residual=block_ratio_spread(data, sky, usable),
        cosmic_removed=cosmic_removed_fraction(data, sky, cosmic & usable, truth.flat, truth.spec.read_noise_e),
        cosmic_pixels=int(np.count_nonzero(cosmic & usable)),
        hot_masked=float(np.mean((mask[hot] & MaskBit.BAD) > 0)) if hot.any() else 1.0,
        dead_column_masked=dead,
    )


def aperture_fidelity(data: np.ndarray, error: np.ndarray, mask: np.ndarray, truth: np.ndarray, x: np.ndarray,
                      y: np.ndarray, sky_e: float, radius: float = 5.0) -> "Table":
    """Aperture photometry of stars in a calibrated frame against the noise-free truth (photutils).

    The same circular apertures (at the true positions) are summed on the frame and on the truth, so
    the difference is the calibration's error alone (no background estimate in between). Returns a
    table with, per star: ``true`` (star electrons in the aperture: truth sum less the sky), ``delta``
    (frame sum less truth sum), ``sigma`` (from ERR; a replaced pixel counts with the median ERR of the
    aperture's other pixels, so a flagged star is judged on the noise it would have had), ``z`` =
    delta / sigma, and ``flagged`` (a MASK bit in the aperture).
    """
    from astropy.table import Table
    from photutils.aperture import CircularAperture, aperture_photometry

    positions = np.column_stack([x, y])
    apertures = CircularAperture(positions, r=radius)
    variance = error.astype(np.float64) ** 2
    masked = mask > 0
    measured = aperture_photometry(data.astype(np.float64), apertures)["aperture_sum"].data
    expected = aperture_photometry(truth.astype(np.float64), apertures)["aperture_sum"].data
    sigma, flagged = np.empty(len(positions)), np.zeros(len(positions), bool)
    for index, aperture_mask in enumerate(apertures.to_mask(method="exact")):
        weights = aperture_mask.data
        local_variance = aperture_mask.cutout(variance, fill_value=0.0)
        local_masked = aperture_mask.cutout(masked, fill_value=False)
        if local_variance is None:  # entirely outside the frame
            sigma[index] = np.nan
            continue
        inside = weights > 0
        bad = local_masked & inside
        flagged[index] = bool(bad.any())
        clean = inside & ~local_masked
        typical = float(np.median(local_variance[clean])) if clean.any() else 0.0
        sigma[index] = float(np.sqrt(np.sum(weights * weights * np.where(bad, typical, local_variance))))
    true = expected - sky_e * apertures.area
    delta = measured - expected
    return Table({"x": x, "y": y, "true": true, "delta": delta, "sigma": sigma, "z": delta / sigma,
                  "flagged": flagged})


def calibrate_scene(scene: "DefectScene", with_master_noise: bool = True) -> "CalibratedFrame":
    """A :class:`astep_cal.devtools.defect_scene.DefectScene` calibrated as the pipeline would: its masters' noise
    from the same functions (``flat_noise_cards``, ``master_noise``) the pipeline feeds from the masters'
    headers. ``with_master_noise=False``: the error map as if the masters were exact."""
    from astep_cal.science.calibrate import calibrate_frame
    from astep_cal.science.masters import DarkLibrary, flat_noise_cards, master_noise
    from astep_cal.support.config import CalibrationSettings, CosmicSettings

    sigma = CalibrationSettings().combine_sigma
    library = DarkLibrary.build({scene.exptime: scene.dark}, None)
    flat_cards = {key: value for key, (value, _) in flat_noise_cards(scene.flat_levels_adu, sigma).items()}
    noise = (master_noise(library, library.dark_for(scene.exptime), {"NCOMBINE": scene.n_darks}, flat_cards, sigma)
             if with_master_noise else None)
    return calibrate_frame(scene.raw, scene.dark, scene.flat, scene.bad.astype(np.uint8), gain=scene.gain,
                           read_noise_e=scene.read_noise_e, saturation_adu=65535, cosmics=CosmicSettings(),
                           noise=noise)
