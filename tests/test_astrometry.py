"""solve-field for real, against the installed Tycho-2 index files, on synthetic frames with a known WCS."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.engine import astrometry
from astep_cal.formats import wcs_cards
from astep_cal.formats.products import sources_hdu
from astep_cal.science.quality import Sources, measure_frame
from astep_cal.support.config import AstrometrySettings

SETTINGS = AstrometrySettings()


@pytest.fixture(scope="module")
def raw_night(tmp_path_factory):
    """Two raw 1024² science frames with real stars (the solver does not need calibration to solve)."""
    root = tmp_path_factory.mktemp("astrometry")
    return make_night(root, NightSpec(n_science=2, n_darks=3, n_flats=3, n_flat_darks=3))


def _cal_like(raw: Path, directory: Path, drop_pointing: bool = False, n_sources: int | None = None) -> Path:
    """A copy of a raw frame shaped like a CAL file: primary image + MASK extension, and with
    ``n_sources`` the SOURCES table of the quality step's ``n_sources`` brightest stars (0: all)."""
    data, header = fits.getdata(raw, header=True)
    if drop_pointing:
        for key in ("RA", "DEC", "OBJCTRA", "OBJCTDEC"):
            header.remove(key, ignore_missing=True)
    header["ASTCWCS"] = "pending"
    path = directory / raw.name.replace(".fits", "_CAL.fits")
    mask = fits.ImageHDU(np.zeros(data.shape, np.uint8), name="MASK")
    hdus = [fits.PrimaryHDU(data.astype(np.float32), header), mask]
    if n_sources is not None:
        sources = measure_frame(data.astype(np.float32), mask.data).sources
        keep = slice(None) if n_sources == 0 else slice(n_sources)
        hdus.append(sources_hdu(Sources(sources.x[keep], sources.y[keep], sources.flux[keep])))
    fits.HDUList(hdus).writeto(path)
    return path


def _error_px(path: Path, truth, raw_name: str) -> float:
    header = fits.getheader(path)
    return astrometry.wcs_error_px(WCS(header), truth.wcs(raw_name), truth.spec.shape)


def test_pointing_from_header_reads_degrees_and_sexagesimal():
    assert astrometry.pointing_from_header(fits.Header({"RA": 150.5, "DEC": -20.25})) == (150.5, -20.25)
    ra, dec = astrometry.pointing_from_header(fits.Header({"OBJCTRA": "10 02 00", "OBJCTDEC": "-20 15 00"}))
    assert ra == pytest.approx(150.5) and dec == pytest.approx(-20.25)
    assert astrometry.pointing_from_header(fits.Header({"RA": "junk", "DEC": 3.0})) is None
    assert astrometry.pointing_from_header(fits.Header({"RA": 10.0, "DEC": 95.0})) is None
    assert astrometry.pointing_from_header(fits.Header()) is None


def test_command_is_an_argument_list_with_scale_limits_and_hints(tmp_path):
    image = tmp_path / "name with; $(rm -rf) spaces.fits"
    command = astrometry.build_command(image, tmp_path, SETTINGS, (10.0, -5.0))
    assert command[1] == str(image)  # one argument, never parsed by a shell
    joined = " ".join(command)
    assert "--scale-units degwidth --scale-low 0.9 --scale-high 1.1" in joined
    assert "--ra 10.000000 --dec -5.000000 --radius 2" in joined
    assert "--new-fits none" in joined and "--cpulimit 60" in joined
    assert "--ra" not in astrometry.build_command(image, tmp_path, SETTINGS, None)


@pytest.mark.parametrize(("configured", "width", "expected"), [(0, 4096, 4), (0, 1024, 1), (0, 2048, 2),
                                                               (0, None, 2), (3, 4096, 3)])
def test_downsampling_is_automatic_unless_configured(tmp_path, configured, width, expected):
    settings = replace(SETTINGS, downsample=configured)
    command = astrometry.build_command(tmp_path / "x.fits", tmp_path, settings, None, width)
    assert command[command.index("--downsample") + 1] == str(expected)


@pytest.mark.parametrize("blind", [False, True], ids=["hinted", "blind"])
def test_solve_and_merge_matches_the_true_wcs(raw_night, tmp_path, blind):
    raw = raw_night.science_files[0]
    cal = _cal_like(raw, tmp_path, drop_pointing=blind)
    result = astrometry.solve(cal, fits.getheader(cal), SETTINGS, tmp_root=tmp_path)
    assert result.solved, result.error
    assert result.hinted is (not blind)
    assert result.n_matched >= 10 and result.residual_arcsec < 3.6  # under one pixel
    assert result.wcs_header["CTYPE1"] == "RA---TAN-SIP" and "A_ORDER" in result.wcs_header
    wcs_cards.merge_wcs(cal, result.wcs_header, {"ASTCWCS": ("solved", "status")})
    assert _error_px(cal, raw_night, raw.name) < 0.3
    with fits.open(cal) as hdul:
        assert hdul[0].header["ASTCWCS"] == "solved" and "MASK" in hdul
        assert np.array_equal(hdul[0].data, fits.getdata(raw).astype(np.float32))
    assert list(tmp_path.glob("astep-solve-*")) == []  # the work directory is gone


@pytest.mark.parametrize("blind", [False, True], ids=["hinted", "blind"])
def test_solve_from_the_source_list_matches_the_true_wcs(raw_night, tmp_path, blind):
    """The quality step's stars handed over as an xylist: solve-field extracts nothing itself, and the
    solution is as exact as from the image (better: the centroids are measured at full resolution)."""
    raw = raw_night.science_files[0]
    cal = _cal_like(raw, tmp_path, drop_pointing=blind, n_sources=0)
    with fits.open(cal) as hdul:
        table = hdul["SOURCES"].data
        assert len(table) >= astrometry.MIN_LISTED_SOURCES and np.all(np.diff(table["FLUX"]) <= 0)
    result = astrometry.solve(cal, fits.getheader(cal), SETTINGS, tmp_root=tmp_path)
    assert result.solved, result.error
    assert result.from_list and result.hinted is (not blind)
    assert "--x-column" in result.command and "--fits-image" not in result.command
    assert result.n_matched >= 10
    wcs_cards.merge_wcs(cal, result.wcs_header, {})
    assert _error_px(cal, raw_night, raw.name) < 0.1
    assert list(tmp_path.glob("astep-solve-*")) == []


def test_a_short_source_list_falls_back_to_the_image(raw_night, tmp_path):
    raw = raw_night.science_files[1]
    cal = _cal_like(raw, tmp_path, n_sources=astrometry.MIN_LISTED_SOURCES - 1)
    result = astrometry.solve(cal, fits.getheader(cal), SETTINGS)
    assert result.solved and not result.from_list and "--fits-image" in result.command
    assert astrometry.listed_sources(tmp_path / "missing.fits") is None  # unreadable: the image path reports it


def test_a_loose_list_solve_is_redone_from_the_image(raw_night, tmp_path):
    """A list whose positions are off (here every other star moved 1.5 px, as blends the single-star
    test missed would be): solve-field still solves it, but its matches sit far from the index stars;
    the frame is solved again from the image, and that solution kept (without the check, the list's
    was kept: 0.28 px off on the 512² transit night)."""
    raw = raw_night.science_files[0]
    data, header = fits.getdata(raw, header=True)
    sources = measure_frame(data.astype(np.float32), np.zeros(data.shape, np.uint8)).sources
    moved = Sources(sources.x + np.where(np.arange(len(sources)) % 2, 1.5, 0.0), sources.y, sources.flux)
    path = tmp_path / raw.name.replace(".fits", "_CAL.fits")
    fits.HDUList([fits.PrimaryHDU(data.astype(np.float32), header), sources_hdu(moved)]).writeto(path)
    result = astrometry.solve(path, fits.getheader(path), SETTINGS, tmp_root=tmp_path)
    assert result.solved and not result.from_list and "--fits-image" in result.command
    wcs_cards.merge_wcs(path, result.wcs_header, {})
    assert _error_px(path, raw_night, raw.name) < 0.05
    assert list(tmp_path.glob("astep-solve-*")) == []


def test_only_single_stars_are_listed(raw_night, tmp_path):
    raw = raw_night.science_files[1]
    data, header = fits.getdata(raw, header=True)
    sources = measure_frame(data.astype(np.float32), np.zeros(data.shape, np.uint8)).sources
    assert sources.single is not None and 0 < np.count_nonzero(~sources.single) < len(sources)
    path = tmp_path / "listed.fits"
    fits.HDUList([fits.PrimaryHDU(data.astype(np.float32), header), sources_hdu(sources)]).writeto(path)
    listed = astrometry.listed_sources(path)
    assert len(listed) == np.count_nonzero(sources.single)
    assert np.array_equal(listed["X"], sources.x[sources.single] + 1.0)


def test_merging_twice_leaves_one_solution(raw_night, tmp_path):
    raw = raw_night.science_files[1]
    cal = _cal_like(raw, tmp_path)
    result = astrometry.solve(cal, fits.getheader(cal), SETTINGS)
    assert result.solved, result.error
    wcs_cards.merge_wcs(cal, result.wcs_header, {})
    wcs_cards.merge_wcs(cal, result.wcs_header, {})
    header = fits.getheader(cal)
    assert list(header.keys()).count("CRVAL1") == 1 and list(header.keys()).count("A_ORDER") == 1
    assert _error_px(cal, raw_night, raw.name) < 0.3
    wcs_cards.mark_unsolved(cal, "field not solved\n(after a later retry)")
    header = fits.getheader(cal)
    assert header["ASTCWCS"] == "failed" and "CRVAL1" not in header and "A_ORDER" not in header
    assert header["ASTCWERR"].startswith("field not solved")


def test_noise_image_is_a_clean_failure(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "noise.fits"
    fits.PrimaryHDU(rng.normal(1000, 10, (256, 256)).astype(np.float32)).writeto(path)
    settings = replace(SETTINGS, cpulimit_s=5, timeout_s=60)
    result = astrometry.solve(path, fits.getheader(path), settings)
    assert not result.solved and result.error and result.wcs_header is None


def test_missing_executable_is_reported_not_raised(tmp_path):
    settings = replace(SETTINGS, solve_field=str(tmp_path / "no-such-solve-field"))
    result = astrometry.solve(tmp_path / "x.fits", fits.Header(), settings)
    assert not result.solved and "not found" in result.error


def test_crashing_solver_is_reported(tmp_path):
    crash = tmp_path / "solve-field-crash"
    crash.write_text("#!/bin/sh\necho 'engine: Segmentation fault' >&2\nkill -SEGV $$\n")
    crash.chmod(0o755)
    result = astrometry.solve(tmp_path / "x.fits", fits.Header(), replace(SETTINGS, solve_field=str(crash)))
    assert not result.solved and "exited with" in result.error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_timeout_kills_the_whole_process_group(tmp_path):
    """A hung solver *and the helper it started* are gone when solve() returns."""
    child_pid_file = tmp_path / "child.pid"
    hang = tmp_path / "solve-field-hang"
    hang.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_pid_file}\nwait\n")
    hang.chmod(0o755)
    started = time.monotonic()
    result = astrometry.solve(tmp_path / "x.fits", fits.Header(),
                              replace(SETTINGS, solve_field=str(hang), timeout_s=1.5))
    assert not result.solved and "timed out" in result.error
    assert time.monotonic() - started < 10
    child = int(child_pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_wcs_error_px_measures_a_shift():
    truth = WCS(naxis=2)
    truth.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    truth.wcs.crval = [10.0, -5.0]
    truth.wcs.crpix = [512.5, 512.5]
    truth.wcs.cdelt = [-0.001, 0.001]
    shifted = truth.deepcopy()
    shifted.wcs.crpix = [513.0, 512.5]
    assert astrometry.wcs_error_px(truth, truth, (1024, 1024)) == pytest.approx(0, abs=1e-6)
    assert astrometry.wcs_error_px(shifted, truth, (1024, 1024)) == pytest.approx(0.5, abs=1e-3)
