"""Speed-up of ``astep-cal reprocess`` from 1 to 2 (or more) Dask workers on this machine.

``python -m astep_cal.devtools.bench_reprocess [--nights 4] [--frames 6] [--size 1024] [--workers 1 2]``
generates an archive of synthetic nights once (real Tycho-2 stars, so solve-field really solves),
then for each worker count runs the real command, ``astep-cal reprocess COPY --workers N``, on a fresh
copy and measures its wall time (cluster start and stop included: what an operator waits for).
``astep-cal once`` on another copy is the single-process reference. Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_archive(root: Path, nights: int, frames: int, size: int) -> None:
    from astep_cal.devtools.synthetic import NightSpec, make_night

    scale = 3.6 * 1024 / size  # a 1-degree field whatever the size
    for index in range(nights):
        date = f"2026-07-{index + 1:02d}"
        spec = NightSpec(date=date, start_time=f"{date}T20:00:00", seed=index + 1, n_science=frames,
                         shape=(size, size), pixel_scale_arcsec=scale, fwhm_arcsec=2.5 * scale)
        make_night(root, spec, truth_dir=root.parent / "truth" / date)


def timed(pristine: Path, copy: Path, command: list[str]) -> float:
    """Wall time of ``command`` on ``copy``, a fresh copy of ``pristine`` deleted afterwards (disk space)."""
    shutil.copytree(pristine, copy)
    try:
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(copy)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6, help="science frames per night")
    parser.add_argument("--size", type=int, default=1024, help="frame side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-solve", action="store_true", help="calibration only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="astep-bench-reprocess-") as scratch:
        base = Path(scratch)
        pristine = base / "pristine"
        make_archive(pristine, args.nights, args.frames, args.size)
        config = base / "config.toml"
        config.write_text("[astrometry]\nenabled = false\n" if args.no_solve else "")
        cli = [sys.executable, "-m", "astep_cal"]
        copy = base / "copy"
        rows = [("once", timed(pristine, copy, [*cli, "once", str(copy), "--config", str(config)]))]
        for workers in args.workers:
            rows.append((f"reprocess --workers {workers}", timed(pristine, copy, [
                *cli, "reprocess", str(copy), "--workers", str(workers), "--config", str(config)])))
    frames = args.nights * args.frames
    print(f"{args.nights} nights x {args.frames} frames of {args.size}² ({frames} frames), "
          f"astrometry {'off' if args.no_solve else 'on'}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    reference = dict(rows).get("reprocess --workers 1")
    for name, seconds in rows:
        ratio = f"  speed-up x{reference / seconds:.2f}" if reference and name.startswith("reprocess") else ""
        print(f"{name:<24} {seconds:7.1f} s  {seconds / frames:6.2f} s/frame{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
