"""Issue 16: the per-frame catalogue (positions, fluxes, errors, flags) on calibrated frames with placed
defects, the cross-match of frames, the comparison weights, and the [photometry] settings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from astep_cal.devtools.defect_scene import defect_scene
from astep_cal.devtools.evaluate import calibrate_scene
from astep_cal.science import catalogue, crossmatch, quality
from astep_cal.science.lightcurve import broeg_weights
from astep_cal.science.masters import MaskBit
from astep_cal.support.config import ConfigError, Target, settings_from_dict

FACTORS, ANNULUS = (1.0, 1.5, 2.0, 2.5), (4.0, 6.0)


@pytest.fixture(scope="module")
def measured():
    scene = defect_scene((512, 512), seed=5)
    frame = calibrate_scene(scene)
    found = quality.measure_frame(frame.data, frame.mask)
    error_before = frame.error.copy()
    for array in (frame.data, frame.error, frame.mask):  # as in the pipeline, where the CAL file is being
        array.flags.writeable = False                     # written from them meanwhile (frame_catalogue)
    table = catalogue.measure_catalogue(frame.data, frame.error, frame.mask, found.sources.positions(), found.fwhm_px, FACTORS,
                                        ANNULUS, scene.read_noise_e)
    distance, index = cKDTree(np.column_stack([scene.stars["x"], scene.stars["y"]])).query(
        np.column_stack([table["x"], table["y"]]))
    np.testing.assert_array_equal(frame.error, error_before)  # ERR is borrowed, not changed
    assert (error_before >= catalogue.REPLACED_ERR).any()  # ... though replaced pixels were given a noise
    return scene, frame, found, table, distance, index


def test_every_detection_is_measured_with_documented_columns(measured):
    _, _, found, table, _, _ = measured
    assert len(table) == len(found.sources) >= 300
    assert {"id", "x", "y", "ra", "dec", "background", "background_rms", "peak", "flags"} <= set(table.colnames)
    assert all(f"flux_{k}" in table.colnames and f"flux_err_{k}" in table.colnames for k in range(1, 5))
    assert table.meta["APRAD2"] == pytest.approx(1.5 * found.fwhm_px, abs=1e-3)
    assert np.isnan(table["ra"]).all()  # not solved yet


def test_bright_star_centroids_within_a_tenth_of_a_pixel(measured):
    scene, _, _, table, distance, index = measured
    bright = (np.asarray(scene.stars["flux_e"])[index] > 1e5) & (np.asarray(table["flags"]) == 0) & (distance < 1)
    assert bright.sum() >= 50
    assert distance[bright].max() < 0.1


def test_fluxes_unbiased_and_errors_honest(measured):
    scene, _, _, table, distance, index = measured
    true = np.asarray(scene.stars["flux_e"])[index]
    clean = (true > 2e4) & (np.asarray(table["flags"]) == 0) & (distance < 1)
    ratio = np.asarray(table["flux_4"])[clean] / true[clean]  # 2.5 FWHM holds 99.98 % of a Gaussian star
    assert np.median(ratio) == pytest.approx(1.0, abs=0.003)
    z = (np.asarray(table["flux_4"])[clean] - true[clean]) / np.asarray(table["flux_err_4"])[clean]
    assert 0.8 < np.std(z) < 1.25
    assert np.median(np.asarray(table["background"])) == pytest.approx(scene.sky_e, rel=0.01)


def test_flags_mark_saturation_defects_and_edges(measured):
    scene, frame, _, table, distance, index = measured
    saturated = np.asarray(scene.stars["saturated"])[index] & (distance < 2)
    assert saturated.any() and np.all(np.asarray(table["flags"])[saturated] & MaskBit.SATURATED)
    near_edge = catalogue.edge_flags(frame.data.shape, np.array([[3.0, 200.0], [250.0, 250.0]]), 10.0)
    assert list(near_edge) == [catalogue.EDGE, 0]
    mask = np.zeros((50, 50), np.uint8)
    mask[25, 27] = MaskBit.COSMIC
    assert list(catalogue.mask_flags(mask, np.array([[25.0, 25.0], [5.0, 5.0]]), 3.0)) == [MaskBit.COSMIC, 0]


def test_a_frame_without_sources_gives_an_empty_catalogue():
    data = np.full((64, 64), 100.0, np.float32)
    table = catalogue.measure_catalogue(data, np.ones_like(data), np.zeros((64, 64), np.uint8), np.zeros((0, 2)), None,
                                        FACTORS, ANNULUS)
    assert len(table) == 0 and "flux_err_4" in table.colnames and table.meta["FWHMUSED"] == catalogue.DEFAULT_FWHM_PX


def test_shift_voting_finds_the_offset_despite_missing_and_extra_sources():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0, 500, (60, 2))
    frame = np.vstack([reference[5:] + [12.3, -7.8], rng.uniform(0, 500, (10, 2))])  # 5 lost, 10 new
    shift, votes = crossmatch.shift_by_voting(reference, frame)
    assert shift == pytest.approx([12.3, -7.8], abs=0.01) and votes >= 30
    matched = crossmatch.nearest(reference + shift, frame, 1.5)
    assert (matched[5:] == np.arange(55)).all() and (matched[:5] == -1).all()


def test_broeg_weights_give_a_variable_star_nothing():
    rng = np.random.default_rng(2)
    n_frames, noise = 200, np.array([0.001, 0.001, 0.002, 0.004, 0.001])
    norm = 1 + rng.normal(0, noise, (n_frames, len(noise)))
    norm[:, 4] *= 1 + 0.03 * np.sin(np.linspace(0, 6, n_frames))  # a variable, else the quietest
    weights = broeg_weights(norm, np.tile(noise, (n_frames, 1)))
    assert weights[4] == 0
    # the quieter the star, the more weight (each measured against the ensemble of the others)
    assert weights[1] == pytest.approx(weights[0], rel=0.3)
    assert weights[0] > weights[2] > weights[3] > 0 and weights[3] < 0.25 * weights[0]


def test_photometry_settings_read_targets_and_refuse_bad_ones():
    settings = settings_from_dict({"photometry": {"targets": [{"name": "WASP-19", "ra": 148.4167, "dec": -45.659}]}})
    assert settings.photometry.targets == (Target("WASP-19", 148.4167, -45.659),)
    timed = settings_from_dict({"photometry": {"targets": [{"name": "W", "ra": 1.0, "dec": 2.0, "t0": 100.0,
                                                             "period": 2.0, "duration_h": 2.4}]}})
    assert list(timed.photometry.targets[0].in_transit([100.04, 100.06, 101.0, 104.0])) == [True, False, False, True]
    for bad, message in (({"targets": [{"name": "X", "ra": 1.0}]}, "each target"),
                         ({"targets": [{"name": "X", "ra": 1.0, "dec": 0.0, "period": 2.0}]}, "ephemeris"),
                         ({"targets": [{"name": "X", "ra": 400.0, "dec": 0.0}]}, "ra in"),
                         ({"targets": "WASP-19"}, "expected a list"),
                         ({"annulus_factors": [2.0, 6.0]}, "annulus_factors")):
        with pytest.raises(ConfigError, match=message):
            settings_from_dict({"photometry": bad})
