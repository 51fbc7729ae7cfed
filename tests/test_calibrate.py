"""calibrate_frame on arrays: units, masks and cosmic rays with known answers."""

import ctypes
import gc
from pathlib import Path

import numpy as np
import pytest

from astep_cal.science.calibrate import CalibrationError, calibrate_frame
from astep_cal.science.cosmics import _LEAKY_DILATE5, dilate5_without_leak
from astep_cal.science.masters import MaskBit
from astep_cal.support.config import CosmicSettings

RNG = np.random.default_rng(7)


def _scene(shape=(200, 200), gain=2.0, sky_e=2000.0):
    flat = RNG.uniform(0.85, 1.1, shape).astype(np.float32)
    dark = np.full(shape, 1010.0, np.float32)
    sky = np.full(shape, sky_e, np.float32)
    electrons = RNG.poisson(sky * flat).astype(np.float32) + RNG.normal(0, 9, shape)
    raw = dark + electrons / gain
    return raw.astype(np.float32), dark, flat, sky


def test_output_is_in_electrons_and_flat_fielded():
    raw, dark, flat, sky = _scene()
    result = calibrate_frame(raw, dark, flat, np.zeros(raw.shape, np.uint8), gain=2.0, read_noise_e=9.0,
                             saturation_adu=65535, cosmics=CosmicSettings())
    assert result.data.dtype == np.float32
    assert result.sky_e == pytest.approx(2000, rel=0.01)
    assert np.std(result.data) < 2 * np.sqrt(2000)  # the flat pattern is gone


def test_cosmic_rays_found_in_electrons_and_saturation_flagged():
    raw, dark, flat, sky = _scene()
    raw[50, 60:66] += 8000  # a cosmic-ray track in ADU
    raw[120, 120] = 65535  # saturated pixel
    result = calibrate_frame(raw, dark, flat, np.zeros(raw.shape, np.uint8), gain=2.0, read_noise_e=9.0,
                             saturation_adu=65535, cosmics=CosmicSettings())
    assert (result.mask[50, 60:66] & MaskBit.COSMIC).all()
    assert np.all(np.abs(result.data[50, 60:66] - 2000) < 5 * np.sqrt(2000))
    assert result.mask[120, 120] & MaskBit.SATURATED
    assert result.n_cosmic >= 6 and result.n_saturated == 1


def test_bad_pixels_replaced_by_sky_and_kept_in_mask():
    raw, dark, flat, sky = _scene()
    mask = np.zeros(raw.shape, np.uint8)
    mask[:, 33] = MaskBit.BAD
    flat[:, 33] = 0.01
    result = calibrate_frame(raw, dark, flat, mask, gain=2.0, read_noise_e=9.0, saturation_adu=65535,
                             cosmics=CosmicSettings())
    assert np.allclose(result.data[:, 33], result.sky_e, rtol=0.05)
    assert (result.mask[:, 33] & MaskBit.BAD).all()


def test_shape_mismatch_is_a_calibration_error():
    raw, dark, flat, _ = _scene()
    with pytest.raises(CalibrationError, match="masters are"):
        calibrate_frame(raw[:100], dark, flat, np.zeros(raw.shape, np.uint8), gain=2.0, read_noise_e=9.0,
                        saturation_adu=65535, cosmics=CosmicSettings())


def test_banded_cosmic_detection_matches_whole_frame():
    raw, dark, flat, sky = _scene(shape=(600, 300))
    for row in (10, 150, 299, 301, 590):  # tracks near and across band edges
        raw[row, 100:106] += 6000
    common = dict(gain=2.0, read_noise_e=9.0, saturation_adu=65535, cosmics=CosmicSettings())
    zero = np.zeros(raw.shape, np.uint8)
    whole = calibrate_frame(raw, dark, flat, zero, **common)
    banded = calibrate_frame(raw, dark, flat, zero, max_cosmic_pixels=300 * 200, **common)
    assert np.array_equal(whole.mask, banded.mask)
    assert np.allclose(whole.data, banded.data)
    assert whole.n_cosmic >= 30


def test_ring_is_the_3x3_dilation_minus_flagged_and_excluded():
    from scipy.ndimage import binary_dilation

    from astep_cal.science.cosmic_checks import _ring

    rng = np.random.default_rng(5)
    flagged = rng.random((60, 50)) < 0.02
    flagged[0, :3] = flagged[-1, -1] = flagged[30, 0] = True  # on the edges: no neighbour outside the frame
    excluded = rng.random((60, 50)) < 0.1
    expected = binary_dilation(flagged, structure=np.ones((3, 3), bool)) & ~flagged & ~excluded
    ys, xs = _ring(flagged, excluded)
    assert [ys.tolist(), xs.tolist()] == [a.tolist() for a in np.nonzero(expected)]


def _anonymous_kb() -> int:
    """Anonymous resident memory after a collection and malloc_trim (freed memory handed back)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:")))


def test_cosmic_ray_step_does_not_leak_a_frame_per_call(monkeypatch):
    """astroscrappy 1.3.0 loses nx*ny bytes in every detect_cosmics call (its dilate5 scratch array):
    fatal to a daemon calibrating 1000 frames of 4096² a night. 20 frames of 512² would leak 5.4 MB.
    The whole-frame path is forced (the screened one hands astroscrappy a mosaic of a few kB only)."""
    from astep_cal.science import cosmics

    monkeypatch.setattr(cosmics, "MOSAIC_MAX_FRACTION", 0.0)
    raw, dark, flat, _ = _scene(shape=(512, 512))
    raw[100, 100:106] += 6000  # a hit, so that astroscrappy runs
    mask = np.zeros(raw.shape, np.uint8)

    def calibrate():
        calibrate_frame(raw, dark, flat, mask, gain=2.0, read_noise_e=9.0, saturation_adu=65535,
                        cosmics=CosmicSettings())

    calibrate()
    calibrate()
    before = _anonymous_kb()
    for _ in range(20):
        calibrate()
    assert _anonymous_kb() - before < 1500


def test_the_leak_workaround_is_what_astroscrappy_calls():
    import astroscrappy.astroscrappy as core

    assert core.dilate5 is dilate5_without_leak


def test_the_leak_free_dilation_is_astroscrappy_own():
    saturated = RNG.random((300, 200)) > 0.998
    expected = _LEAKY_DILATE5(saturated, 2)  # one leaky call: 60 kB
    assert expected.sum() > saturated.sum()
    assert np.array_equal(dilate5_without_leak(saturated, 2), expected)
    assert np.array_equal(dilate5_without_leak(saturated, 1), _LEAKY_DILATE5(saturated, 1))
