"""CAL file layout, plain and tile-compressed: readable by astropy and cfitsio (fitsverify, funpack),
and by every reader of the project (solve and WCS merge, recovery, evaluation)."""

import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from conftest import run_cli, small_spec

from astep_cal.devtools.evaluate import score_frame
from astep_cal.devtools.synthetic import make_night
from astep_cal.formats import names, products

FITSVERIFY = shutil.which("fitsverify")
FUNPACK = shutil.which("funpack")


def _fitsverify_errors(path) -> str | None:
    """fitsverify's complaint about ``path``, or None when it reports no error and no warning."""
    done = subprocess.run([FITSVERIFY, "-q", str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 and "verification OK" in done.stdout else done.stdout + done.stderr


@pytest.fixture(scope="module")
def compressed_night(tmp_path_factory):
    """One small night calibrated and solved (real solve-field) with compressed CAL files."""
    base = tmp_path_factory.mktemp("compressed")
    root = base / "data"
    truth = make_night(root, small_spec(n_science=2))
    config = base / "compress.toml"
    config.write_text("[output]\ncompress = true\nquantize_level = 16.0\n")
    return root, truth, config


def _run(capsys, root, config):
    return run_cli(capsys, "once", root, "--config", config)


def test_compressed_cal_files_are_read_solved_and_scored(compressed_night, capsys):
    root, truth, config = compressed_night
    code, _, events = _run(capsys, root, config)
    assert code == 0
    assert sum(e["event"] == "frame_solved" for e in events) == 2  # from the SOURCES table
    for raw in truth.science_files:
        path = next(root.rglob(names.cal_name(raw.name)))
        with fits.open(path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "MASK", "SOURCES"]
            assert all(isinstance(h, fits.CompImageHDU) for h in hdul[1:4])
            assert isinstance(hdul["SOURCES"], fits.BinTableHDU) and len(hdul["SOURCES"].data) > 20
            assert hdul["SCI"].header["ASTCWCS"] == "solved" and hdul["SCI"].header["ASTCRAW"] == raw.name
            assert hdul["MASK"].data.dtype == np.uint8 and hdul["ERR"].data.dtype == np.float32
        score = score_frame(path, truth, raw.name)
        assert score.solved and score.wcs_error_px < 0.3 and score.cosmic_removed > 0.95


def test_lost_ledger_is_rebuilt_from_compressed_cal_files(compressed_night, capsys):
    root, _, config = compressed_night
    shutil.rmtree(root / ".astep-cal")  # the whole state lost
    code, _, events = _run(capsys, root, config)
    assert code == 0
    assert any(e["event"] == "ledger_rebuilt" for e in events)
    assert not any(e["event"] in ("frame_calibrated", "frame_solved") for e in events)


@pytest.mark.skipif(FITSVERIFY is None or FUNPACK is None, reason="fitsverify/funpack (Debian) not installed")
def test_cfitsio_tools_accept_compressed_cal_files_and_masters(compressed_night, tmp_path):
    root, _, _ = compressed_night
    cal_files = sorted(root.rglob("*_CAL.fits"))
    masters = sorted(root.rglob("masters/*.fits"))
    assert cal_files and len(masters) >= 3
    for path in cal_files + masters:
        assert _fitsverify_errors(path) is None, path
    for path in cal_files:
        out = tmp_path / f"{path.stem}-unpacked.fits"
        subprocess.run([FUNPACK, "-O", str(out), str(path)], check=True, capture_output=True)
        with fits.open(out) as unpacked, fits.open(path) as packed:
            assert np.array_equal(unpacked["MASK"].data, packed["MASK"].data)  # lossless
            assert np.array_equal(unpacked["SCI"].data, packed["SCI"].data)  # the same quantised values


@pytest.mark.skipif(FITSVERIFY is None, reason="fitsverify (Debian) not installed")
def test_plain_cal_files_and_masters_pass_fitsverify(solved_night):
    root, _, _, completed = solved_night
    assert completed.returncode == 0
    paths = sorted(root.rglob("*_CAL.fits")) + sorted(root.rglob("masters/*.fits"))
    assert len(paths) >= 6
    for path in paths:
        assert _fitsverify_errors(path) is None, path
        with fits.open(path) as hdul:
            if path.name.endswith("_CAL.fits"):
                assert [h.name for h in hdul] == ["PRIMARY", "ERR", "MASK", "SOURCES"]


def test_quantisation_noise_is_small_next_to_the_sky_noise(compressed_night, tmp_path):
    """Compressed against plain writes of the same frame: the added noise is ~1/q of the sky noise,
    the mask is identical and the header the same."""
    root, _, _ = compressed_night
    path = sorted(root.rglob("*_CAL.fits"))[0]
    with fits.open(path) as hdul:
        header, data, error, mask = (hdul["SCI"].header, hdul["SCI"].data.astype(np.float64),
                                     hdul["ERR"].data, hdul["MASK"].data)
    clean = mask == 0
    sky_noise = float(np.median(error[clean]))
    from astep_cal.science.calibrate import CalibratedFrame
    from astep_cal.support.config import OutputSettings

    frame = CalibratedFrame(data=(data + 0.0).astype(np.float32), mask=mask, n_cosmic=0, n_saturated=0,
                            sky_e=float(header["SKYLEVEL"]), error=error)
    again = tmp_path / "again.fits"
    products.write_calibrated(again, products.calibrated_hdul(header, frame, {}, OutputSettings(compress=True,
                                                                                                quantize_level=4.0)))
    with fits.open(again) as hdul:
        coarse = hdul["SCI"].data
        assert np.array_equal(hdul["MASK"].data, mask)
    added = float(np.std((coarse - data)[clean]))
    assert 0.02 * sky_noise < added < 0.15 * sky_noise  # q=4: step ~ sigma/4, rms ~ step/sqrt(12)


def test_wcs_merge_leaves_compressed_pixels_untouched(compressed_night, tmp_path):
    """Merging the WCS (and marking a failed solve) rewrites only the header: through astropy's
    compressed-image HDU the image would be quantised a second time."""
    from astep_cal.engine import astrometry

    root, _, _ = compressed_night
    path = tmp_path / "copy_CAL.fits"
    shutil.copy(sorted(root.rglob("*_CAL.fits"))[0], path)
    with fits.open(path) as hdul:
        before, error = np.array(hdul["SCI"].data), np.array(hdul["ERR"].data)
        wcs = fits.Header({key: hdul["SCI"].header[key] for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2")})
    wcs["CRVAL1"] += 0.01
    astrometry.merge_wcs(path, wcs, {"ASTCWNM": (7, "test")})
    astrometry.mark_unsolved(path, "test failure")
    with fits.open(path) as hdul:
        assert np.array_equal(hdul["SCI"].data, before) and np.array_equal(hdul["ERR"].data, error)
        assert hdul["SCI"].header["ASTCWCS"] == "failed" and hdul["SCI"].header["ASTCWNM"] == 7
    if FITSVERIFY:
        assert _fitsverify_errors(path) is None
