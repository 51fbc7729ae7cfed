"""Photometric fidelity: aperture photometry of isolated stars in calibrated frames against the
noise-free truth (issue 14). The scenes hold dead columns, hot pixels, cosmic rays placed on stars'
wings and beside defects, and saturated stars; the masters come from simulated raw frames."""

import numpy as np
import pytest
from astropy.table import vstack

from astep_cal.devtools.defect_scene import defect_scene
from astep_cal.devtools.evaluate import aperture_fidelity, calibrate_scene


def calibrated_scene(seed: int, size: int = 512):
    scene = defect_scene((size, size), seed=seed, dead_columns=(61, size // 3 + 30, size // 2 + 77, size // 2 + 78))
    return scene, calibrate_scene(scene)


@pytest.fixture(scope="module")
def photometry():
    tables = []
    for seed, size in ((3, 512), (5, 512), (7, 1024)):
        scene, result = calibrated_scene(seed, size)
        table = aperture_fidelity(result.data, result.error, result.mask, scene.truth_e, scene.stars["x"],
                                  scene.stars["y"], scene.sky_e)
        table["saturated"] = scene.stars["saturated"]
        table["hit"] = [bool(scene.cosmic[int(round(y)) - 5:int(round(y)) + 6, int(round(x)) - 5:int(round(x)) + 6].any())
                        for x, y in zip(scene.stars["x"], scene.stars["y"])]
        tables.append(table)
    return vstack(tables)


def test_enough_stars_of_every_kind(photometry):
    assert len(photometry) >= 2500
    assert photometry["saturated"].sum() >= 12 and photometry["hit"].sum() >= 150
    assert photometry["flagged"].sum() >= 100  # beside defects, hit, saturated


def test_bright_stars_have_no_flux_bias(photometry):
    bright = (photometry["true"] > 20000) & ~photometry["flagged"]
    assert bright.sum() >= 800
    assert abs(np.median(photometry["delta"][bright] / photometry["true"][bright])) < 0.001


def test_errors_predict_the_scatter(photometry):
    clean = ~photometry["flagged"]
    assert np.std(photometry["z"][clean]) == pytest.approx(1.0, abs=0.1)


def test_no_silent_outlier(photometry):
    """Every star more than 5 sigma off has a MASK bit in its aperture."""
    silent = (np.abs(photometry["z"]) > 5) & ~photometry["flagged"]
    assert silent.sum() == 0, photometry[silent]
