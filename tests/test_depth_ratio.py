"""Issue 23: the blue/red transit depth ratio (science/depth_ratio.py) against synthetic truth: an achromatic
transit gives 1 within its error, a chromatic one (a blended eclipsing binary) its true ratio."""

from __future__ import annotations

import numpy as np
import pytest

from astep_cal.science.depth_ratio import Curve, depth_ratio, transit_shape

MID, DURATION_H = 2461223.40, 1.5


def curve(depth: float, seed: int, noise: float = 0.002, n: int = 120, level: float = 1.003) -> Curve:
    """A night of ``n`` points over 6 h around a trapezoid transit of ``depth``, white noise ``noise``."""
    rng = np.random.default_rng(seed)
    t = MID - 0.125 + np.sort(rng.uniform(0, 0.25, n))
    flux = level * (1 - depth * transit_shape(t, MID, DURATION_H / 24)) + rng.normal(0, noise, n)
    return Curve(t, flux, np.full(n, noise))


@pytest.mark.parametrize("blue_depth, red_depth", [(0.01, 0.01), (0.015, 0.01)])
def test_the_ratio_is_the_truth_within_its_error(blue_depth, red_depth):
    truth = blue_depth / red_depth
    pulls, results = [], []
    for seed in range(20):
        result = depth_ratio(curve(blue_depth, 2 * seed), curve(red_depth, 2 * seed + 1))
        assert result.status == "ok" and result.method == "fit"
        pulls.append((result.ratio - truth) / result.error)
        results.append(result)
    first = results[0]
    print(f"blue {blue_depth:.3f} red {red_depth:.3f}: ratio {first.ratio:.3f} +- {first.error:.3f} "
          f"(mid off {(first.mid_bjd - MID) * 1440:+.1f} min, duration {first.duration_h:.2f} h); "
          f"pulls mean {np.mean(pulls):+.2f} std {np.std(pulls):.2f}")
    assert abs(first.ratio - truth) < 3 * first.error and first.error < 0.1 * truth
    assert abs(np.mean(pulls)) < 0.6 and 0.6 < np.std(pulls) < 1.5  # honest errors over 20 nights
    assert abs(first.mid_bjd - MID) * 1440 < 5 and first.duration_h == pytest.approx(DURATION_H, abs=0.2)


def test_chromatic_and_achromatic_are_told_apart():
    achromatic = depth_ratio(curve(0.01, 3), curve(0.01, 4))
    chromatic = depth_ratio(curve(0.015, 3), curve(0.01, 4))
    assert abs(achromatic.ratio - 1) < 3 * achromatic.error
    assert abs(chromatic.ratio - 1) > 5 * chromatic.error and chromatic.ratio == pytest.approx(1.5, abs=0.15)


def test_an_ephemeris_places_the_transit():
    result = depth_ratio(curve(0.012, 5), curve(0.008, 6), ephemeris=(MID - 3 * 2.5, 2.5, DURATION_H))
    assert result.method == "ephemeris" and result.mid_bjd == pytest.approx(MID)
    assert result.ratio == pytest.approx(1.5, abs=3 * result.error)


def test_no_transit_and_too_few_points_are_said_not_guessed():
    flat = depth_ratio(curve(0.0, 7), curve(0.0, 8))
    assert flat.status in ("no_transit", "too_few_points")
    short = depth_ratio(Curve(np.arange(4.0), np.ones(4), np.full(4, 0.001)), curve(0.01, 9))
    assert short.status == "too_few_points" and short.ratio is None
    inputs = curve(0.01, 10)
    before = inputs.flux.copy()
    depth_ratio(inputs, curve(0.01, 11))
    assert np.array_equal(inputs.flux, before)  # inputs untouched
