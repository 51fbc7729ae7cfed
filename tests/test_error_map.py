"""The ERR extension against truth: (CAL - truth) / ERR on clean sky pixels has unit spread."""

import numpy as np
import pytest
from astropy.io import fits
from conftest import no_solve_config, run_cli, small_spec

from astep_cal.devtools.defect_scene import defect_scene
from astep_cal.devtools.evaluate import calibrate_scene
from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.products import cal_image_hdu
from astep_cal.science.calibrate import REPLACED_ERR
from astep_cal.science.masters import MaskBit, combine_variance_factor


def _clean_sky_z(scene, result):
    clean = ((result.mask == 0) & ~scene.cosmic
             & (scene.truth_e - scene.sky_e < 0.1 * np.sqrt(scene.sky_e)))
    return (result.data[clean] - scene.truth_e[clean]) / result.error[clean]


@pytest.mark.parametrize("sky_e", [300.0, 3000.0])
@pytest.mark.parametrize("exptime", [30.0, 90.0])
def test_err_is_the_spread_of_the_residuals_on_clean_sky(sky_e, exptime):
    scene = defect_scene((384, 384), seed=11, sky_e=sky_e, exptime=exptime, n_darks=3, n_flats=3)
    z = _clean_sky_z(scene, calibrate_scene(scene))
    assert z.size > 100_000
    assert np.std(z) == pytest.approx(1.0, abs=0.05)
    assert abs(np.mean(z)) < 0.1


def test_master_noise_matters_with_few_inputs_and_shrinks_with_more():
    """With 2 darks and 2 flats the masters' noise is a visible part of the error; leaving it out
    makes ERR too small. With more inputs the masters' terms shrink (1/N, or the median's factor)."""
    few = defect_scene((384, 384), seed=12, sky_e=300.0, exptime=90.0, n_darks=2, n_flats=2)
    assert np.std(_clean_sky_z(few, calibrate_scene(few))) == pytest.approx(1.0, abs=0.05)
    assert np.std(_clean_sky_z(few, calibrate_scene(few, with_master_noise=False))) > 1.06
    factors = [combine_variance_factor(n, 3.0) for n in (1, 2, 3, 5, 10, 20)]
    assert factors == sorted(factors, reverse=True)
    assert factors[0] == pytest.approx(1.0, abs=0.02) and factors[-1] < 0.07
    assert combine_variance_factor(3, 3.0) == pytest.approx(1.35 / 3, rel=0.05)  # the median of 3


def test_replaced_pixels_get_the_documented_large_error():
    scene = defect_scene((256, 256), seed=13, dead_columns=(61, 200))
    result = calibrate_scene(scene)
    replaced = (result.mask & (MaskBit.BAD | MaskBit.COSMIC | MaskBit.SATURATED)) > 0
    assert replaced.any()
    assert np.all(result.error[replaced] == REPLACED_ERR)
    assert np.all(result.error[~replaced] < 1000) and result.error.dtype == np.float32


def test_cal_files_carry_err_and_masters_their_noise(tmp_path, capsys):
    """End to end: the pipeline writes ERR (float32, electrons) from the masters' recorded noise
    (NCOMBINE of the dark, FLTVAR1/2 of the flat), and it is right against the truth."""
    root = tmp_path / "data"
    truth = make_night(root, small_spec(n_science=1))
    code, _, _ = run_cli(capsys, "once", root, "--config", no_solve_config(tmp_path))
    assert code == 0
    masters = next(root.rglob("masters"))
    flat_header = fits.getheader(masters / "master_flat.fits")
    assert flat_header["NCOMBINE"] == 3 and flat_header["FLTVAR1"] > 0 and flat_header["FLTVAR2"] > 0
    cal = next(root.rglob("*_CAL.fits"))
    with fits.open(cal) as hdul:
        data, err, mask = hdul[cal_image_hdu(hdul)].data, hdul["ERR"].data, hdul["MASK"].data
        assert hdul["ERR"].header["BUNIT"] == "electron" and err.dtype.name == "float32"
    sky = truth.sky_e(truth.science_files[0].name)
    level = float(np.median(sky))
    clean = (mask == 0) & ~truth.cosmic_mask(truth.science_files[0].name) & (sky - level < 0.1 * np.sqrt(level))
    z = (data[clean] - sky[clean]) / err[clean]
    assert np.std(z) == pytest.approx(1.0, abs=0.05)
