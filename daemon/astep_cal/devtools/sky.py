"""The sky of a synthetic frame: its geometry (true WCS, PSF), real Tycho-2 stars read from the
installed Astrometry.net index files, stars and cosmic-ray tracks drawn into an image."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.special import erf

if TYPE_CHECKING:
    from astep_cal.devtools.synthetic import NightSpec

INDEX_DIR = Path("/usr/share/astrometry")
TYCHO2_INDEXES = ("index-tycho2-07.littleendian.fits", "index-tycho2-08.littleendian.fits",
                  "index-tycho2-09.littleendian.fits")
ZERO_POINT_MAG = 19.0  # MAG_VT giving 1 e-/s: mag 9 -> 1e4 e-/s, peak ~41000 ADU at 60 s on 1024² frames
DEDUP_ARCSEC = 2.0

# ----------------------------------------------------------------------------------------- geometry

def field_radius_deg(spec: NightSpec) -> float:
    """Radius of the circle that holds the whole frame (half diagonal), plus room for jitter and PSFs."""
    half_diagonal_px = 0.5 * float(np.hypot(*spec.shape))
    return half_diagonal_px * spec.pixel_scale_arcsec / 3600.0 + 2.0 * spec.fwhm_arcsec / 3600.0 + 0.01


def true_wcs(spec: NightSpec, ra_deg: float, dec_deg: float) -> WCS:
    """TAN WCS centred on the frame, East to the left (the sky as seen on the sky), rotated.

    The CD matrix is the classic ``CDELT1 = -scale, CDELT2 = scale, CROTA2 = rotation_deg`` one.
    """
    scale = spec.pixel_scale_arcsec / 3600.0
    theta = np.deg2rad(spec.rotation_deg)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [(spec.shape[1] + 1) / 2.0, (spec.shape[0] + 1) / 2.0]
    w.wcs.cd = scale * np.array([[-np.cos(theta), -np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    w.pixel_shape = (spec.shape[1], spec.shape[0])
    return w


def psf_sigma_px(spec: NightSpec) -> float:
    return spec.fwhm_arcsec / spec.pixel_scale_arcsec / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def _stamp_radius(sigma: float) -> int:
    """Half-size of a star stamp: 6 sigma holds all but ~1e-8 of the flux."""
    return int(np.ceil(6.0 * sigma)) + 2


# ------------------------------------------------------------------------------------------ catalog

@functools.lru_cache(maxsize=32)
def _tycho2_cached(ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    exe = shutil.which("query-starkd")
    if exe is None:
        raise RuntimeError("query-starkd (Astrometry.net) is not installed: cannot read Tycho-2 stars")
    indexes = [INDEX_DIR / name for name in TYCHO2_INDEXES if (INDEX_DIR / name).is_file()]
    if not indexes:
        raise RuntimeError(f"no Tycho-2 index files ({', '.join(TYCHO2_INDEXES)}) in {INDEX_DIR}")
    ra, dec, mag = [], [], []
    with tempfile.TemporaryDirectory(prefix="astep-synthetic-") as tmp:
        for i, index in enumerate(indexes):
            out = Path(tmp) / f"stars{i}.fits"
            subprocess.run([exe, "-r", repr(ra_deg), "-d", repr(dec_deg), "-R", repr(radius_deg), "-T",
                            "-o", str(out), str(index)], check=True, capture_output=True, timeout=120)
            if not out.is_file():
                continue
            with fits.open(out) as hdul:
                if len(hdul) < 2 or hdul[1].data is None:
                    continue
                data = hdul[1].data
                ra.append(np.asarray(data["RA"], float))
                dec.append(np.asarray(data["DEC"], float))
                mag.append(np.asarray(data["MAG_VT"], float))
    if not ra:
        return Table(names=("ra", "dec", "mag"), dtype=(float, float, float))
    return _deduplicate(np.concatenate(ra), np.concatenate(dec), np.concatenate(mag))


def _deduplicate(ra: np.ndarray, dec: np.ndarray, mag: np.ndarray) -> Table:
    """Keep one star per position: the index files overlap (a star may be in 07, 08 and 09)."""
    from scipy.spatial import cKDTree

    ra_r, dec_r = np.deg2rad(ra), np.deg2rad(dec)
    xyz = np.column_stack([np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)])
    keep = np.ones(len(ra), bool)
    for i, j in sorted(cKDTree(xyz).query_pairs(np.deg2rad(DEDUP_ARCSEC / 3600.0))):
        if keep[i]:
            keep[j] = False
    order = np.argsort(mag[keep], kind="stable")
    return Table({"ra": ra[keep][order], "dec": dec[keep][order], "mag": mag[keep][order]})


def tycho2_stars(ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    """Tycho-2 stars (ra, dec in deg; mag = MAG_VT) within ``radius_deg``, brightest first.

    The union of the installed index files 07/08/09 (each holds a different subset), read with
    ``query-starkd`` and deduplicated within 2". Cached per (ra, dec, radius) in this process: every
    frame of a night and every night of a test session asks for the same field.
    """
    return _tycho2_cached(float(ra_deg), float(dec_deg), float(radius_deg)).copy()


# ------------------------------------------------------------------------------------------ signals

def render_stars(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, sigma: float) -> None:
    """Add pixel-integrated Gaussian stars (total ``flux`` each) to ``image`` in place, as small stamps.

    Integrating the Gaussian over each pixel (erf differences) keeps the centroid exact even for the
    undersampled PSFs of small test frames; stamps keep the cost per star tiny.
    """
    ny, nx = image.shape
    radius = _stamp_radius(sigma)
    scale = 1.0 / (np.sqrt(2.0) * sigma)
    for xs, ys, fs in zip(np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float)):
        ix, iy = int(np.floor(xs + 0.5)), int(np.floor(ys + 0.5))
        x0, x1 = max(0, ix - radius), min(nx, ix + radius + 1)
        y0, y1 = max(0, iy - radius), min(ny, iy + radius + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        px = np.arange(x0, x1 + 1) - 0.5 - xs
        py = np.arange(y0, y1 + 1) - 0.5 - ys
        fx = np.diff(erf(px * scale)) * 0.5
        fy = np.diff(erf(py * scale)) * 0.5
        image[y0:y1, x0:x1] += (fs * np.outer(fy, fx)).astype(np.float32)


def cosmic_rays(shape: tuple[int, int], n_tracks: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_tracks`` straight tracks 1-15 px long, 1-2 px wide, 500-20000 e- per pixel.

    Returns the raveled indices of the hit pixels (unique) and the charge deposited in each (e-).
    The charge per track is log-uniform (most hits are modest, a few are huge), with ±20 % per pixel.
    """
    if n_tracks <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ny, nx = shape
    steps = np.linspace(0.0, 1.0, 31)
    length = rng.uniform(1.0, 15.0, n_tracks)
    angle = rng.uniform(0.0, np.pi, n_tracks)
    width = rng.integers(1, 3, n_tracks)
    x0, y0 = rng.uniform(-0.5, nx - 0.5, n_tracks), rng.uniform(-0.5, ny - 0.5, n_tracks)
    level = np.exp(rng.uniform(np.log(500.0), np.log(20000.0), n_tracks))
    t = length[:, None] * steps[None, :]
    xs, ys = x0[:, None] + t * np.cos(angle)[:, None], y0[:, None] + t * np.sin(angle)[:, None]
    track = np.repeat(np.arange(n_tracks), len(steps))
    px, py = [xs.ravel()], [ys.ravel()]
    wide = np.repeat(width == 2, len(steps))
    px.append((xs - np.sin(angle)[:, None]).ravel()[wide])
    py.append((ys + np.cos(angle)[:, None]).ravel()[wide])
    track = np.concatenate([track, track[wide]])
    col, row = np.rint(np.concatenate(px)).astype(np.int64), np.rint(np.concatenate(py)).astype(np.int64)
    inside = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    key = np.unique(track[inside] * (ny * nx) + row[inside] * nx + col[inside])
    pixel, owner = key % (ny * nx), key // (ny * nx)
    charge = np.clip(level[owner] * rng.uniform(0.8, 1.2, len(key)), 500.0, 20000.0)
    index, where = np.unique(pixel, return_inverse=True)
    return index, np.bincount(where, weights=charge).astype(np.float32)


def field_stars(spec: NightSpec, w: WCS, sigma: float) -> Table:
    """Tycho-2 stars whose PSF touches the frame, with pixel positions and electrons for one exposure."""
    stars = tycho2_stars(spec.ra_deg, spec.dec_deg, round(field_radius_deg(spec), 4))
    x, y = w.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    margin = _stamp_radius(sigma)
    ny, nx = spec.shape
    keep = (x > -margin) & (x < nx - 1 + margin) & (y > -margin) & (y < ny - 1 + margin)
    table = stars[keep]
    table["x"], table["y"] = x[keep], y[keep]
    table["flux_e"] = 10.0 ** (-0.4 * (np.asarray(table["mag"]) - ZERO_POINT_MAG)) * spec.science_exptime * spec.throughput
    return table


