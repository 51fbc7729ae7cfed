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
from astep_cal.science.calibrate import CalibratedFrame
from astep_cal.support.config import OutputSettings

FITSVERIFY = shutil.which("fitsverify")
FUNPACK = shutil.which("funpack")


def _fitsverify_errors(path) -> str | None:
    """fitsverify's complaint about ``path``, or None when it reports no error and no warning."""
    done = subprocess.run([FITSVERIFY, "-q", str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 and "verification OK" in done.stdout else done.stdout + done.stderr


@pytest.fixture(scope="module")
def compressed_night(tmp_path_factory):
    """One small night calibrated and solved (real solve-field) with the default output: compressed."""
    base = tmp_path_factory.mktemp("compressed")
    root = base / "data"
    truth = make_night(root, small_spec(n_science=2))
    config = base / "defaults.toml"
    config.write_text("# the defaults: [output] compress = true\n")
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


def test_compressed_cal_files_redone_in_place_not_kept_aside_as_foreign(compressed_night, capsys, tmp_path):
    """Recalibrating (``--force``) over a compressed CAL file: it is astep-cal's own (its ASTCVER is in
    the compressed HDU's header, not the empty primary's), so it is replaced, not moved aside as a
    foreign file (which would keep every old file: a disk leak)."""
    root, truth, config = compressed_night
    copy = tmp_path / "data"
    shutil.copytree(root, copy, symlinks=True)
    assert run_cli(capsys, "once", copy, "--config", config)[0] == 0  # whatever ran before: processed
    assert len(list(copy.rglob("*_CAL.fits"))) == len(truth.science_files)
    code, _, events = run_cli(capsys, "once", copy, "--config", config, "--force")
    assert code == 0
    assert sum(e["event"] == "frame_calibrated" for e in events) == len(truth.science_files)
    assert not any(e["event"] == "foreign_output_kept" for e in events)
    assert not list(copy.rglob("*.foreign-*"))


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


def test_default_cal_file_is_compressed_in_bands_of_whole_rows(compressed_night):
    """The default CAL file: SCI, ERR and MASK tile-compressed in bands of ``tile_rows`` whole rows
    (astropy's own default, one row a tile, cost 5 times the CPU), the images at an absolute
    quantisation step (cfitsio's negative NOISEBIT) set from the frame's sky noise, MASK lossless."""
    root, _, _ = compressed_night
    default = OutputSettings()
    assert default.compress and default.tile_rows > 1
    path = sorted(root.rglob("*_CAL.fits"))[0]
    with fits.open(path, disable_image_compression=True) as raw_tables:
        sky_noise = None
        for name in ("SCI", "ERR", "MASK"):
            header = raw_tables[name].header
            assert header["ZCMPTYPE"] == "RICE_1"
            assert header["ZTILE1"] == header["ZNAXIS1"]  # whole rows
            assert header["ZTILE2"] == min(default.tile_rows, header["ZNAXIS2"])
            if name == "MASK":
                assert "ZQUANTIZ" not in header and header["ZBITPIX"] == 8  # integers: lossless
                continue
            assert header["ZQUANTIZ"] == "SUBTRACTIVE_DITHER_1"
            names = {header[f"ZNAME{n}"]: header[f"ZVAL{n}"] for n in range(1, 10) if f"ZNAME{n}" in header}
            step = -names["NOISEBIT"]
            level = default.quantize_level if name == "SCI" else default.err_quantize_level
            assert step > 0  # absolute step: noise / level, one for the whole image
            sky_noise = sky_noise or step * level
            assert step * level == pytest.approx(sky_noise, rel=1e-6)
    with fits.open(path) as hdul:
        error, mask = hdul["ERR"].data, hdul["MASK"].data
    assert sky_noise == pytest.approx(float(np.median(error[mask == 0])), rel=0.1)  # the image's own noise


@pytest.mark.skipif(FITSVERIFY is None, reason="fitsverify (Debian) not installed")
def test_plain_cal_files_and_masters_pass_fitsverify(solved_night, compressed_night, tmp_path):
    """``[output] compress = false`` writes the plain layout (the image in the primary HDU)."""
    root, _, _, completed = solved_night
    assert completed.returncode == 0
    masters = sorted(root.rglob("masters/*.fits"))
    assert len(masters) >= 3
    for path in masters:
        assert _fitsverify_errors(path) is None, path
    packed = sorted(compressed_night[0].rglob("*_CAL.fits"))[0]
    with fits.open(packed) as hdul:
        frame = CalibratedFrame(data=hdul["SCI"].data, mask=hdul["MASK"].data, n_cosmic=0, n_saturated=0,
                                sky_e=float(hdul["SCI"].header["SKYLEVEL"]), error=hdul["ERR"].data)
        header = hdul["SCI"].header.copy()
    header.remove("EXTNAME")  # the compressed HDU's name, not the raw header's
    plain = tmp_path / "plain_CAL.fits"
    products.write_calibrated(plain, products.calibrated_hdul(header, frame, {}, OutputSettings(compress=False)))
    assert _fitsverify_errors(plain) is None
    with fits.open(plain) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "ERR", "MASK"]
        assert np.array_equal(hdul[0].data, frame.data) and np.array_equal(hdul["ERR"].data, frame.error)


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
    from astep_cal.formats import wcs_cards

    root, _, _ = compressed_night
    path = tmp_path / "copy_CAL.fits"
    shutil.copy(sorted(root.rglob("*_CAL.fits"))[0], path)
    with fits.open(path) as hdul:
        before, error = np.array(hdul["SCI"].data), np.array(hdul["ERR"].data)
        wcs = fits.Header({key: hdul["SCI"].header[key] for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2")})
    wcs["CRVAL1"] += 0.01
    wcs_cards.merge_wcs(path, wcs, {"ASTCWNM": (7, "test")})
    wcs_cards.mark_unsolved(path, "test failure")
    with fits.open(path) as hdul:
        assert np.array_equal(hdul["SCI"].data, before) and np.array_equal(hdul["ERR"].data, error)
        assert hdul["SCI"].header["ASTCWCS"] == "failed" and hdul["SCI"].header["ASTCWNM"] == 7
    if FITSVERIFY:
        assert _fitsverify_errors(path) is None


def test_default_compression_adds_under_2_percent_of_the_sky_noise(tmp_path):
    """A small synthetic frame with known truth (stars, dead columns, hot pixels, cosmic rays, saturated
    stars) written with the default output and read back: tile-compressed, the image's added noise
    <= 2 % of the sky noise, ERR within 1 % (rms, relative), MASK identical, and the bright stars'
    aperture fluxes unbiased to 1e-5 (relative, median over the stars)."""
    from astep_cal.devtools.defect_scene import defect_scene
    from astep_cal.devtools.evaluate import aperture_fidelity, calibrate_scene

    scene = defect_scene((256, 320), seed=5, dead_columns=(61, 200))
    frame = calibrate_scene(scene)
    path = tmp_path / "frame_CAL.fits"
    products.write_calibrated(path, products.calibrated_hdul(fits.Header({"EXPTIME": scene.exptime}), frame, {},
                                                             OutputSettings()))
    with fits.open(path) as hdul:
        assert isinstance(hdul["SCI"], fits.CompImageHDU) and isinstance(hdul["ERR"], fits.CompImageHDU)
        data, error, mask = hdul["SCI"].data, hdul["ERR"].data, hdul["MASK"].data
    assert np.array_equal(mask, frame.mask)
    clean = frame.mask == 0
    sky_noise = float(np.sqrt(scene.sky_e + scene.read_noise_e ** 2))
    added = float(np.std((data - frame.data)[clean]))
    assert 0.005 * sky_noise < added <= 0.02 * sky_noise  # quantised (not lossless), and finely
    assert np.std(((error - frame.error) / frame.error)[clean]) < 0.01
    stars = scene.stars
    before = aperture_fidelity(frame.data, frame.error, frame.mask, scene.truth_e, stars["x"], stars["y"],
                               scene.sky_e)
    after = aperture_fidelity(data, error, mask, scene.truth_e, stars["x"], stars["y"], scene.sky_e)
    bright = (before["true"] > 20000) & ~before["flagged"]
    assert bright.sum() >= 10
    change = (after["delta"] - before["delta"])[bright] / before["true"][bright]
    assert abs(float(np.median(change))) < 1e-5

