"""The masters' combine (``science.clipped_mean``) against astropy's ``sigma_clip`` + ``nanmean``, which it
replaces for speed: the same pixels kept, so the same means to float32 rounding (astropy's nanmean adds
in float32, a few units in the last place; ours in float64), on stacks made hard — cosmic-ray hits and stars, ties, pixels whose
values are all equal (MAD 0), NaN and ±inf, pixels with no finite value, odd and even frame counts, one
to three iterations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip

from astep_cal.science.clipped_mean import BLOCK_PIXELS, clipped_mean

RTOL = 1e-6  # 20 float32 additions' rounding; a pixel kept or clipped otherwise moves the mean by ~1e-3


def _astropy(stack: np.ndarray, sigma: float, maxiters: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values; means of nothing
        clipped = sigma_clip(stack, sigma=sigma, axis=0, maxiters=maxiters, cenfunc="median",
                             stdfunc="mad_std", masked=False, copy=True)
        return np.nanmean(clipped, axis=0).astype(np.float32)


def _hard_stack(n_frames: int, seed: int, shape: tuple[int, int] = (120, 90)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = (1000 + 10 * rng.standard_normal((n_frames, *shape))).astype(np.float32)
    stack[rng.random(stack.shape) < 0.03] += rng.uniform(20, 3000, size=1).astype(np.float32)  # hits
    stack[:, 20:24, :] += np.linspace(0, 5000, n_frames, dtype=np.float32)[:, None, None]  # a drifting star
    stack[:, :6] = np.round(stack[:, :6] / 8) * 8  # ties
    stack[:, 6:9] = 7.0  # every value equal: MAD 0
    stack[: n_frames // 2, 9, :] = 7.0  # half equal: the median on a tie
    stack[0, 10:20, :30] = np.nan
    stack[1, 15:25, 20:60] = np.inf
    stack[2, 18:30, 40:] = -np.inf
    stack[:, 40:42] = np.nan  # nothing finite
    stack[: n_frames - 2, 50:52] = np.nan  # two finite values
    return stack


@pytest.mark.parametrize("n_frames", [5, 6, 7, 20, 21, 25])
@pytest.mark.parametrize("maxiters", [1, 2, 3])
def test_the_same_as_astropys_sigma_clip_then_nanmean(n_frames: int, maxiters: int) -> None:
    stack = _hard_stack(n_frames, seed=n_frames * 10 + maxiters)
    given = stack.copy()
    expected = _astropy(stack, 3.0, maxiters)
    found = clipped_mean(stack, 3.0, maxiters)
    assert found.dtype == np.float32 and found.shape == stack.shape[1:]
    np.testing.assert_allclose(found, expected, rtol=RTOL, atol=0, equal_nan=True)
    assert np.array_equal(stack, given, equal_nan=True), "the stack was changed"


@pytest.mark.parametrize("sigma", [1.0, 2.5, 5.0])
def test_other_sigmas_more_pixels_than_a_block_and_one_dimension_more(sigma: float) -> None:
    stack = _hard_stack(11, seed=int(sigma * 10), shape=(400, 300)).reshape(11, 100, 4, 300)
    assert stack[0].size > 1.5 * BLOCK_PIXELS
    np.testing.assert_allclose(clipped_mean(stack, sigma), _astropy(stack, sigma, 2), rtol=RTOL, equal_nan=True)


def test_values_near_float32s_largest_do_not_overflow() -> None:
    """astropy's float32 nanmean gives inf here; the sum in float64 gives the value."""
    stack = np.full((20, 4, 4), 3.4e38, dtype=np.float32)
    stack[3, 0, 0] = 1.0
    assert np.all(clipped_mean(stack, 3.0) == np.float32(3.4e38))


def test_hits_are_clipped_and_the_sky_kept() -> None:
    """Known truth: 20 frames of a flat 500 with one hit of 10 000 in each pixel's column somewhere."""
    rng = np.random.default_rng(7)
    stack = (500 + rng.standard_normal((20, 64, 64))).astype(np.float32)
    hit_frame = rng.integers(0, 20, size=(64, 64))
    np.put_along_axis(stack, hit_frame[None], 10_000, axis=0)
    result = clipped_mean(stack, 3.0)
    assert np.all(np.abs(result - 500) < 1.5)


@pytest.mark.parametrize("maxiters", [0, -1, None, 2.0])
def test_iterating_until_done_is_refused(maxiters) -> None:
    """astropy reads a falsy ``maxiters`` as "until nothing changes"; that is not kept, so it is refused."""
    with pytest.raises(ValueError, match="maxiters"):
        clipped_mean(np.ones((5, 2, 2), dtype=np.float32), 3.0, maxiters)
