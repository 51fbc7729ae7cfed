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

The sky (true WCS, Tycho-2 stars, star and cosmic-ray drawing) is :mod:`sky`, the detector (flat, bias,
hot pixels, electrons to ADU) :mod:`sensor`, a transiting star and clouds :mod:`transit`; one frame with
placed defects for the science tests is :mod:`defect_scene`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astep_cal.devtools.sensor import Sensor, dark_electrons, frame_rng, make_sensor, to_raw
from astep_cal.devtools.sky import ZERO_POINT_MAG, cosmic_rays, field_stars, psf_sigma_px, render_stars, true_wcs
from astep_cal.devtools.transit import TransitSpec, choose_target, transit_factor, transparency

INSTRUMENT = "ASTEP400 (synthetic)"
FILTER_NAME = "RC"
CCD_TEMP = -40.0
# A small frame that still solves: half the pixels of 1024² at twice the scale (a 1° field); the seeing
# is doubled too, so stars keep the ~2.5 px FWHM of the real camera (undersampled stars are
# indistinguishable from cosmic rays). Used by the tests and the soak run (``NightSpec(**SMALL_FIELD)``).
SMALL_FIELD = dict(shape=(512, 512), pixel_scale_arcsec=7.2, fwhm_arcsec=18.0, n_cosmic_rays=40, n_hot_pixels=80,
                   dead_column=150)
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
    header_gain: float | None = None  # the GAIN card's value (None: the true gain): a camera that misreports
    write_rdnoise_header: bool = True  # RDNOISE written (when write_gain_header): GAIN alone when False
    write_pointing_header: bool = True  # RA/DEC (deg) and OBJCTRA/OBJCTDEC (sexagesimal) present?
    start_time: str = "2026-07-01T20:00:00"  # DATE-OBS of the first science frame (UTC)
    cadence_s: float = 90.0
    seed: int = 1  # noise, cosmic rays, pointing jitter: differ per night
    sensor_seed: int = 42  # flat, dust, hot pixels, dead column: the same sensor for every night
    transit: TransitSpec | None = None  # a field star with a transit (OBJECT names it; see devtools.transit)
    transparency_rms: float = 0.0  # per-frame starlight loss 1 - |N(0, rms)| (thin cirrus)
    cloud_frames: tuple[int, ...] = ()  # science frames (0-based) dimmed by a cloud ...
    cloud_dimming: float = 0.8  # ... losing this fraction of the starlight
    header_style: str = "generic"  # "astep": ASTEP's keywords (SCIDCRD, SCINAME, BEGINOBS, INSTFILT), pixel
    #                                pseudo-WCS cards, and no RA/DEC, OBJCTRA/OBJCTDEC or OBJECT
    throughput: float = 1.0  # fraction of the starlight the optics pass (frost on the mirror: < 1)
    flat_ring: tuple[float, ...] = ()  # (x, y, r_in, r_out, depth): an ice/dust donut in the light path
    camera: str = "CAMS"  # the raw directories' suffix: DATE-CAMB, DATE-CAMR for ASTEP+'s two cameras


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
class _Plan:
    """One raw frame to write: its role, exposure, time and file."""

    kind: str  # SCIENCE, DARK, BIAS, SKYFLAT or FLATDARK (a DARK in the -CAMS_SKYFLAT directory)
    index: int
    exptime: float
    date_obs: dt.datetime
    path: Path


# ------------------------------------------------------------------------------------ raw and files

def _sexagesimal(ra_deg: float, dec_deg: float) -> tuple[str, str]:
    ra = Angle(ra_deg, u.deg).to_string(unit=u.hour, sep=" ", precision=2, pad=True)
    dec = Angle(dec_deg, u.deg).to_string(unit=u.deg, sep=" ", precision=1, alwayssign=True, pad=True)
    return ra, dec


def raw_header(spec: NightSpec, plan: _Plan, target: dict | None = None) -> fits.Header:
    """The camera's keywords (no WCS: the pipeline has to solve for it)."""
    if spec.header_style == "astep":
        return _astep_header(spec, plan, target)
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
        header["GAIN"] = (float(spec.gain if spec.header_gain is None else spec.header_gain), "[e-/ADU] detector gain")
        if spec.write_rdnoise_header:
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


def _astep_header(spec: NightSpec, plan: _Plan, target: dict | None) -> fits.Header:
    """ASTEP's own keywords (``../shared/README.md``): the science target in ``SCINAME`` and ``SCIDCRD``
    ('RA-DEC' in degrees: ``'148.37737--45.71622'``), the start in ``BEGINOBS``, the filter in ``INSTFILT``,
    and the camera's pixel pseudo-WCS; no generic pointing or ``OBJECT`` card."""
    header = raw_header(replace(spec, header_style="generic", write_pointing_header=False, transit=None), plan)
    header.rename_keyword("FILTER", "INSTFILT")
    header["BEGINOBS"] = (header["DATE-OBS"], "UTC start of exposure")
    for axis, size in ((1, spec.shape[1]), (2, spec.shape[0])):
        header[f"CTYPE{axis}"], header[f"CRPIX{axis}"], header[f"CRVAL{axis}"] = "PIXEL", 1.0, float(size // 2)
    if plan.kind == "SCIENCE":
        ra, dec = (target["ra"], target["dec"]) if target else (spec.ra_deg, spec.dec_deg)
        header["SCIDCRD"] = (f"{ra:.5f}-{dec:.5f}", "science target RA-DEC (deg)")
        header["SCINAME"] = (spec.transit.name if spec.transit else "SYN-FIELD", "science target name")
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
    cams = root / spec.date / f"{spec.date}-{spec.camera}"
    skyflat = root / spec.date / f"{spec.date}-{spec.camera}_SKYFLAT"
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


def _calibration_frame(spec: NightSpec, sensor: Sensor, plan: _Plan) -> np.ndarray:
    """A dark, bias or sky flat as raw ADU (darks and flats get a few cosmic rays too)."""
    rng = frame_rng(spec, plan.kind, plan.index)
    few_crs = max(1, spec.n_cosmic_rays // 20) if spec.n_cosmic_rays > 0 else 0
    signal = None
    if plan.kind == "SKYFLAT":
        level_e = rng.uniform(15000.0, 30000.0) * spec.gain
        signal = np.full(spec.shape, level_e, np.float32)
        n_stars = int(rng.integers(5, 11))
        sigma = psf_sigma_px(spec)
        peak = level_e * rng.uniform(0.02, 0.1, n_stars)
        render_stars(signal, rng.uniform(0, spec.shape[1] - 1, n_stars), rng.uniform(0, spec.shape[0] - 1, n_stars),
                     peak * 2.0 * np.pi * sigma ** 2, sigma)
    exptime = plan.exptime if plan.kind != "BIAS" else 0.0
    electrons = dark_electrons(spec, sensor, exptime, signal)
    crs = cosmic_rays(spec.shape, few_crs if plan.kind != "BIAS" else 0, rng)
    return to_raw(electrons, sensor, spec, rng, crs)


def _science_frame(spec: NightSpec, sensor: Sensor, plan: _Plan, truth_dir: Path,
                   target: dict | None = None) -> dict:
    """Write one science frame and its truth file; return its true WCS header cards."""
    rng = frame_rng(spec, "SCIENCE", plan.index)
    jitter = rng.normal(0.0, 3.0, 2) / 3600.0  # a few arcsec of pointing jitter per frame
    w = true_wcs(spec, spec.ra_deg + jitter[0] / np.cos(np.deg2rad(spec.dec_deg)), spec.dec_deg + jitter[1])
    sigma = psf_sigma_px(spec)
    stars = field_stars(spec, w, sigma)
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
    electrons = dark_electrons(spec, sensor, plan.exptime, sky)  # consumes sky
    _write_raw(plan.path, to_raw(electrons, sensor, spec, rng, crs), raw_header(spec, plan, target))
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
    sigma = psf_sigma_px(spec)
    stars = field_stars(spec, w, sigma)
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
    sensor = make_sensor(spec)
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


def _save_truth(truth: NightTruth, sensor: Sensor) -> None:
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


