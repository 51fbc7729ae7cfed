"""The checks L.A.Cosmic needs around defects and stars, and the repair of flagged pixels (issue 14).

L.A.Cosmic (``cosmics``) alone misses hits beside bad pixels and on stars' wings, and flags the sharp
cores of undersampled stars. These pure functions correct its mask with what the frame around each
pixel says: whether it is on a star (:func:`on_source`), whether a star's profile fitted to its clean
neighbours explains it (:func:`explained_by_profile`, :func:`fit_star_profiles`), whether a neighbour
of a hit is part of the same track (:func:`grow_cosmic_mask`). Everything is gathered at the few
thousand pixels concerned, never filtered over the whole frame: a full-frame median filter of a 4096²
frame would cost more than the cosmic-ray detection itself.
"""

from __future__ import annotations

import warnings

import numpy as np


def _window_values(image: np.ndarray, excluded: np.ndarray | None, ys: np.ndarray, xs: np.ndarray, half: int,
                   border_only: bool = False, unless: np.ndarray | None = None) -> np.ndarray:
    """The pixels of ``image`` in the (2 half + 1)² window around each (y, x), NaN where ``excluded``
    (None: nothing) but not ``unless``, or outside the frame; with ``border_only`` just the window's
    outer ring. One row per pixel.

    Gathered only at the given pixels (a few thousand), not filtered over the whole frame: a full
    median filter of a 4096² frame would cost more than the cosmic-ray detection itself.
    """
    offsets = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    keep = (np.maximum(abs(dy), abs(dx)) == half) if border_only else np.ones(dy.shape, bool)
    dy, dx = dy[keep], dx[keep]
    wy, wx = ys[:, None] + dy[None, :], xs[:, None] + dx[None, :]
    inside = (wy >= 0) & (wy < image.shape[0]) & (wx >= 0) & (wx < image.shape[1])
    wy, wx = np.clip(wy, 0, image.shape[0] - 1), np.clip(wx, 0, image.shape[1] - 1)
    if excluded is not None:
        out = excluded[wy, wx]
        if unless is not None:
            out &= ~unless[wy, wx]
        inside &= ~out
    return np.where(inside, image[wy, wx], np.nan).astype(np.float64)


def _nan_median(values: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Row medians ignoring NaN; ``default`` for a row with no value at all."""
    if not len(values):
        return np.empty(0, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(values, axis=1)
    return np.where(np.isfinite(medians), medians, default)


REPAIR_HALF = 3  # the 7x7 window whose clean pixels estimate the sky under a hit
SOURCE_HALF = 2  # the ring at 2 px whose median tells a star (bright all round) from a track (bright along a line)


def on_source(data: np.ndarray, excluded: np.ndarray, ys: np.ndarray, xs: np.ndarray, sky_e: float,
              sky_sigma: float, unless: np.ndarray | None = None) -> np.ndarray:
    """Whether each (y, x) lies on a star (or other extended source) rather than on the sky.

    The median of the non-excluded pixels on the ring 2 px around the pixel: a star's light surrounds its
    core pixels on every side, so that ring stands above the sky; a cosmic-ray track is a line, which
    crosses the 16-pixel ring at most 2-4 times and leaves its median at the sky. (A 7x7 window median,
    used before, is the sky even at a star's core when the PSF is 2.5 px wide: the growth then ate star
    cores as if they were track edges.) The threshold is 1.5 sky sigmas, ~5 sigmas of the ring median.
    Half of the ring at least must be usable: inside a wide track most of it is flagged, and the
    track's own unflagged pixels would make the rest look like a star. ``unless``: excluded pixels
    that count all the same (filled bad pixels).
    """
    values = _window_values(data, excluded, ys, xs, SOURCE_HALF, border_only=True, unless=unless)
    ring = _nan_median(values, np.full(len(ys), sky_e))
    return (ring > sky_e + 1.5 * sky_sigma) & (np.isfinite(values).sum(axis=1) >= 8)


def _ring(flagged: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major coordinates of the 8-neighbours of ``flagged`` pixels that are neither flagged nor
    ``excluded``: a 3x3 binary dilation minus the flagged pixels."""
    return _ring_of(*np.nonzero(flagged), flagged | excluded)


def _ring_of(ys: np.ndarray, xs: np.ndarray, taken: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major coordinates of the 8-neighbours of the pixels (ys, xs) that are not ``taken``,
    computed from the few thousand pixels instead of over the whole frame (a full-frame dilation of
    4096² costs ~0.25 s a round)."""
    offsets = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    ny, nx = taken.shape
    yy = (ys[:, None] + offsets[:, 0]).ravel()
    xx = (xs[:, None] + offsets[:, 1]).ravel()
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    linear = np.unique(yy[inside] * nx + xx[inside])
    ry, rx = np.divmod(linear, nx)
    keep = ~taken[ry, rx]
    return ry[keep], rx[keep]


GROW_NEIGHBOUR_RATIO = 0.7


def grow_cosmic_mask(data: np.ndarray, cosmic: np.ndarray, excluded: np.ndarray, sky_e: float, read_noise_e: float,
                     n_sigma: float = 3.0, rounds: int = 2, filled: np.ndarray | None = None) -> np.ndarray:
    """The faint edges of cosmic-ray tracks that L.A.Cosmic leaves (wide and diagonal tracks).

    A neighbour of a flagged pixel joins the mask when it stands ``n_sigma`` above the local clean
    background, its excess is at least ``GROW_NEIGHBOUR_RATIO`` of its brightest clean neighbour's (a
    track is about as bright all across; a star's pixel has a neighbour towards the core at least 1.5
    times brighter, for a PSF of FWHM 2.5 px or more), and it is not on a star (:func:`on_source`): a hit on a star's wing must not spread into its core.
    nor explained by a star's profile (:func:`explained_by_profile`: a faint star's core, whose ring
    is barely above the sky). Repeated ``rounds`` times, so a three-pixel-wide track is covered. ``excluded`` pixels (bad,
    saturated) never join. ``filled``: the bad pixels, whose interpolated values may still tell a star
    (a star centred beside a dead column). Returns only the added pixels.
    """
    around = cosmic | excluded  # flagged or excluded, kept up to date
    flagged_y, flagged_x = np.nonzero(cosmic)
    first_added = len(flagged_y)
    sky_sigma = float(np.sqrt(max(sky_e, 0.0) + read_noise_e ** 2))
    for _ in range(rounds):
        ys, xs = _ring_of(flagged_y, flagged_x, around)
        if not len(ys):
            break
        neighbours = _window_values(data, around, ys, xs, 1)
        neighbours[:, 4] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            brightest = np.nanmax(neighbours, axis=1)
        around[ys, xs] = True
        background = _nan_median(_window_values(data, around, ys, xs, REPAIR_HALF), data[ys, xs])
        sigma = np.sqrt(np.clip(background, 0, None) + read_noise_e ** 2)
        excess = data[ys, xs] - background
        with np.errstate(invalid="ignore"):  # NaN (no clean neighbour) counts as standing out
            lone = ~(excess < GROW_NEIGHBOUR_RATIO * (brightest - background))
        hits = lone & (excess > n_sigma * sigma)
        hits[hits] = ~on_source(data, around, ys[hits], xs[hits], sky_e, sky_sigma, unless=filled)
        around[ys, xs] = False  # the ring's pixels are neither flagged nor excluded (_ring_of)
        hits[hits] = ~explained_by_profile(data, around, ys[hits], xs[hits], sky_e, read_noise_e)
        if not hits.any():
            break
        around[ys[hits], xs[hits]] = True
        flagged_y, flagged_x = np.concatenate([flagged_y, ys[hits]]), np.concatenate([flagged_x, xs[hits]])
    added = np.zeros(cosmic.shape, bool)
    added[flagged_y[first_added:], flagged_x[first_added:]] = True
    return added


def flag_beside_bad(data: np.ndarray, cosmic: np.ndarray, bad: np.ndarray, excluded: np.ndarray, sky_e: float,
                    read_noise_e: float, n_sigma: float = 5.0) -> np.ndarray:
    """Hits on the sky right beside a bad pixel that L.A.Cosmic may still miss: a new cosmic mask.

    A bad pixel is filled by interpolating its neighbours before the search, so a hit beside it is
    copied, halved, into it: a track along a dead column becomes two pixels wide and smooth, and
    L.A.Cosmic can let it through. Each unflagged 8-neighbour of a bad pixel that is on the sky
    (:func:`on_source`) and ``n_sigma`` above the median of the clean 7x7 window is a hit.
    """
    around = cosmic | excluded | bad
    ys, xs = _ring_of(*np.nonzero(bad), around)
    if not len(ys):
        return cosmic
    background = _nan_median(_window_values(data, around, ys, xs, REPAIR_HALF), data[ys, xs])
    sigma = np.sqrt(np.clip(background, 0, None) + read_noise_e ** 2)
    hits = data[ys, xs] - background > n_sigma * sigma
    sky_sigma = float(np.sqrt(max(sky_e, 0.0) + read_noise_e ** 2))
    hits[hits] = ~on_source(data, around, ys[hits], xs[hits], sky_e, sky_sigma)
    flagged = cosmic.copy()
    flagged[ys[hits], xs[hits]] = True
    return flagged


VET_ROUNDS = 3  # passes of vet_on_stars
PROFILE_TOLERANCE = 0.1  # fraction of a star pixel's signal a Gaussian profile may miss on a real PSF


def vet_on_stars(data: np.ndarray, cosmic: np.ndarray, excluded: np.ndarray, sky_e: float,
                 read_noise_e: float, n_sigma: float = 5.0) -> np.ndarray:
    """Drop flagged pixels that a star's own profile explains: undersampled star cores and wings.

    With a 2.5 px FWHM a star's peak is as sharp as a cosmic ray to L.A.Cosmic, which flags it; the
    replacement then cut the peak off. A flagged pixel whose value is within ``n_sigma`` (plus
    ``PROFILE_TOLERANCE`` of its signal) of what the profile fitted to its unflagged neighbours
    predicts (:func:`profile_values`; pixels without enough star around them are kept) is not a hit.
    Returns the cosmic mask without those pixels.
    """
    kept = cosmic.copy()
    around = cosmic | excluded
    ys, xs = np.nonzero(cosmic)
    for _ in range(VET_ROUNDS):  # a pixel cleared gives its neighbours' fits one more clean pixel
        if not len(ys):
            break
        explained = explained_by_profile(data, around, ys, xs, sky_e, read_noise_e, n_sigma)
        if not explained.any():
            break
        cleared_y, cleared_x = ys[explained], xs[explained]
        kept[cleared_y, cleared_x] = False
        around[cleared_y, cleared_x] = excluded[cleared_y, cleared_x]
        ys, xs = ys[~explained], xs[~explained]
        # only the fits whose window (up to 7x7) lost a flagged pixel can change their verdict
        near = _near(ys, xs, cleared_y, cleared_x, STAMP_HALF, cosmic.shape[1])
        ys, xs = ys[near], xs[near]
    return kept


def _near(ys: np.ndarray, xs: np.ndarray, to_y: np.ndarray, to_x: np.ndarray, reach: int, width: int) -> np.ndarray:
    """Whether each (y, x) is within ``reach`` pixels (Chebyshev) of any (to_y, to_x)."""
    offsets = np.arange(-reach, reach + 1)
    around = ((to_y[:, None, None] + offsets[None, :, None]) * (width + 2 * reach + 1)
              + to_x[:, None, None] + offsets[None, None, :])
    return np.isin(ys * (width + 2 * reach + 1) + xs, around.ravel())


def explained_by_profile(data: np.ndarray, excluded: np.ndarray, ys: np.ndarray, xs: np.ndarray, sky_e: float,
                         read_noise_e: float, n_sigma: float = 5.0) -> np.ndarray:
    """Whether each pixel's value is what a star's profile fitted to the clean pixels around it
    predicts, within ``n_sigma`` plus ``PROFILE_TOLERANCE`` of the signal (False where no star-like
    profile can be fitted: the sky, a track)."""
    predicted = profile_values(data, excluded, ys, xs, sky_e, read_noise_e, np.full(len(ys), np.nan, np.float32))
    sigma = np.sqrt(np.clip(predicted, 0, None) + read_noise_e ** 2)
    with np.errstate(invalid="ignore"):
        return (np.abs(data[ys, xs] - predicted)
                < n_sigma * sigma + PROFILE_TOLERANCE * np.clip(predicted - sky_e, 0, None))


PROFILE_HALF = 2  # the 5x5 window a star's local profile is fitted on
STAMP_HALF = 3  # the 7x7 stamp a whole star is fitted on when looking for hits on it


def _log_quadratic_design(half: int) -> np.ndarray:
    """Columns 1, x, y, x², y², xy over a (2 half + 1)² window (row-major, like :func:`_window_values`)."""
    dy, dx = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    dy, dx = dy.ravel().astype(np.float64), dx.ravel().astype(np.float64)
    return np.stack([np.ones_like(dx), dx, dy, dx * dx, dy * dy, dx * dy], axis=1)


_PROFILE_DESIGN = _log_quadratic_design(PROFILE_HALF)
_STAMP_DESIGN = _log_quadratic_design(STAMP_HALF)


def _star_like(coefficients: np.ndarray) -> np.ndarray:
    """Whether fitted log-quadratics (rows of a, bx, by, cxx, cyy, cxy) describe a star: a peak
    curved downwards in every direction (a track's ridge is flat along the track), at most 4 times
    more curved one way than the other, as wide as a PSF (Gaussian sigma 0.5-4 px), centred within
    3.5 px of the pixel."""
    cxx, cyy, cxy = coefficients[:, 3], coefficients[:, 4], coefficients[:, 5]
    hessian = np.stack([np.stack([2 * cxx, cxy], -1), np.stack([cxy, 2 * cyy], -1)], -2)
    with np.errstate(all="ignore"):
        low, high = np.linalg.eigvalsh(hessian).T  # low <= high; a peak needs both < 0
        curved = (high < 0) & (low >= 4 * high) & (-low <= 4.0) & (-high >= 1 / 16)
        centre = np.linalg.solve(np.where(curved[:, None, None], hessian, np.eye(2)),
                                 -coefficients[:, 1:3, None])[:, :, 0]
    return curved & (np.hypot(centre[:, 0], centre[:, 1]) <= 3.5)


def fit_star_profiles(values: np.ndarray, sky_e: float, read_noise_e: float,
                      design: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian profiles fitted to windows of sky-subtracted ``values`` (one row per window, NaN for
    pixels left out): a weighted least-squares quadratic in log(value) over the pixels significantly
    above the sky (2 sigma), weighted by their signal-to-noise squared (the error of a logarithm).

    Returns the coefficients (a, bx, by, cxx, cyy, cxy) per window, whether the fit is usable (8 or
    more pixels and :func:`_star_like`), and the brightest pixel used (to bound extrapolations).
    """
    variance = np.clip(values + sky_e, 0, None) + read_noise_e ** 2
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(values) & (values > 2.0 * np.sqrt(np.where(np.isfinite(variance), variance, 1.0)))
    signal = np.where(usable, values, 1.0)
    weight = np.where(usable, signal ** 2 / np.where(usable, variance, 1.0), 0.0)
    target = np.log(np.clip(signal, 1e-3, None))
    normal = np.einsum("kp,pi,pj->kij", weight, design, design) + 1e-9 * np.eye(design.shape[1])[None]
    rhs = np.einsum("kp,pi,kp->ki", weight, design, target)
    good = usable.sum(axis=1) >= 8
    coefficients = np.zeros((len(values), design.shape[1]))
    if good.any():
        with np.errstate(all="ignore"):
            coefficients[good] = np.linalg.solve(normal[good], rhs[good][:, :, None])[:, :, 0]
        good &= np.all(np.isfinite(coefficients), axis=1) & _star_like(coefficients)
    brightest = np.max(np.where(usable, values, -np.inf), axis=1)
    return coefficients, good, brightest


def profile_values(data: np.ndarray, excluded: np.ndarray, ys: np.ndarray, xs: np.ndarray, sky_e: float,
                   read_noise_e: float, fallback: np.ndarray) -> np.ndarray:
    """The value a star's profile predicts at each (y, x), from the clean pixels around it.

    A star's core is close to a Gaussian, whose logarithm is a quadratic in (x, y): the profile
    fitted to the 5x5 window (:func:`fit_star_profiles`, pixels not ``excluded``; the 7x7 one when
    too much of the 5x5 is excluded, e.g. a whole core flagged beside a dead column) gives the missing
    pixel on the profile, where a mean or median of the neighbours would cut the peak off. The
    estimate is bounded by twice the window's brightest clean pixel. Only a star-like fit is used (a
    round peak, not the ridge of a wide cosmic-ray track nor a one-pixel spike); otherwise
    ``fallback``.
    """
    result = np.asarray(fallback, dtype=np.float64).copy()
    todo = np.arange(len(ys))
    for half, design in ((PROFILE_HALF, _PROFILE_DESIGN), (STAMP_HALF, _STAMP_DESIGN)):
        if not len(todo):
            break
        values = _window_values(data, excluded, ys[todo], xs[todo], half) - sky_e
        values[:, values.shape[1] // 2] = np.nan  # the pixel itself is what is being predicted
        coefficients, good, brightest = fit_star_profiles(values, sky_e, read_noise_e, design)
        with np.errstate(all="ignore"):
            estimate = sky_e + np.minimum(np.exp(np.clip(coefficients[:, 0], -50, 50)), 2.0 * brightest)
        result[todo[good]] = estimate[good]
        todo = todo[~good]
    return result.astype(np.float32)


def find_hits_on_stars(data: np.ndarray, cosmic: np.ndarray, excluded: np.ndarray, sky_e: float,
                       read_noise_e: float, n_sigma: float = 5.0, peak_sigma: float = 10.0) -> np.ndarray:
    """Hits on stars that L.A.Cosmic lets through: a new cosmic mask.

    L.A.Cosmic's ``objlim`` protects star cores by refusing anything on a bright, smooth source, so a
    hit on a bright star's wing stays: the star's flux is then silently wrong. Each star (a local
    maximum ``peak_sigma`` sky sigmas above the sky, not saturated) gets a Gaussian profile fitted
    over its 7x7 stamp (:func:`fit_star_profiles`); a clean pixel more than ``n_sigma`` plus
    ``PROFILE_TOLERANCE`` of the model above it is a hit. The fit is made robust to the hits it looks
    for: the first leaves out the stamp's local maxima (a hit, or the star's peak, which a Gaussian
    does not need), the next two what stood 3 sigma out of the previous one. Costs the stars' number, not the frame's size (the peaks are found among the pixels
    above the threshold only).
    """
    sky_sigma = float(np.sqrt(max(sky_e, 0.0) + read_noise_e ** 2))
    ys, xs = np.nonzero(data > sky_e + peak_sigma * sky_sigma)
    clean = ~excluded[ys, xs] & ~cosmic[ys, xs]
    ys, xs = ys[clean], xs[clean]
    if not len(ys):
        return cosmic
    neighbours = _window_values(data, None, ys, xs, 1)
    neighbours[:, 4] = -np.inf
    peak = data[ys, xs] >= np.nanmax(np.where(np.isnan(neighbours), -np.inf, neighbours), axis=1)
    ys, xs = ys[peak], xs[peak]
    near_saturation = _window_values(excluded, None, ys, xs, STAMP_HALF)  # 1.0 where excluded (bad, saturated)
    flagged = cosmic.copy()
    offsets = _STAMP_DESIGN[:, 1:3].astype(np.int64)
    stamp_y, stamp_x = ys[:, None] + offsets[None, :, 1], xs[:, None] + offsets[None, :, 0]
    inside = (stamp_y >= 0) & (stamp_y < data.shape[0]) & (stamp_x >= 0) & (stamp_x < data.shape[1])
    values = _window_values(data, flagged | excluded, ys, xs, STAMP_HALF) - sky_e
    grid = values.reshape(len(ys), 2 * STAMP_HALF + 1, 2 * STAMP_HALF + 1)
    padded = np.pad(np.nan_to_num(grid, nan=-np.inf), ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    around = np.maximum.reduce([padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]])
    left_out = (grid > around).reshape(len(ys), -1)  # local maxima: a hit, or the peak the fit can do without
    hits = np.zeros(values.shape, dtype=bool)
    for _ in range(3):  # robust: what stood out of one fit is left out of the next
        coefficients, good, brightest = fit_star_profiles(np.where(left_out, np.nan, values), sky_e, read_noise_e,
                                                          _STAMP_DESIGN)
        with np.errstate(all="ignore"):
            model = np.minimum(np.exp(np.clip(coefficients @ _STAMP_DESIGN.T, -50, 50)), 2.0 * brightest[:, None])
            sigma = np.sqrt(np.clip(model + sky_e, 0, None) + read_noise_e ** 2)
            excess = values - model
            hits = (excess > n_sigma * sigma + PROFILE_TOLERANCE * model) & inside & good[:, None]
            left_out = excess > 3.0 * sigma + 0.5 * PROFILE_TOLERANCE * model
    hits &= ~np.any(near_saturation > 0, axis=1)[:, None]
    flagged[stamp_y[hits], stamp_x[hits]] = True
    return flagged


def replace_flagged(data: np.ndarray, cosmic: np.ndarray, excluded: np.ndarray, sky_e: float,
                    read_noise_e: float) -> None:
    """Replace the flagged pixels of ``data`` in place: by the local star profile
    (:func:`profile_values`) where there is a star around them, else by the median of the clean pixels
    of the 7x7 window (the sky). Only the flagged pixels change; every estimate is computed before
    any is written, so none is made from another's replacement.

    astroscrappy's ``meanmask`` averages unflagged neighbours, which on a wide track are themselves
    hit, and on a star is a mean over the core and the wings (far below the peak): the median of the
    clean window on the sky and the profile on a star are better estimates of what was there.
    """
    ys, xs = np.nonzero(cosmic)
    if not len(ys):
        return
    around = cosmic | excluded
    background = _nan_median(_window_values(data, around, ys, xs, REPAIR_HALF), data[ys, xs])
    data[ys, xs] = profile_values(data, around, ys, xs, sky_e, read_noise_e, background)
