"""The master-frame science functions, on arrays with known answers."""

import numpy as np
import pytest
from astropy.io import fits

from astep_cal.science.masters import (
    BYTES_PER_STACK_VALUE,
    DarkLibrary,
    MaskBit,
    bad_pixel_mask,
    band_height,
    combine_files,
    combine_stack,
    combine_stack_threaded,
    flat_from_files,
    normalise,
)
from astep_cal.support.config import CalibrationSettings

RNG = np.random.default_rng(3)


def test_combine_rejects_outliers_with_few_and_many_frames():
    for n in (3, 9):
        stack = RNG.normal(100, 2, (n, 40, 40)).astype(np.float32)
        stack[1, 10, 10] = 30000  # a cosmic ray in one frame
        combined = combine_stack(stack, sigma=3.0)
        assert combined.dtype == np.float32
        assert abs(combined[10, 10] - 100) < 10
        assert abs(float(np.median(combined)) - 100) < 1


def test_normalise_gives_median_one_and_refuses_empty_signal():
    frame = RNG.uniform(0.5, 1.5, (50, 50)).astype(np.float32) * 2000
    assert np.median(normalise(frame)) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError):
        normalise(np.zeros((5, 5), np.float32))


def _dark(bias, rate, t):
    return (bias + rate * t).astype(np.float32)


def test_dark_library_exact_and_scaled_with_bias():
    bias = np.full((8, 8), 1000.0, np.float32)
    rate = np.full((8, 8), 0.1, np.float32)
    rate[2, 3] = 50.0
    library = DarkLibrary.build({30.0: _dark(bias, rate, 30)}, bias)
    exact = library.dark_for(30.0)
    assert exact.scale == 1.0 and np.allclose(exact.data, _dark(bias, rate, 30))
    scaled = library.dark_for(60.0)
    assert scaled.scale == 2.0 and scaled.bias_origin == "master_bias"
    assert np.allclose(scaled.data, _dark(bias, rate, 60), atol=1e-3)


def test_dark_library_derives_bias_from_two_exposure_times():
    bias = np.full((8, 8), 1000.0, np.float32)
    rate = RNG.uniform(0, 5, (8, 8)).astype(np.float32)
    library = DarkLibrary.build({10.0: _dark(bias, rate, 10), 100.0: _dark(bias, rate, 100)}, None)
    assert library.bias_origin == "two_darks"
    choice = library.dark_for(60.0)
    assert choice.source_exptime == 100.0  # nearest
    assert np.allclose(choice.data, _dark(bias, rate, 60), atol=0.05)


def test_dark_library_without_bias_scales_around_the_pedestal():
    bias = np.full((8, 8), 1000.0, np.float32)
    rate = np.zeros((8, 8), np.float32)
    rate[4, 4] = 100.0
    library = DarkLibrary.build({30.0: _dark(bias, rate, 30)}, None)
    choice = library.dark_for(60.0)
    assert choice.bias_origin == "dark_median"
    assert choice.data[0, 0] == pytest.approx(1000.0)
    assert choice.data[4, 4] == pytest.approx(1000.0 + 100 * 60)
    assert DarkLibrary.build({}, None).dark_for(60.0) is None


def test_bad_pixel_mask_flags_hot_dead_and_low_pixels():
    flat = np.ones((64, 64), np.float32)
    flat[:, 7] = 0.02
    flat[30, 30] = 0.4
    flat[31, 31] = np.nan
    rate = RNG.normal(0.1, 0.01, (64, 64)).astype(np.float32)
    rate[10, 20] = 40.0  # ADU/s
    mask = bad_pixel_mask(rate, flat, gain=2.0, settings=CalibrationSettings())
    assert (mask[:, 7] & MaskBit.BAD).all()
    assert mask[30, 30] == MaskBit.LOW_FLAT
    assert mask[31, 31] & MaskBit.BAD
    assert mask[10, 20] & MaskBit.BAD
    assert np.count_nonzero(mask) == 64 + 3


def _write(path, data):
    fits.PrimaryHDU(data).writeto(path)
    return path


def test_band_combine_matches_in_memory_combine(tmp_path):
    frames = [RNG.normal(500, 5, (300, 200)).astype(np.float32) for _ in range(6)]
    paths = [_write(tmp_path / f"d{i}.fits", f) for i, f in enumerate(frames)]
    tiny_budget = 6 * 200 * BYTES_PER_STACK_VALUE * 20  # forces bands of ~20 rows
    assert band_height(6, 200, tiny_budget) == 20
    banded = combine_files(paths, (300, 200), 3.0, tiny_budget)
    whole = combine_stack(np.stack(frames), 3.0)
    assert np.allclose(banded, whole, atol=1e-4)


@pytest.mark.parametrize("workers", [2, 3])
def test_threaded_combine_is_the_single_thread_combine(workers):
    stack = RNG.normal(500, 5, (8, 101, 64)).astype(np.float32)
    stack[RNG.integers(0, 8, 300), RNG.integers(0, 101, 300), RNG.integers(0, 64, 300)] += 5000  # hits to clip
    single = combine_stack(stack.copy(), 3.0)
    assert np.array_equal(combine_stack_threaded(stack.copy(), 3.0, workers), single)
    assert abs(float(np.median(single)) - 500) < 1  # the hits were clipped


def test_flat_from_files_normalises_each_flat_and_rejects_stars(tmp_path):
    response = np.linspace(0.8, 1.2, 100 * 100, dtype=np.float32).reshape(100, 100)
    dark = np.full((100, 100), 1000.0, np.float32)
    paths = []
    for i, level in enumerate((10000, 20000, 30000)):
        flat = dark + response * level
        flat[20 + 10 * i, 50] += 20000  # a star in each flat, in a different place
        paths.append(_write(tmp_path / f"f{i}.fits", flat))
    master, levels = flat_from_files(paths, (100, 100), [dark] * 3, 3.0, 1e8)
    assert levels == pytest.approx([10000, 20000, 30000], rel=1e-2)  # from a sparse grid
    assert np.median(master) == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(master, response / np.median(response), atol=1e-3)
