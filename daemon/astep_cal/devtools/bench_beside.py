"""The catalogue measured beside the CAL file's write (``frame_steps.calibrate_entry``), against one after
the other, on the same calibrated frame in one run.

One calibrated :func:`astep_cal.devtools.defect_scene.defect_scene` frame (a dense star grid: the
catalogue's 4000 brightest detections are measured, as ``[photometry] max_sources``) is written with the
default (tile-compressed) writer and catalogued: each alone, one after the other, and side by side (the
catalogue on a helper thread while this thread writes, as the engine does). Wall and CPU seconds, medians
of ``--repeats``, each way in turn in every repeat.

``python -m astep_cal.devtools.bench_beside --size 4096``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from astropy.io import fits

from astep_cal.devtools.defect_scene import defect_scene
from astep_cal.devtools.evaluate import calibrate_scene
from astep_cal.devtools.harness import write_report
from astep_cal.engine.frame_catalogue import Calibrated, measure_frame_catalogue
from astep_cal.engine.frame_steps import read_only
from astep_cal.formats import products
from astep_cal.science import quality
from astep_cal.support.config import Settings


def _timed(action: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(size: int, repeats: int) -> dict[str, Any]:
    settings = Settings()
    frame = read_only(calibrate_scene(defect_scene((size, size), seed=5)))
    found = quality.measure_frame(frame.data, frame.mask)
    made = Calibrated(frame, found, fits.Header(), gain=1.0, read_noise_e=9.0)

    with tempfile.TemporaryDirectory(prefix="astep-bench-beside-") as tmp:
        path = Path(tmp) / "frame_CAL.fits"

        def write() -> None:
            products.write_calibrated(path, products.calibrated_hdul(fits.Header(), frame, {}, settings.output))

        def measure_catalogue() -> None:
            measure_frame_catalogue(made, settings)  # the engine's own step

        def beside() -> None:
            with ThreadPoolExecutor(max_workers=1) as helper:
                measuring = helper.submit(measure_catalogue)
                write()
                measuring.result()

        ways = {"write": write, "catalogue": measure_catalogue,
                "one_after_the_other": lambda: (measure_catalogue(), write()), "side_by_side": beside}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(repeats):
            for name, action in ways.items():
                times[name].append(_timed(action))
    result = {"size": size, "sources": min(len(found.sources), settings.photometry.max_sources), "repeats": repeats}
    for name, pairs in times.items():
        result[f"{name}_wall_s"] = statistics.median(p[0] for p in pairs)
        result[f"{name}_cpu_s"] = statistics.median(p[1] for p in pairs)
    result["saved_s"] = result["one_after_the_other_wall_s"] - result["side_by_side_wall_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results/beside.json"))
    args = parser.parse_args(argv)
    result = measure(args.size, args.repeats)
    print(f"{args.size}² frame, {result['sources']} stars catalogued; medians of {args.repeats}")
    print("| way | wall (s) | CPU (s) |")
    print("|---|---|---|")
    for name in ("write", "catalogue", "one_after_the_other", "side_by_side"):
        print(f"| {name.replace('_', ' ')} | {result[f'{name}_wall_s']:.3f} | {result[f'{name}_cpu_s']:.3f} |")
    print(f"saved by side by side: {result['saved_s']:.3f} s a frame")
    write_report(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
