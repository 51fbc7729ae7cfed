"""The cosmic-ray step's screen and patch mosaic (issue 15): astroscrappy's own answer, for less CPU.

The screen is only right if it never drops a pixel L.A.Cosmic would flag: checked against astroscrappy's
own building blocks (its Laplacian and its 7x7 separable median) and against whole-frame runs on
scenes with defects, stars, saturated stars and hits on the frame's edges. Completeness against the
truth is ``test_cosmics_truth.py``'s (which now runs the screened path).
"""

import astroscrappy.astroscrappy as core
import numpy as np
import pytest

from astep_cal.devtools.defect_scene import defect_scene
from astep_cal.science import cosmics
from astep_cal.science.calibrate import fill_bad_pixels, first_pass, sky_level
from astep_cal.support.config import CosmicSettings

SETTINGS = CosmicSettings()


def _electrons(scene):
    """The scene as the cosmic-ray step sees it: electrons, bad pixels filled; its sky and saturation."""
    data, saturated, bad = first_pass(scene.raw, scene.dark, scene.flat, scene.bad.astype(np.uint8), scene.gain,
                                      65535)
    sky = sky_level(data, ~bad & ~saturated)
    fill_bad_pixels(data, bad, sky)
    return data, sky, float((65535 - np.median(scene.dark)) * scene.gain)


@pytest.fixture(scope="module")
def scene():
    return defect_scene((512, 512), seed=5)


def test_laplacian_is_astroscrappys_own(scene):
    data, _, _ = _electrons(scene)
    padded = np.pad(data, 1, mode="reflect")
    expected = core.rebin(np.clip(core.laplaceconvolve(core.subsample(padded)), 0, None))[1:-1, 1:-1]
    ys, xs = np.nonzero(np.ones(data.shape, bool))
    ours = cosmics.laplacian_at(data, ys, xs).reshape(data.shape)
    assert np.allclose(ours, expected, rtol=1e-5, atol=1e-2)


def test_the_seed_bound_keeps_every_seed(scene):
    """The cheap bound (no copy of the frame) keeps every pixel whose exact L+ passes the seed test."""
    data, _, _ = _electrons(scene)
    floor = cosmics.noise_floor(data, 9.0)
    ys, xs = np.nonzero(np.ones(data.shape, bool))
    exact = cosmics.laplacian_at(data, ys, xs) > 10 * floor[ys // cosmics.NOISE_BLOCK, xs // cosmics.NOISE_BLOCK]
    by, bx = cosmics._seed_bound_candidates(data, floor, 10)
    kept = np.zeros(data.shape, bool)
    kept[by, bx] = True
    assert exact.sum() > 100 and kept.ravel()[exact].all()
    assert kept.sum() < 3 * exact.sum() + 2048  # tight: a few times the seeds, plus the border


def test_noise_floor_is_never_above_lacosmics_noise(scene):
    data, _, _ = _electrons(scene)
    data[100:140, 200:260] -= 5000  # a dark patch: the floor must follow it down, not the frame's sky
    noise = np.sqrt(np.maximum(core.sepmedfilt7(data + np.float32(81)), 1e-5))
    floor = cosmics.noise_floor(data, 9.0)
    per_pixel = floor[np.arange(512)[:, None] // cosmics.NOISE_BLOCK, np.arange(512)[None, :] // cosmics.NOISE_BLOCK]
    inner = np.s_[3:-3, 3:-3]  # astroscrappy leaves the filter's border unfiltered
    assert np.all(per_pixel[inner] <= noise[inner] * 1.0001)
    assert np.median(per_pixel) > 0.8 * np.median(noise)  # and close enough to screen well


@pytest.mark.parametrize("seed", [3, 5])
def test_screened_mask_is_the_whole_frame_mask(seed):
    """Hits beside dead columns and hot pixels, on edges, on star wings, beside saturated stars: the
    mosaic of patches gives the whole-frame run's mask, pixel for pixel, from a small fraction of it."""
    data, sky, saturation_e = _electrons(defect_scene((512, 512), seed=seed))
    whole = cosmics.lacosmic_mask(data, SETTINGS, 9.0, saturation_e, sky, screened=False)
    ys, xs = cosmics.screen(data, 9.0, SETTINGS.sigclip, SETTINGS.sigfrac)
    assert whole[ys, xs].sum() == whole.sum()  # nothing L.A.Cosmic flags is screened out
    assert len(ys) < 0.05 * data.size
    screened = cosmics.lacosmic_mask(data, SETTINGS, 9.0, saturation_e, sky)
    assert whole.sum() > 300 and np.array_equal(screened, whole)


def test_memory_budget_splits_the_mosaic_with_the_same_result(scene):
    data, sky, saturation_e = _electrons(scene)
    one = cosmics.lacosmic_mask(data, SETTINGS, 9.0, saturation_e, sky)
    ys, xs = cosmics.screen(data, 9.0, SETTINGS.sigclip, SETTINGS.sigfrac)
    boxes = cosmics.patch_boxes(data.shape, ys, xs)
    budget = 5000
    groups = cosmics._mosaic_groups(boxes, budget)
    assert len(groups) > 3 and sum(len(g) for g in groups) == len(boxes)
    assert all(sum(cosmics._padded_size(b) for b in g) <= budget or len(g) == 1 for g in groups)
    assert np.array_equal(cosmics.lacosmic_mask(data, SETTINGS, 9.0, saturation_e, sky, max_pixels=budget), one)


def test_shelf_packing_never_overlaps():
    rng = np.random.default_rng(3)
    sizes = [(int(h), int(w)) for h, w in rng.integers(18, 60, (200, 2))]
    places, height, width = cosmics._shelf_pack(sizes, 300)
    canvas = np.zeros((height, width), int)
    for (top, left), (h, w) in zip(places, sizes):
        canvas[top: top + h, left: left + w] += 1
    assert canvas.max() == 1 and width == 300


def test_settings_the_screen_does_not_cover_take_the_whole_frame(monkeypatch, scene):
    """Two iterations, a tiny frame, or patches over most of the frame: astroscrappy on the whole frame."""
    data, sky, saturation_e = _electrons(scene)
    calls = []
    monkeypatch.setattr(cosmics, "detect_cosmics_in_bands", lambda d, m, **p: calls.append(d.shape) or
                        np.zeros(d.shape, bool))
    cosmics.lacosmic_mask(data, CosmicSettings(niter=2), 9.0, saturation_e, sky)
    cosmics.lacosmic_mask(data[:30, :200], SETTINGS, 9.0, saturation_e, sky)
    monkeypatch.setattr(cosmics, "MOSAIC_MAX_FRACTION", 0.0)
    cosmics.lacosmic_mask(data, SETTINGS, 9.0, saturation_e, sky)
    assert calls == [(512, 512), (30, 200), (512, 512)]


def test_a_frame_without_any_candidate_skips_astroscrappy(monkeypatch):
    flat = np.full((128, 128), 1000.0, np.float32)
    monkeypatch.setattr(cosmics.astroscrappy, "detect_cosmics", lambda *a, **k: pytest.fail("called"))
    assert not cosmics.lacosmic_mask(flat, SETTINGS, 9.0, 1e5, 1000.0).any()
