"""The sigma-clipped mean of a stack of frames along the frame axis: the masters' combine.

The result is astropy's ``sigma_clip(stack, sigma, axis=0, maxiters, cenfunc="median",
stdfunc="mad_std", masked=False)`` followed by ``np.nanmean(axis=0)`` — the same bounds, the same pixels
kept (``tests/test_clipped_mean.py`` compares the two on hard stacks) — computed about twice as fast
(``python -m astep_cal.devtools.bench_combine``: 20 frames of 4096², side by side in one run).

Why it is faster: astropy's compiled clipper selects each pixel's median and MAD anew, in every
iteration, from a copy of its values. Here each pixel's values are sorted once (numpy, compiled), so
every set the clipping keeps is a contiguous run of the sorted values: the median is read off at the
run's middle, the bounds cut the run by counting, and only the MAD needs a selection (a partition of
the deviations, for all pixels at once). A second iteration is needed only where the first one
clipped something (a few per cent of the pixels for 20 frames at 3 sigma) and runs on those alone.

Semantics kept from astropy (its ``compute_bounds.c``): non-finite values are left out from the start;
a value is kept when ``lower <= value <= upper``; each iteration works on what the previous one kept;
a pixel stops when an iteration keeps all or none of its values; the final bounds are then applied to
all its finite values (so a value clipped early can come back, as in astropy). A pixel with nothing
kept is NaN.
"""

from __future__ import annotations

import numpy as np

MAD_TO_STD = 1.482602218505602  # astropy's mad_std factor
BLOCK_PIXELS = 1 << 16  # pixels combined at a time: their temporaries stay in the CPU's caches


def clipped_mean(stack: np.ndarray, sigma: float, maxiters: int = 2) -> np.ndarray:
    """Mean along axis 0 of the values within ``sigma`` MAD-sigmas of the median, as float32.

    ``stack`` (frames first) is not changed. The pixels are combined ``BLOCK_PIXELS`` at a time: the
    sorted copy and the float64 deviations of a block (~20 MB for 20 frames) are all the extra memory,
    and staying in the caches makes it 1.5x faster than whole bands on one core, 2x on two.
    """
    if not isinstance(maxiters, int) or maxiters < 1:
        raise ValueError(f"maxiters must be a positive integer, not {maxiters!r} (astropy's 'until done' is not kept)")
    n_frames = stack.shape[0]
    values = stack.reshape(n_frames, -1)
    result = np.empty(values.shape[1], dtype=np.float32)
    for start in range(0, values.shape[1], BLOCK_PIXELS):
        block = slice(start, start + BLOCK_PIXELS)
        ordered = np.sort(values[:, block], axis=0)  # NaN sort last, -inf first, +inf before NaN
        lower, upper = _bounds(ordered, sigma, maxiters)
        result[block] = _mean_within(ordered, lower, upper)
    return result.reshape(stack.shape[1:])


def _bounds(ordered: np.ndarray, sigma: float, maxiters: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's final clipping bounds (NaN for a pixel without a finite value)."""
    n_frames, n_pixels = ordered.shape
    all_finite = np.isfinite(ordered[0]) & np.isfinite(ordered[-1])
    lower = np.full(n_pixels, np.nan)
    upper = np.full(n_pixels, np.nan)
    # The usual pixel: every value finite, so the first iteration runs on all n values at once.
    regular = np.flatnonzero(all_finite)
    usual = ordered if regular.size == n_pixels else ordered[:, regular]
    low, high = _fixed_count_bounds(usual, sigma)
    lower[regular], upper[regular] = low, high
    start = np.zeros(regular.size, dtype=np.intp)
    stop = np.full(regular.size, n_frames, dtype=np.intp)
    start, stop, going = _clip(usual, start, stop, low, high)
    # Pixels still clipping go on alone, and so do the irregular ones (a NaN or inf among their values:
    # their run starts after the -inf values and ends before +inf and NaN).
    irregular = np.flatnonzero(~all_finite)
    odd = ordered[:, irregular]
    odd_start = (odd == -np.inf).sum(axis=0)
    pending = np.concatenate([regular[going], irregular])
    first = np.concatenate([start[going], odd_start])
    last = np.concatenate([stop[going], odd_start + np.isfinite(odd).sum(axis=0)])
    iterations = np.concatenate([np.full(going.size, maxiters - 1), np.full(irregular.size, maxiters)])
    _iterate(ordered[:, pending], first, last, iterations, sigma, pending, lower, upper)
    return lower, upper


def _fixed_count_bounds(ordered: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds from all the (sorted, finite) values of each pixel: the first iteration of the usual pixel.

    The deviations from the median need no sort of their own: below the median they grow as the index
    falls, above it as it rises, so their k-th smallest is the k-th of two sorted lists merged, read
    with a few comparisons of whole rows instead of a selection among every pixel's values.
    """
    n_frames = ordered.shape[0]
    middle = (n_frames - 1) // 2, n_frames // 2
    median = 0.5 * (ordered[middle[0]].astype(np.float64) + ordered[middle[1]])
    half = n_frames // 2
    below = [median - ordered[half - 1 - j] for j in range(half)]  # rising
    above = [ordered[half + j] - median for j in range(n_frames - half)]  # rising
    mad = 0.5 * (_kth_of_merged(below, above, middle[0]) + _kth_of_merged(below, above, middle[1]))
    std = mad * MAD_TO_STD
    return median - sigma * std, median + sigma * std


def _kth_of_merged(first: list[np.ndarray], second: list[np.ndarray], k: int) -> np.ndarray:
    """Element ``k`` (from 0) of the merge of two rising sequences of rows, row by row of pixels: the
    least, over ways of taking ``a`` items of ``first`` and ``k + 1 - a`` of ``second``, of the larger
    of the last items taken."""
    best: np.ndarray | None = None
    for taken in range(max(0, k + 1 - len(second)), min(k + 1, len(first)) + 1):
        rest = k + 1 - taken
        if taken and rest:
            candidate = np.maximum(first[taken - 1], second[rest - 1])
        else:
            candidate = first[taken - 1] if taken else second[rest - 1]
        best = candidate if best is None else np.minimum(best, candidate)
    assert best is not None
    return best


def _clip(ordered: np.ndarray, start: np.ndarray, stop: np.ndarray, lower: np.ndarray,
          upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run kept by the bounds within each pixel's current run, and which pixels changed it (neither
    kept all nor none: those iterate again)."""
    new_start = np.maximum(start, (ordered < lower).sum(axis=0))
    new_stop = np.minimum(stop, (ordered <= upper).sum(axis=0))
    kept = new_stop - new_start
    going = np.flatnonzero((kept > 0) & (kept != stop - start))
    return new_start, new_stop, going


def _run_bounds(values: np.ndarray, first: np.ndarray, last: np.ndarray,
                sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds from each pixel's run ``values[first:last]`` (sorted, finite, not empty)."""
    count = last - first
    low_middle, high_middle = first + (count - 1) // 2, first + count // 2
    median = 0.5 * (_take(values, low_middle).astype(np.float64) + _take(values, high_middle))
    index = np.arange(values.shape[0])[:, None]
    outside = (index < first) | (index >= last)
    deviation = np.where(outside, np.inf, np.abs(values - median))
    deviation.sort(axis=0)
    std = 0.5 * (_take(deviation, (count - 1) // 2) + _take(deviation, count // 2)) * MAD_TO_STD
    return median - sigma * std, median + sigma * std


def _iterate(values: np.ndarray, first: np.ndarray, last: np.ndarray, iterations: np.ndarray, sigma: float,
             pixels: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    """Clip the few pixels left, each ``iterations`` more times at most, writing their final bounds
    into ``lower``/``upper`` (at ``pixels``). Pixels without a finite value keep NaN bounds."""
    live = np.flatnonzero((last > first) & (iterations > 0))
    while live.size:
        low, high = _run_bounds(values[:, live], first[live], last[live], sigma)
        lower[pixels[live]], upper[pixels[live]] = low, high
        start, stop, going = _clip(values[:, live], first[live], last[live], low, high)
        first[live], last[live] = start, stop
        iterations[live] -= 1
        live = live[going[iterations[live[going]] > 0]]


def _mean_within(ordered: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Mean of each pixel's values within its bounds (NaN where none is, or the bounds are NaN).

    The sum of all values first (float64: 20 float32 values add exactly), then, for the few pixels
    whose run is not the whole stack, their own sum instead.
    """
    n_frames = ordered.shape[0]
    start = (ordered < lower).sum(axis=0)
    stop = (ordered <= upper).sum(axis=0)
    count = stop - start
    with np.errstate(invalid="ignore"):  # +inf and -inf in one pixel: its own sum below replaces the NaN
        total = ordered.sum(axis=0, dtype=np.float64)
    partial = np.flatnonzero((start > 0) | (stop < n_frames))
    if partial.size:
        index = np.arange(n_frames)[:, None]
        inside = (index >= start[partial]) & (index < stop[partial])
        total[partial] = np.where(inside, ordered[:, partial], 0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _take(values: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``values[row[j], j]`` for every column ``j``."""
    return np.take_along_axis(values, row[None, :], axis=0)[0]
