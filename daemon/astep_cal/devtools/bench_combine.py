"""The masters' combine (``science.clipped_mean``) against astropy's ``sigma_clip`` + ``nanmean`` that it
replaced, side by side in one run.

A stack of ``--frames`` frames (default 20, as the bench night's darks and flats) of sky with cosmic-ray
hits, ``--rows`` rows of a ``--size``-wide frame, is combined both ways on every CPU (the rows cut
between threads as :func:`astep_cal.science.masters.combine_stack_threaded` does), in turn, ``--repeats``
times; the wall seconds are scaled to a whole ``size``² master. The two results are compared too.

``python -m astep_cal.devtools.bench_combine``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.stats import sigma_clip

from astep_cal.devtools.harness import write_report
from astep_cal.science.clipped_mean import clipped_mean
from astep_cal.science.masters import combine_stack_threaded, cpu_count

SIGMA = 3.0


def astropy_combine(stack: np.ndarray, sigma: float) -> np.ndarray:
    """What ``masters.combine_stack`` did before ``clipped_mean``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(stack, sigma=sigma, axis=0, maxiters=2, cenfunc="median", stdfunc="mad_std",
                             masked=False, copy=True)
        return np.nanmean(clipped, axis=0).astype(np.float32)


def sky_with_hits(frames: int, rows: int, width: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = (1000 + 12 * rng.standard_normal((frames, rows, width))).astype(np.float32)
    stack[rng.random(stack.shape) < 0.002] += 4000  # cosmic-ray hits
    return stack


def measure(frames: int, rows: int, size: int, repeats: int) -> dict[str, Any]:
    stack = sky_with_hits(frames, rows, size)
    workers = cpu_count()
    ways = {"astropy": astropy_combine, "clipped_mean": clipped_mean}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
        for name in order:
            start = time.perf_counter()
            results[name] = combine_stack_threaded(stack, SIGMA, workers, ways[name])  # the masters' row cutting
            seconds[name].append(time.perf_counter() - start)
    scale = size / rows
    median = {name: statistics.median(values) * scale for name, values in seconds.items()}
    differs = ~np.isclose(results["astropy"], results["clipped_mean"], rtol=1e-6, equal_nan=True)
    return {"frames": frames, "size": size, "rows_timed": rows, "workers": workers, "repeats": repeats,
            "master_s": {name: round(value, 2) for name, value in median.items()},
            "per_repeat_s": {name: [round(v * scale, 2) for v in values] for name, values in seconds.items()},
            "speedup": round(median["astropy"] / median["clipped_mean"], 2),
            "pixels_differing": int(differs.sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096, help="frame width; times are scaled to size² (default 4096)")
    parser.add_argument("--rows", type=int, default=512, help="rows actually combined (default 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results/combine.json"))
    args = parser.parse_args(argv)
    report = measure(args.frames, args.rows, args.size, args.repeats)
    print(f"{report['frames']} frames of {report['size']}² on {report['workers']} threads, median of "
          f"{report['repeats']}: astropy {report['master_s']['astropy']:.2f} s, clipped_mean "
          f"{report['master_s']['clipped_mean']:.2f} s a master ({report['speedup']:.2f}x); "
          f"pixels differing: {report['pixels_differing']}")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
