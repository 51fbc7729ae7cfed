"""Synthetic ASTEP observing nights whose truth is known exactly.

The calibration pipeline can only be judged on science correctness (is the WCS right? is the flat
residual below 1 %? are the cosmic rays gone?) when the answer is known. This module writes raw frames
in the telescope's real layout and file format, and saves beside them -- in a hidden directory the
pipeline never looks at -- everything needed to score the result: the true flat, the hot pixels, the
true WCS of every science frame, its noiseless sky in electrons, its cosmic-ray hits and its stars.

Design choices, and why:

* Stars are real Tycho-2 stars read from the installed Astrometry.net index files, so the real
  ``solve-field`` must find the same stars the truth table lists.
* The *sensor* (flat, dust, hot pixels, dead column, bias pattern) comes from ``sensor_seed`` and the
  *night* (noise, cosmic rays, pointing jitter, flat levels) from ``seed``: two nights of one sensor
  share a flat, which is what lets a night without sky flats borrow an earlier night's master flat.
* Every frame has its own random stream derived from ``(seed, kind, index)``, so a night is
  deterministic and frames can be made one at a time: a 4096x4096 night never holds more than one
  frame (plus the sensor maps) in memory, all float32, noise drawn in row bands.
* Raw files are ``uint16`` written by astropy (BITPIX=16, BZERO=32768) like the camera's, with the
  real header keywords and no WCS (the pipeline must solve for it).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.special import erf

from .transit import TransitSpec, choose_target, transit_factor, transparency

INDEX_DIR = Path("/usr/share/astrometry")
TYCHO2_INDEXES = ("index-tycho2-07.littleendian.fits", "index-tycho2-08.littleendian.fits",
                  "index-tycho2-09.littleendian.fits")
ZERO_POINT_MAG = 19.0  # MAG_VT giving 1 e-/s: mag 9 -> 1e4 e-/s, peak ~41000 ADU at 60 s on 1024² frames
SATURATION_ADU = 65535
INSTRUMENT = "ASTEP400 (synthetic)"
FILTER_NAME = "RC"
CCD_TEMP = -40.0
DEDUP_ARCSEC = 2.0
_ROW_BAND = 256  # rows per band when drawing noise: bounds the int64 Poisson temporaries
# A small frame that still solves: half the pixels of 1024² at twice the scale (a 1° field); the seeing
# is doubled too, so stars keep the ~2.5 px FWHM of the real camera (undersampled stars are
# indistinguishable from cosmic rays). Used by the tests and the soak run (``NightSpec(**SMALL_FIELD)``).
SMALL_FIELD = dict(shape=(512, 512), pixel_scale_arcsec=7.2, fwhm_arcsec=18.0, n_cosmic_rays=40, n_hot_pixels=80,
                   dead_column=150)
_KIND_CODE = {"SCIENCE": 1, "DARK": 2, "BIAS": 3, "SKYFLAT": 4, "FLATDARK": 5}
_IMAGETYP = {"SCIENCE": "Light Frame", "DARK": "Dark Frame", "BIAS": "Bias Frame", "SKYFLAT": "Flat Field"}


@dataclass(frozen=True)
class NightSpec:
    """Everything that defines a synthetic night; the same spec always gives the same files."""

    date: str = "2026-07-01"  # YYYY-MM-DD: night directory name
    shape: tuple[int, int] = (1024, 1024)
    pixel_scale_arcsec: float = 3.6  # 1024*3.6" ~ 1.02 deg: keeps a 1-degree field on small test frames
    ra_deg: float = 150.0  # pointing (rich southern field; Tycho-2 index stars exist there)
    dec_deg: float = -60.0
    rotation_deg: float = 0.7  # field rotation of the TAN WCS
    n_science: int = 3
    science_exptime: float = 60.0
    dark_exptimes: tuple[float, ...] = (60.0,)  # darks written to -CAMS, n_darks per exposure time
    n_darks: int = 3
    n_bias: int = 0  # biases written to -CAMS (0 = none, the common case)
    n_flats: int = 3  # 0 = night without sky flats
    flat_exptime: float = 5.0
    n_flat_darks: int = 3  # darks at flat_exptime in -CAMS_SKYFLAT
    gain: float = 2.0  # e-/ADU
    read_noise_e: float = 9.0
    bias_adu: float = 1000.0
    sky_e_per_s: float = 20.0
    dark_e_per_s: float = 0.2  # mean dark current
    n_hot_pixels: int = 300  # hot pixels with dark current 20..400 e-/s
    dead_column: int | None = 300  # a dead column (flat response ~0.02)
    fwhm_arcsec: float = 9.0
    n_cosmic_rays: int = 150  # tracks per science frame (and a few per dark/flat too)
    write_gain_header: bool = True  # GAIN / RDNOISE header keywords present?
    write_pointing_header: bool = True  # RA/DEC (deg) and OBJCTRA/OBJCTDEC (sexagesimal) present?
    start_time: str = "2026-07-01T20:00:00"  # DATE-OBS of the first science frame (UTC)
    cadence_s: float = 90.0
    seed: int = 1  # noise, cosmic rays, pointing jitter: differ per night
    sensor_seed: int = 42  # flat, dust, hot pixels, dead column: the same sensor for every night
    transit: TransitSpec | None = None  # a field star with a transit (OBJECT names it; see devtools.transit)
    transparency_rms: float = 0.0  # per-frame starlight loss 1 - |N(0, rms)| (thin cirrus)
    cloud_frames: tuple[int, ...] = ()  # science frames (0-based) dimmed by a cloud ...
    cloud_dimming: float = 0.8  # ... losing this fraction of the starlight


@dataclass
class NightTruth:
    """Where a synthetic night was written and what is true about it (everything a test judges by)."""

    root: Path
    night_dir: Path
    truth_dir: Path
    science_files: list[Path]
    dark_files: list[Path]
    flat_files: list[Path]
    flat_dark_files: list[Path]
    bias_files: list[Path]
    flat: np.ndarray  # true flat, float32, median 1
    hot_pixels: np.ndarray  # bool mask of the injected hot pixels
    dead_column: int | None
    spec: NightSpec
    wcs_headers: dict[str, dict] = field(default_factory=dict, repr=False)  # stem -> true WCS cards
    target: dict | None = None  # the transiting star: ra, dec, mag (None without a transit)

    def wcs(self, science_name: str) -> WCS:
        """The true TAN WCS of that science frame (the one its stars were projected with)."""
        w = WCS(fits.Header(self.wcs_headers[_stem(science_name)]))
        w.pixel_shape = (self.spec.shape[1], self.spec.shape[0])
        return w

    def sky_e(self, science_name: str) -> np.ndarray:
        """Noiseless sky + stars in electrons for that exposure (no flat, dark, bias or cosmic rays)."""
        return fits.getdata(self._truth_file(science_name), ext=0).astype(np.float32)

    def cosmic_mask(self, science_name: str) -> np.ndarray:
        """Pixels hit by an injected cosmic ray in that science frame."""
        return fits.getdata(self._truth_file(science_name), extname="CRMASK").astype(bool)

    def stars(self, science_name: str) -> Table:
        """Stars rendered in that frame: ra, dec (deg), x, y (0-based px), mag (MAG_VT), flux_e, peak_e."""
        return Table.read(self._truth_file(science_name), hdu="STARS")

    def _truth_file(self, science_name: str) -> Path:
        return self.truth_dir / f"{_stem(science_name)}_truth.fits"


@dataclass(frozen=True)
class _Sensor:
    """The fixed properties of the detector, shared by every night with the same sensor_seed."""

    flat: np.ndarray  # float32, median 1
    bias_pattern: np.ndarray  # float32 ADU, added to bias_adu
    hot_index: np.ndarray  # flat (raveled) indices of the hot pixels
    hot_rate: np.ndarray  # their dark current, e-/s


@dataclass(frozen=True)
class _Plan:
    """One raw frame to write: its role, exposure, time and file."""

    kind: str  # SCIENCE, DARK, BIAS, SKYFLAT or FLATDARK (a DARK in the -CAMS_SKYFLAT directory)
    index: int
    exptime: float
    date_obs: dt.datetime
    path: Path


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


def _psf_sigma_px(spec: NightSpec) -> float:
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


# ------------------------------------------------------------------------------------------- sensor

def _sensor_rng(spec: NightSpec, part: int) -> np.random.Generator:
    return np.random.default_rng([spec.sensor_seed, spec.shape[0], spec.shape[1], part])


def _frame_rng(spec: NightSpec, kind: str, index: int) -> np.random.Generator:
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


def _make_sensor(spec: NightSpec) -> _Sensor:
    hot_index, hot_rate = _hot_pixels(spec)
    return _Sensor(flat=make_flat(spec), bias_pattern=_bias_pattern(spec), hot_index=hot_index,
                   hot_rate=hot_rate)


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


def _field_stars(spec: NightSpec, w: WCS, sigma: float) -> Table:
    """Tycho-2 stars whose PSF touches the frame, with pixel positions and electrons for one exposure."""
    stars = tycho2_stars(spec.ra_deg, spec.dec_deg, round(field_radius_deg(spec), 4))
    x, y = w.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    margin = _stamp_radius(sigma)
    ny, nx = spec.shape
    keep = (x > -margin) & (x < nx - 1 + margin) & (y > -margin) & (y < ny - 1 + margin)
    table = stars[keep]
    table["x"], table["y"] = x[keep], y[keep]
    table["flux_e"] = 10.0 ** (-0.4 * (np.asarray(table["mag"]) - ZERO_POINT_MAG)) * spec.science_exptime
    return table


# ------------------------------------------------------------------------------------ raw and files

def _to_raw(electrons: np.ndarray, sensor: _Sensor, spec: NightSpec, rng: np.random.Generator,
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


def _dark_electrons(spec: NightSpec, sensor: _Sensor, exptime: float, signal: np.ndarray | None) -> np.ndarray:
    """Expected electrons before noise: flat * signal (if any) + dark current (hot pixels included)."""
    if signal is None:
        electrons = np.full(spec.shape, spec.dark_e_per_s * exptime, np.float32)
    else:
        electrons = signal
        electrons *= sensor.flat
        electrons += np.float32(spec.dark_e_per_s * exptime)
    electrons.reshape(-1)[sensor.hot_index] += (sensor.hot_rate * exptime).astype(np.float32)
    return electrons


def _sexagesimal(ra_deg: float, dec_deg: float) -> tuple[str, str]:
    ra = Angle(ra_deg, u.deg).to_string(unit=u.hour, sep=" ", precision=2, pad=True)
    dec = Angle(dec_deg, u.deg).to_string(unit=u.deg, sep=" ", precision=1, alwayssign=True, pad=True)
    return ra, dec


def raw_header(spec: NightSpec, plan: _Plan) -> fits.Header:
    """The camera's keywords (no WCS: the pipeline has to solve for it)."""
    kind = "DARK" if plan.kind == "FLATDARK" else plan.kind
    header = fits.Header()
    header["EXPTIME"] = (float(plan.exptime), "[s] exposure time")
    header["IMAGETYP"] = (_IMAGETYP[kind], "type of image")
    header["ACQTYPE"] = (kind, "acquisition type")
    header["DATE-OBS"] = (plan.date_obs.isoformat(timespec="milliseconds"), "UTC start of exposure")
    header["CCD-TEMP"] = (CCD_TEMP, "[C] CCD temperature")
    header["ORIGFILE"] = (plan.path.name, "original file name")
    header["FILTER"] = (FILTER_NAME, "filter")
    header["INSTRUME"] = (INSTRUMENT, "instrument")
    if spec.write_gain_header:
        header["GAIN"] = (float(spec.gain), "[e-/ADU] detector gain")
        header["RDNOISE"] = (float(spec.read_noise_e), "[e-] read noise")
    if spec.transit is not None and kind == "SCIENCE":
        header["OBJECT"] = (spec.transit.name, "target")
    if spec.write_pointing_header and kind == "SCIENCE":
        header["RA"] = (float(spec.ra_deg), "[deg] telescope pointing RA")
        header["DEC"] = (float(spec.dec_deg), "[deg] telescope pointing Dec")
        ra, dec = _sexagesimal(spec.ra_deg, spec.dec_deg)
        header["OBJCTRA"] = (ra, "telescope pointing RA (h m s)")
        header["OBJCTDEC"] = (dec, "telescope pointing Dec (d m s)")
    return header


def _write_fits(path: Path, hdul: fits.HDUList) -> None:
    """Write under a hidden temporary name, then rename: a watcher never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.synthetic-tmp")
    try:
        hdul.writeto(temp, overwrite=True)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _write_raw(path: Path, data: np.ndarray, header: fits.Header) -> None:
    _write_fits(path, fits.HDUList([fits.PrimaryHDU(data=data, header=header)]))


# --------------------------------------------------------------------------------------- the night

def _schedule(root: Path, spec: NightSpec) -> list[_Plan]:
    """Every raw frame with its time: calibrations (flats first) end 10 min before the science."""
    cams = root / spec.date / f"{spec.date}-CAMS"
    skyflat = root / spec.date / f"{spec.date}-CAMS_SKYFLAT"
    start = dt.datetime.fromisoformat(spec.start_time)
    calib = ([("SKYFLAT", spec.flat_exptime, skyflat)] * spec.n_flats
             + [("FLATDARK", spec.flat_exptime, skyflat)] * spec.n_flat_darks
             + [("BIAS", 0.0, cams)] * spec.n_bias
             + [("DARK", float(t), cams) for t in spec.dark_exptimes for _ in range(spec.n_darks)])
    steps = [float(np.ceil(t)) + 15.0 for _, t, _ in calib]
    t = start - dt.timedelta(seconds=sum(steps) + 600.0)
    plans, counters = [], {}
    for (kind, exptime, directory), step in zip(calib, steps):
        plans.append(_plan(kind, counters, exptime, t, directory))
        t += dt.timedelta(seconds=step)
    for i in range(spec.n_science):
        when = start + dt.timedelta(seconds=i * spec.cadence_s)
        plans.append(_plan("SCIENCE", counters, spec.science_exptime, when, cams))
    names = [p.path for p in plans]
    if len(set(names)) != len(names):
        raise ValueError("two frames would get the same file name: use a cadence of at least 1 s")
    return plans


def _plan(kind: str, counters: dict[str, int], exptime: float, when: dt.datetime, directory: Path) -> _Plan:
    index = counters.get(kind, 0)
    counters[kind] = index + 1
    word = "DARK" if kind == "FLATDARK" else kind
    name = f"{when.strftime('%Y-%m-%d_%H.%M.%S')}_{word}.fits"
    return _Plan(kind=kind, index=index, exptime=float(exptime), date_obs=when, path=directory / name)


def _calibration_frame(spec: NightSpec, sensor: _Sensor, plan: _Plan) -> np.ndarray:
    """A dark, bias or sky flat as raw ADU (darks and flats get a few cosmic rays too)."""
    rng = _frame_rng(spec, plan.kind, plan.index)
    few_crs = max(1, spec.n_cosmic_rays // 20) if spec.n_cosmic_rays > 0 else 0
    signal = None
    if plan.kind == "SKYFLAT":
        level_e = rng.uniform(15000.0, 30000.0) * spec.gain
        signal = np.full(spec.shape, level_e, np.float32)
        n_stars = int(rng.integers(5, 11))
        sigma = _psf_sigma_px(spec)
        peak = level_e * rng.uniform(0.02, 0.1, n_stars)
        render_stars(signal, rng.uniform(0, spec.shape[1] - 1, n_stars), rng.uniform(0, spec.shape[0] - 1, n_stars),
                     peak * 2.0 * np.pi * sigma ** 2, sigma)
    exptime = plan.exptime if plan.kind != "BIAS" else 0.0
    electrons = _dark_electrons(spec, sensor, exptime, signal)
    crs = cosmic_rays(spec.shape, few_crs if plan.kind != "BIAS" else 0, rng)
    return _to_raw(electrons, sensor, spec, rng, crs)


def _science_frame(spec: NightSpec, sensor: _Sensor, plan: _Plan, truth_dir: Path,
                   target: dict | None = None) -> dict:
    """Write one science frame and its truth file; return its true WCS header cards."""
    rng = _frame_rng(spec, "SCIENCE", plan.index)
    jitter = rng.normal(0.0, 3.0, 2) / 3600.0  # a few arcsec of pointing jitter per frame
    w = true_wcs(spec, spec.ra_deg + jitter[0] / np.cos(np.deg2rad(spec.dec_deg)), spec.dec_deg + jitter[1])
    sigma = _psf_sigma_px(spec)
    stars = _field_stars(spec, w, sigma)
    if spec.transit is not None or spec.transparency_rms > 0 or spec.cloud_frames:
        _dim_stars(spec, plan, stars, target)
    sky = np.full(spec.shape, spec.sky_e_per_s * spec.science_exptime, np.float32)
    render_stars(sky, stars["x"], stars["y"], stars["flux_e"], sigma)
    stars["peak_e"] = _peaks(sky, stars)
    crs = cosmic_rays(spec.shape, spec.n_cosmic_rays, rng)
    crmask = np.zeros(spec.shape, np.uint8)
    crmask.reshape(-1)[crs[0]] = 1
    cards = dict(w.to_header())
    _write_truth_frame(truth_dir / f"{plan.path.stem}_truth.fits", sky, crmask, stars, w)
    del crmask
    electrons = _dark_electrons(spec, sensor, plan.exptime, sky)  # consumes sky
    _write_raw(plan.path, _to_raw(electrons, sensor, spec, rng, crs), raw_header(spec, plan))
    return cards


def _dim_stars(spec: NightSpec, plan: _Plan, stars: Table, target: dict | None) -> None:
    """This frame's transparency on every star and the transit on the target (``flux_e`` in place);
    the factors go into the truth table (``transparency``, ``transit`` and ``target`` columns)."""
    clear = transparency(spec.seed, plan.index, spec.transparency_rms, spec.cloud_frames, spec.cloud_dimming)
    stars["transparency"] = np.full(len(stars), clear)
    stars["transit"] = np.ones(len(stars))
    stars["target"] = np.zeros(len(stars), bool)
    if spec.transit is not None and target is not None and len(stars):
        offset = np.hypot((np.asarray(stars["ra"]) - target["ra"]) * np.cos(np.deg2rad(target["dec"])),
                          np.asarray(stars["dec"]) - target["dec"]) * 3600.0
        row = int(np.argmin(offset))
        if offset[row] < 1.0:
            mid_exposure = plan.date_obs + dt.timedelta(seconds=plan.exptime / 2)
            stars["transit"][row] = transit_factor(spec.transit, mid_exposure)
            stars["target"][row] = True
    stars["flux_e"] *= stars["transparency"] * stars["transit"]


def _pick_target(spec: NightSpec) -> dict | None:
    """The transiting star of the night (on the unjittered frame), as ra, dec, mag."""
    if spec.transit is None:
        return None
    w = true_wcs(spec, spec.ra_deg, spec.dec_deg)
    sigma = _psf_sigma_px(spec)
    stars = _field_stars(spec, w, sigma)
    row = choose_target(stars, spec.transit, ((spec.shape[1] - 1) / 2, (spec.shape[0] - 1) / 2),
                        0.3 * min(spec.shape), 12.0 * sigma, spec.dead_column)
    return {key: float(stars[key][row]) for key in ("ra", "dec", "mag")}


def _peaks(sky: np.ndarray, stars: Table) -> np.ndarray:
    ny, nx = sky.shape
    ix = np.clip(np.rint(np.asarray(stars["x"])).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(np.asarray(stars["y"])).astype(int), 0, ny - 1)
    return sky[iy, ix].astype(float)


def _write_truth_frame(path: Path, sky: np.ndarray, crmask: np.ndarray, stars: Table, w: WCS) -> None:
    primary = fits.PrimaryHDU(data=sky, header=w.to_header())
    primary.header["BUNIT"] = ("electron", "noiseless sky + stars, before flat/dark/bias")
    _write_fits(path, fits.HDUList([primary, fits.ImageHDU(data=crmask, name="CRMASK"),
                                    fits.BinTableHDU(stars, name="STARS")]))


def make_night(root: Path, spec: NightSpec = NightSpec(), truth_dir: Path | None = None) -> NightTruth:
    """Write one synthetic night under ``root`` in the telescope's layout and save its truth.

    Calibration frames are written first and science frames last, one frame at a time; the truth goes
    to ``truth_dir`` (default ``root/.truth/DATE``: hidden, outside the night directory), and
    ``truth.json`` is written last of all.
    """
    root = Path(root)
    truth_dir = Path(truth_dir) if truth_dir is not None else root / ".truth" / spec.date
    truth_dir.mkdir(parents=True, exist_ok=True)
    sensor = _make_sensor(spec)
    plans = _schedule(root, spec)
    wcs_headers: dict[str, dict] = {}
    target = _pick_target(spec)
    for plan in plans:
        if plan.kind == "SCIENCE":
            wcs_headers[plan.path.stem] = _science_frame(spec, sensor, plan, truth_dir, target)
        else:
            _write_raw(plan.path, _calibration_frame(spec, sensor, plan), raw_header(spec, plan))
    hot = np.zeros(spec.shape, bool)
    hot.reshape(-1)[sensor.hot_index] = True
    truth = NightTruth(
        root=root, night_dir=root / spec.date, truth_dir=truth_dir,
        science_files=[p.path for p in plans if p.kind == "SCIENCE"],
        dark_files=[p.path for p in plans if p.kind == "DARK"],
        flat_files=[p.path for p in plans if p.kind == "SKYFLAT"],
        flat_dark_files=[p.path for p in plans if p.kind == "FLATDARK"],
        bias_files=[p.path for p in plans if p.kind == "BIAS"],
        flat=sensor.flat, hot_pixels=hot, dead_column=spec.dead_column, spec=spec, wcs_headers=wcs_headers,
        target=target)
    _save_truth(truth, sensor)
    return truth


# ------------------------------------------------------------------------------------ truth on disk

_FILE_LISTS = ("science_files", "dark_files", "flat_files", "flat_dark_files", "bias_files")


def _save_truth(truth: NightTruth, sensor: _Sensor) -> None:
    """flat.fits, hot_pixels.fits (with the hot rates as a table) and truth.json (spec, files, WCS)."""
    _write_fits(truth.truth_dir / "flat.fits", fits.HDUList([fits.PrimaryHDU(data=truth.flat)]))
    rates = fits.BinTableHDU(Table({"index": sensor.hot_index, "rate_e_per_s": sensor.hot_rate}), name="HOTRATES")
    _write_fits(truth.truth_dir / "hot_pixels.fits",
                fits.HDUList([fits.PrimaryHDU(data=truth.hot_pixels.astype(np.uint8)), rates]))
    document = {
        "format": "astep-cal synthetic truth 1",
        "root": str(truth.root.resolve()),
        "spec": asdict(truth.spec),
        "zero_point_mag": ZERO_POINT_MAG,
        **{name: [str(p.relative_to(truth.root)) for p in getattr(truth, name)] for name in _FILE_LISTS},
        "wcs": truth.wcs_headers,
        "target": truth.target,
    }
    temp = truth.truth_dir / ".truth.json.tmp"
    temp.write_text(json.dumps(document, indent=1))
    os.replace(temp, truth.truth_dir / "truth.json")


def _spec_from_dict(values: dict) -> NightSpec:
    """Rebuild a NightSpec from JSON (lists back to tuples; unknown keys ignored)."""
    known = {f.name: f for f in fields(NightSpec)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
    if isinstance(kwargs.get("transit"), dict):
        kwargs["transit"] = TransitSpec(**kwargs["transit"])
    return NightSpec(**kwargs)


def load_truth(truth_dir: Path) -> NightTruth:
    """Read back the truth that :func:`make_night` saved in ``truth_dir``."""
    truth_dir = Path(truth_dir)
    document = json.loads((truth_dir / "truth.json").read_text())
    spec = _spec_from_dict(document["spec"])
    root = Path(document["root"])
    lists = {name: [root / p for p in document[name]] for name in _FILE_LISTS}
    return NightTruth(
        root=root, night_dir=root / spec.date, truth_dir=truth_dir, **lists,
        flat=fits.getdata(truth_dir / "flat.fits").astype(np.float32),
        hot_pixels=fits.getdata(truth_dir / "hot_pixels.fits", ext=0).astype(bool),
        dead_column=spec.dead_column, spec=spec, wcs_headers=document["wcs"], target=document.get("target"))


def _stem(science_name: str | Path) -> str:
    """Accept a file name, a path or a stem for a science frame."""
    name = Path(science_name).name
    return name[:-5] if name.lower().endswith(".fits") else name


# ------------------------------------------------------------------- a frame with placed defects

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
    from ..masters import combine_stack, normalise

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
