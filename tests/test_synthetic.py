"""The synthetic night generator: real files in the real layout, and a truth that matches the pixels.

Everything the pipeline's science tests rely on is checked here against the written files themselves:
if the truth were wrong (a WCS off by a pixel, a cosmic-ray mask that misses hits, a flat that
changes between nights) every score computed from it would be meaningless.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astep_cal.devtools.sensor import make_flat
from astep_cal.devtools.sky import field_radius_deg, tycho2_stars
from astep_cal.devtools.synthetic import NightSpec, load_truth, make_night

SMALL = NightSpec(shape=(512, 512), pixel_scale_arcsec=7.2, n_cosmic_rays=60, n_hot_pixels=80,
                  dead_column=150, n_bias=2, dark_exptimes=(30.0, 60.0))
NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{2})\.(\d{2})\.(\d{2})_(SCIENCE|DARK|BIAS|SKYFLAT)\.fits$")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("night_a")
    return make_night(root, SMALL)


@pytest.fixture(scope="module")
def other_night(tmp_path_factory):
    """Same sensor, another night: other noise, no sky flats, no gain or pointing keywords."""
    root = tmp_path_factory.mktemp("night_b")
    spec = replace(SMALL, date="2026-07-03", start_time="2026-07-03T21:00:00", seed=7, n_flats=0,
                   n_flat_darks=0, n_bias=0, dark_exptimes=(60.0,), write_gain_header=False,
                   write_pointing_header=False)
    return make_night(root, spec)


def _raw(path: Path) -> np.ndarray:
    return fits.getdata(path).astype(np.float64)


def _expected_raw(truth, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless raw ADU of a science frame (without bias pattern and hot pixels) and its noise (ADU)."""
    spec = truth.spec
    electrons = truth.flat * truth.sky_e(name) + spec.dark_e_per_s * spec.science_exptime
    sigma = np.sqrt(electrons + spec.read_noise_e ** 2) / spec.gain
    return spec.bias_adu + electrons / spec.gain, sigma


# ------------------------------------------------------------------------------------------- layout

def test_layout_and_names(night):
    spec, date = night.spec, night.spec.date
    cams, skyflat = night.night_dir / f"{date}-CAMS", night.night_dir / f"{date}-CAMS_SKYFLAT"
    assert sorted(p.name for p in night.night_dir.iterdir()) == [f"{date}-CAMS", f"{date}-CAMS_SKYFLAT"]
    assert len(night.science_files) == spec.n_science
    assert len(night.dark_files) == spec.n_darks * len(spec.dark_exptimes)
    assert len(night.bias_files) == spec.n_bias
    assert len(night.flat_files) == spec.n_flats and len(night.flat_dark_files) == spec.n_flat_darks
    in_cams = night.science_files + night.dark_files + night.bias_files
    in_skyflat = night.flat_files + night.flat_dark_files
    assert all(p.parent == cams for p in in_cams) and all(p.parent == skyflat for p in in_skyflat)
    assert sorted(p.name for p in cams.iterdir()) == sorted(p.name for p in in_cams)  # no leftovers
    assert sorted(p.name for p in skyflat.iterdir()) == sorted(p.name for p in in_skyflat)
    kinds = {"SCIENCE": night.science_files, "DARK": night.dark_files + night.flat_dark_files,
             "BIAS": night.bias_files, "SKYFLAT": night.flat_files}
    for kind, paths in kinds.items():
        for path in paths:
            match = NAME.match(path.name)
            assert match and match.group(5) == kind, path.name
            date_obs = dt.datetime.fromisoformat(fits.getval(path, "DATE-OBS"))
            assert date_obs.strftime("%Y-%m-%d_%H.%M.%S") == path.name[:19]
    start = dt.datetime.fromisoformat(spec.start_time)
    for i, path in enumerate(night.science_files):
        assert dt.datetime.fromisoformat(fits.getval(path, "DATE-OBS")) == start + dt.timedelta(seconds=i * 90)
    assert night.truth_dir == night.root / ".truth" / date
    assert not night.truth_dir.is_relative_to(night.night_dir)


def test_night_without_flats_has_no_skyflat_directory(other_night):
    assert not (other_night.night_dir / f"{other_night.spec.date}-CAMS_SKYFLAT").exists()
    assert other_night.flat_files == [] and other_night.flat_dark_files == []


def test_raw_files_are_uint16_with_bzero(night):
    for path in night.science_files + night.dark_files + night.bias_files + night.flat_files:
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            header = hdul[0].header
            assert header["BITPIX"] == 16 and header["BZERO"] == 32768 and header["NAXIS"] == 2
            assert (header["NAXIS2"], header["NAXIS1"]) == night.spec.shape
            assert hdul[0].data.dtype.kind == "i"  # stored signed, BZERO makes it unsigned
        assert fits.getdata(path).dtype == np.uint16
    assert _raw(night.science_files[0]).max() <= 65535


def test_headers_present(night):
    expected = {"SCIENCE": ("Light Frame", 60.0), "DARK": ("Dark Frame", None), "BIAS": ("Bias Frame", 0.0),
                "SKYFLAT": ("Flat Field", 5.0)}
    groups = {"SCIENCE": night.science_files, "DARK": night.dark_files + night.flat_dark_files,
              "BIAS": night.bias_files, "SKYFLAT": night.flat_files}
    for kind, paths in groups.items():
        for path in paths:
            header = fits.getheader(path)
            imagetyp, exptime = expected[kind]
            assert header["IMAGETYP"] == imagetyp and header["ACQTYPE"] == kind
            if exptime is not None:
                assert header["EXPTIME"] == exptime
            assert header["ORIGFILE"] == path.name and header["CCD-TEMP"] == -40.0
            assert header["INSTRUME"] == "ASTEP400 (synthetic)" and "FILTER" in header
            assert header["GAIN"] == 2.0 and header["RDNOISE"] == 9.0
            assert not any(key in header for key in ("CTYPE1", "CRVAL1", "CD1_1", "PC1_1", "WCSAXES"))
    assert sorted(fits.getval(p, "EXPTIME") for p in night.dark_files) == [30.0] * 3 + [60.0] * 3
    assert {fits.getval(p, "EXPTIME") for p in night.flat_dark_files} == {5.0}
    science = fits.getheader(night.science_files[0])
    assert science["RA"] == 150.0 and science["DEC"] == -60.0
    assert science["OBJCTRA"] == "10 00 00.00" and science["OBJCTDEC"] == "-60 00 00.0"


def test_headers_absent_when_switched_off(other_night):
    for path in other_night.science_files + other_night.dark_files:
        header = fits.getheader(path)
        for key in ("GAIN", "RDNOISE", "RA", "DEC", "OBJCTRA", "OBJCTDEC"):
            assert key not in header
        assert header["EXPTIME"] > 0


# -------------------------------------------------------------------------------------------- truth

def test_load_truth_round_trips(night):
    loaded = load_truth(night.truth_dir)
    assert loaded.spec == night.spec and loaded.root == night.root.resolve()
    for name in ("science_files", "dark_files", "flat_files", "flat_dark_files", "bias_files"):
        assert [p.resolve() for p in getattr(loaded, name)] == [p.resolve() for p in getattr(night, name)]
    assert loaded.flat.dtype == np.float32 and np.array_equal(loaded.flat, night.flat)
    assert np.array_equal(loaded.hot_pixels, night.hot_pixels) and loaded.dead_column == 150
    name = night.science_files[1].name
    grid = np.array([[0.0, 0.0], [511.0, 0.0], [255.5, 300.0], [100.0, 511.0]])
    assert np.allclose(loaded.wcs(name).all_pix2world(grid, 0), night.wcs(name).all_pix2world(grid, 0),
                       rtol=0, atol=1e-10)
    assert np.array_equal(loaded.sky_e(name), night.sky_e(name))
    assert np.array_equal(loaded.cosmic_mask(Path(name).stem), night.cosmic_mask(name))
    assert len(loaded.stars(name)) == len(night.stars(name)) > 20


def test_true_wcs_is_the_requested_pointing_and_scale(night):
    spec = night.spec
    for path in night.science_files:
        w = night.wcs(path.name)
        ra, dec = w.all_pix2world([[255.5, 255.5]], 0)[0]
        offset = np.hypot((ra - spec.ra_deg) * np.cos(np.deg2rad(dec)), dec - spec.dec_deg) * 3600
        assert 0 < offset < 20  # jittered by a few arcsec, not more
        scales = np.sqrt((w.pixel_scale_matrix ** 2).sum(axis=0)) * 3600
        assert np.allclose(scales, spec.pixel_scale_arcsec)
    assert night.wcs(night.science_files[0].name).wcs.crval[0] != night.wcs(night.science_files[1].name).wcs.crval[0]


def test_stars_are_where_the_image_has_flux(night):
    name = night.science_files[0].name
    stars, raw = night.stars(name), _raw(night.science_files[0])
    columns = set(stars.colnames)
    assert {"ra", "dec", "x", "y", "mag", "flux_e"} <= columns
    # the table's x, y are the projection of ra, dec through the true WCS (0-based pixels)
    x, y = night.wcs(name).all_world2pix(stars["ra"], stars["dec"], 0)
    assert np.allclose(x, stars["x"], atol=1e-6) and np.allclose(y, stars["y"], atol=1e-6)
    sky = np.median(raw)
    noise = 1.4826 * np.median(np.abs(raw - sky))
    inside = (stars["x"] > 5) & (stars["x"] < 506) & (stars["y"] > 5) & (stars["y"] < 506)
    bright = stars[inside][:10]
    peaks = raw[np.rint(bright["y"]).astype(int), np.rint(bright["x"]).astype(int)] - sky
    assert peaks.mean() > 100 * noise
    # every star in the frame, faint ones included, stands clearly above the sky
    faint = stars[inside]
    assert faint["mag"].max() > 10.5
    assert np.all(raw[np.rint(faint["y"]).astype(int), np.rint(faint["x"]).astype(int)] - sky > 10 * noise)


def test_star_centroids_match_truth_positions(night):
    """Centroids measured on the raw frame sit on the truth's (x, y): no half-pixel convention slip."""
    name = night.science_files[0].name
    stars, raw = night.stars(name), _raw(night.science_files[0])
    sky = np.median(raw)
    errors = []
    for star in stars:
        ix, iy = int(round(star["x"])), int(round(star["y"]))
        if not (4 <= ix < 508 and 4 <= iy < 508):
            continue
        box = raw[iy - 3:iy + 4, ix - 3:ix + 4] - sky
        if box.max() + sky >= 65535 or box.max() < 2000:
            continue  # saturated (flat-topped) or too faint for a clean centroid
        yy, xx = np.mgrid[iy - 3:iy + 4, ix - 3:ix + 4]
        errors.append(np.hypot((box * xx).sum() / box.sum() - star["x"], (box * yy).sum() / box.sum() - star["y"]))
    assert len(errors) >= 10
    assert np.median(errors) < 0.1


def test_sky_e_is_sky_plus_stars(night):
    name = night.science_files[0].name
    sky_e, spec = night.sky_e(name), night.spec
    assert sky_e.dtype == np.float32 and sky_e.shape == spec.shape
    assert np.median(sky_e) == pytest.approx(spec.sky_e_per_s * spec.science_exptime, rel=0.01)
    stars = night.stars(name)
    inside = (stars["x"] > 20) & (stars["x"] < 491) & (stars["y"] > 20) & (stars["y"] < 491)
    star = stars[inside][0]
    ix, iy = int(round(star["x"])), int(round(star["y"]))
    box = sky_e[iy - 8:iy + 9, ix - 8:ix + 9].astype(np.float64) - spec.sky_e_per_s * spec.science_exptime
    assert box.sum() == pytest.approx(star["flux_e"], rel=0.02)  # neighbours may add a little
    # the raw frame is the truth through the flat, dark, gain and bias, plus noise
    expected, sigma = _expected_raw(night, name)
    usable = ~night.cosmic_mask(name) & ~night.hot_pixels & (expected < 60000)
    residual = (_raw(night.science_files[0]) - expected)[usable] / sigma[usable]
    assert abs(np.median(residual)) < 0.2 and 0.9 < np.std(residual) < 1.3


def test_cosmic_mask_pixels_are_bright_in_the_raw_frame(night):
    for path in night.science_files:
        mask = night.cosmic_mask(path.name)
        assert mask.dtype == bool and night.spec.n_cosmic_rays <= mask.sum() <= 60 * night.spec.n_cosmic_rays
        expected, sigma = _expected_raw(night, path.name)
        check = mask & ~night.hot_pixels & (expected < 3000)  # on the sky, not on a star's photon noise
        assert check.sum() > 0.8 * mask.sum()
        excess = (_raw(path) - expected)[check] / sigma[check]
        assert excess.min() > 5  # >= 500 e- per hit pixel
        assert np.median(excess) > 20
    masks = [night.cosmic_mask(p.name) for p in night.science_files]
    assert not np.array_equal(masks[0], masks[1])


# ------------------------------------------------------------------------------------------- sensor

def test_flat_properties(night):
    flat, spec = night.flat, night.spec
    assert flat.dtype == np.float32 and flat.shape == spec.shape
    assert np.median(flat) == pytest.approx(1.0, abs=0.002)
    assert np.allclose(flat[:, spec.dead_column], 0.02, atol=0.001)
    centre = np.median(flat[236:276, 236:276])
    corners = np.median(np.concatenate([flat[:8, :8].ravel(), flat[:8, -8:].ravel(), flat[-8:, :8].ravel(),
                                        flat[-8:, -8:].ravel()]))
    assert 0.72 < corners / centre < 0.88
    small_scale = flat[100:140, 300:340] / np.median(flat[100:140, 300:340])
    assert 0.005 < np.std(small_scale) < 0.02  # ~1 % pixel-to-pixel response
    # the raw sky flats show the flat: 15000-30000 ADU of twilight, dead column nearly black
    for path in night.flat_files:
        raw = _raw(path) - night.spec.bias_adu
        level = np.median(raw / np.maximum(flat, 0.5))
        assert 15000 < level < 30000
        assert np.median(raw[:, spec.dead_column]) < 0.05 * level
    levels = [np.median(_raw(p)) for p in night.flat_files]
    assert len(set(np.round(levels))) == len(levels)


def test_same_sensor_same_flat_and_different_noise(night, other_night):
    assert np.array_equal(night.flat, other_night.flat)
    assert np.array_equal(night.hot_pixels, other_night.hot_pixels)
    dark_a = _raw([p for p in night.dark_files if fits.getval(p, "EXPTIME") == 60.0][0])
    dark_b = _raw(other_night.dark_files[0])
    assert not np.array_equal(dark_a, dark_b)
    assert abs(np.median(dark_a) - np.median(dark_b)) <= 1.0
    cool = ~night.hot_pixels
    difference = (dark_a - dark_b)[cool]
    robust_std = 1.4826 * np.median(np.abs(difference - np.median(difference)))
    assert 0.8 < robust_std / (np.sqrt(2) * 4.5) < 1.3  # read noise 4.5 ADU in each (cosmic rays aside)
    other_sensor = make_flat(replace(night.spec, sensor_seed=43))
    assert not np.allclose(other_sensor, night.flat, atol=0.005)


def test_hot_pixels_are_hot_in_darks(night):
    hot, spec = night.hot_pixels, night.spec
    assert hot.sum() == spec.n_hot_pixels and not hot[:, spec.dead_column].any()
    for path in night.dark_files + night.flat_dark_files:
        raw, exptime = _raw(path), fits.getval(path, "EXPTIME")
        excess = raw[hot] - np.median(raw)
        assert excess.min() > 0.8 * 20.0 * exptime / spec.gain  # at least 20 e-/s
        assert excess.max() < 1.2 * 400.0 * exptime / spec.gain + 50
        cool = raw[~hot] - np.median(raw)
        assert np.percentile(cool, 99.9) < 0.2 * 20.0 * exptime / spec.gain + 40


def test_biases_are_bias_and_read_noise(night):
    raw = _raw(night.bias_files[0])
    assert np.median(raw) == pytest.approx(night.spec.bias_adu, abs=3)
    assert 4.0 < 1.4826 * np.median(np.abs(raw - np.median(raw))) < 6.5  # 4.5 ADU + the bias pattern


# ------------------------------------------------------------------------------------ determinism

def test_same_spec_same_bytes(tmp_path):
    spec = replace(SMALL, shape=(128, 160), pixel_scale_arcsec=28.0, n_bias=0, dark_exptimes=(60.0,),
                   n_darks=1, n_flats=1, n_flat_darks=1, n_science=1, dead_column=None, n_hot_pixels=10)
    first, second = make_night(tmp_path / "a", spec), make_night(tmp_path / "b", spec)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / spec.date).rglob("*.fits"))
    assert len(files) == 4
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert first.flat.shape == (128, 160) and first.dead_column is None
    assert np.array_equal(first.sky_e(first.science_files[0].name), second.sky_e(second.science_files[0].name))
    assert not list((tmp_path / "a").rglob("*tmp*"))


# ---------------------------------------------------------------------------------------- catalogue

def test_tycho2_stars_union_deduplicated_and_cached():
    stars = tycho2_stars(150.0, -60.0, 0.6)
    assert stars.colnames[:3] == ["ra", "dec", "mag"] and len(stars) > 50
    ra, dec = np.deg2rad(stars["ra"]), np.deg2rad(stars["dec"])
    xyz = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    separation = np.degrees(np.arccos(np.clip(xyz @ xyz.T, -1, 1))) * 3600
    np.fill_diagonal(separation, np.inf)
    assert separation.min() > 2.0
    centre = np.array([np.cos(np.deg2rad(-60)) * np.cos(np.deg2rad(150)),
                       np.cos(np.deg2rad(-60)) * np.sin(np.deg2rad(150)), np.sin(np.deg2rad(-60))])
    assert np.degrees(np.arccos(np.clip(xyz @ centre, -1, 1))).max() <= 0.6 + 1e-6
    assert stars["mag"].min() < 8 and stars["mag"].max() > 10.5
    stars["mag"][0] = 99.0  # the caller gets a copy: the cache is not spoiled
    again = tycho2_stars(150.0, -60.0, 0.6)
    assert again["mag"][0] < 99 and len(again) == len(stars)


def test_field_radius_holds_the_frame():
    default = NightSpec()
    assert 0.72 < field_radius_deg(default) < 0.76  # half diagonal of a 1.02 deg square, plus margin
    assert field_radius_deg(SMALL) == pytest.approx(field_radius_deg(default), abs=0.01)
