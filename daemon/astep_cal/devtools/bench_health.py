"""``make bench-health``: what the instrument's health costs against the frame work of a 4096² night.

One run, one night of ASTEP's size (4096² frames of 0.93"/px, ``--science`` frames, a few darks and
sky flats), processed by the real ``astep-cal once`` (real solve-field, query-starkd against the Tycho-2
index, the Prometheus file on). From its ledger, per frame: the frame work (calibration + plate solve)
and the health step (zero point, sky brightness, Moon). Then, in this process, on that very night with
500 earlier nights of health figures in its ledger (as after a season and a half):

- the whole night health (``night_health``: figures, the flat against a previous night's own flat
  carrying an ice ring, the alerts, the 7-night trend, the Prometheus file), and its pieces alone:
  the flat comparison (with its thumbnail), the 500 nights' history read from the index, the alert
  rules, the trend, the Prometheus night block; the Prometheus frame block;
- ``astep-cal trends`` and ``astep-cal status`` on that 500-night root, in their own processes.

Medians over ``--repeats``; the ratios of the health to the frame work and to the night's processing
time are printed and written to ``bench-results/bench-health.json``.

    python -m astep_cal.devtools.bench_health               # make bench-health (~5 min here)
    python -m astep_cal.devtools.bench_health --size 1024   # a quick check of the bench itself
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from astropy.io import fits

from astep_cal.devtools.bench import BENCH_FWHM_PX, run_measured
from astep_cal.devtools.bench_state import build_ledger, time_command
from astep_cal.devtools.harness import write_report
from astep_cal.devtools.sensor import ring_shadow
from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.engine import night_health as nh
from astep_cal.engine import prometheus
from astep_cal.formats import keywords as kw
from astep_cal.formats import names, products
from astep_cal.formats.raw_night import take_inventory
from astep_cal.science.flat_change import compare_flats
from astep_cal.state import alerts, entries
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import Settings
from astep_cal.support.logs import configure, get_logger

DATE = "2026-07-01"
PREVIOUS = "2026-06-30"  # a previous night's own flat, with an ice ring: the flat comparison finds it
HISTORY_NIGHTS = 500


def night_spec(size: int, n_science: int) -> NightSpec:
    scale = size / 4096
    return NightSpec(date=DATE, start_time=f"{DATE}T20:00:00", shape=(size, size), pixel_scale_arcsec=0.93 / scale,
                     n_science=n_science, n_darks=5, n_flats=5, n_flat_darks=5, fwhm_arcsec=BENCH_FWHM_PX * 0.93 / scale,
                     n_cosmic_rays=round(600 * scale ** 2), n_hot_pixels=round(2000 * scale ** 2),
                     dead_column=round(1200 * scale))


def timed(function: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``function()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def previous_flat(root: Path) -> None:
    """The night before's own master flat: tonight's with an ice ring (tonight shows it as a change)."""
    path = names.masters_dir(root, DATE) / names.MASTER_FLAT
    data, header = products.read_master(path)
    with np.errstate(over="ignore"):  # exp() far from the ring: 1 there, as meant
        ring = ring_shadow(data.shape, 0.3 * data.shape[1], 0.6 * data.shape[0], 0.01 * data.shape[0],
                           0.025 * data.shape[0], 0.04)
    header[kw.MASTER_NIGHT.name] = PREVIOUS
    target = names.masters_dir(root, PREVIOUS) / names.MASTER_FLAT
    target.parent.mkdir(parents=True)
    fits.PrimaryHDU((data * ring).astype(np.float32), header).writeto(target)


def add_history(ledger_path: Path) -> None:
    """500 earlier nights with health figures (two frames each) in the night's own ledger."""
    first = dt.date.fromisoformat(PREVIOUS) - dt.timedelta(days=HISTORY_NIGHTS)
    dates = [(first + dt.timedelta(days=i)).isoformat() for i in range(HISTORY_NIGHTS)]
    with tempfile.TemporaryDirectory() as scratch:
        built = Ledger.load(build_ledger(Path(scratch), dates, 2))
        ledger = Ledger.load(ledger_path)
        for date in dates:
            ledger.night(date).update(built.night(date))
            ledger.save()
            ledger.release(date)


def frame_figures(night: dict[str, Any]) -> dict[str, float]:
    frames = list(night["frames"].values())
    work = [entries.calibration(f)["duration_s"] + entries.solve(f)["duration_s"] for f in frames
            if "duration_s" in entries.calibration(f) and "duration_s" in entries.solve(f)]
    health = [f["health"]["duration_s"] for f in frames if f.get("health", {}).get("status") == "ok"]
    return {"frames": len(frames), "frame_work_s": statistics.median(work), "zero_point_s": statistics.median(health),
            "zero_points": len(health)}


def measure(work: Path, size: int, n_science: int, repeats: int) -> dict[str, Any]:
    root = work / "root"
    start = time.perf_counter()
    make_night(root, night_spec(size, n_science), truth_dir=work / "truth")
    prom = work / "astep_cal.prom"
    config = work / "bench.toml"
    config.write_text(f'[health]\nprometheus_textfile = "{prom}"\n[logging]\nformat = "json"\n')
    print(f"night generated in {time.perf_counter() - start:.0f} s; astep-cal once ...", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    wall, _, _ = run_measured([sys.executable, "-m", "astep_cal", "once", str(root), "--config", str(config)], env=env,
                              log_path=work / "once.log")
    ledger_path = root / ".astep-cal" / "ledger.json"
    result: dict[str, Any] = {"size": size, "science_frames": n_science, "night_wall_s": round(wall, 2),
                              **frame_figures(Ledger.load(ledger_path).night(DATE))}
    previous_flat(root)
    add_history(ledger_path)
    configure("json", "error")
    base = Settings()
    settings = dataclasses.replace(base, health=dataclasses.replace(base.health, prometheus_textfile=str(prom)))
    ledger, inventory, log = Ledger.load(ledger_path), take_inventory(root, DATE), get_logger(night=DATE)
    night = ledger.night(DATE)

    def whole_night() -> None:
        night.pop("health", None)  # no result kept from the last call: the flat is compared again
        nh.night_health(root, inventory, night, ledger, settings, log)

    pieces: dict[str, float] = {"night_health_s": timed(whole_night, repeats)}
    assert night["health"].get("flat_change", {}).get("n_structures"), night["health"]  # the ring was found
    flats = [products.read_master(names.masters_dir(root, d) / names.MASTER_FLAT)[0] for d in (DATE, PREVIOUS)]
    ratio_file = names.cal_dir(root, DATE) / names.FLAT_RATIO
    pieces["flat_change_s"] = timed(lambda: products.write_flat_ratio(
        ratio_file, compare_flats(*flats).thumbnail, PREVIOUS), repeats)
    history = nh.history(ledger, DATE)
    figures = night["health"]
    acks = alerts.read_acks(ledger_path.parent)
    pieces["history_500_s"] = timed(lambda: nh.history(ledger, DATE), repeats)
    pieces["alerts_s"] = timed(lambda: alerts.evaluate(figures, history, acks, settings.health), repeats)
    pieces["trend_s"] = timed(lambda: nh.trend(history, DATE, figures), repeats)
    pieces["prometheus_night_s"] = timed(lambda: prometheus.write_textfile(prom, DATE, alerts.compact(figures)), repeats)
    cal = next(names.cal_dir(root, DATE).glob("*_CAL.fits"))
    pieces["prometheus_frame_s"] = timed(lambda: prometheus.write_frame(prom, cal, {"zp": 19.0}), repeats)
    result["pieces"] = {k: round(v, 5) for k, v in pieces.items()}
    ledger_arg = ["--ledger", str(ledger_path)]
    result["commands_500_nights"] = {"trends_s": time_command(["trends", str(root), *ledger_arg]),
                                     "trends_json_s": time_command(["trends", str(root), "--json", *ledger_arg]),
                                     "status_s": time_command(["status", str(root), *ledger_arg])}
    return result | ratios(result)


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Health against the frame work: per frame, per night (this night), and a winter night of 1000 frames
    (night work = its frames' work; the fixed night health once)."""
    p = result["pieces"]
    per_frame = (result["zero_point_s"] + p["prometheus_frame_s"]) / result["frame_work_s"]
    trends_alerts = p["history_500_s"] + p["alerts_s"] + p["trend_s"] + p["prometheus_night_s"]
    night_health_total = result["zero_points"] * (result["zero_point_s"] + p["prometheus_frame_s"]) + p["night_health_s"]
    winter = 1000 * result["frame_work_s"]
    return {"ratios_pct": {
        "health_per_frame": round(100 * per_frame, 2),
        "trends_alerts_this_night": round(100 * trends_alerts / result["night_wall_s"], 4),
        "all_health_this_night": round(100 * night_health_total / result["night_wall_s"], 2),
        "night_health_this_night": round(100 * p["night_health_s"] / result["night_wall_s"], 2),
        "trends_alerts_1000_frame_night": round(100 * trends_alerts / winter, 5),
        "all_health_1000_frame_night": round(100 * (1000 * (result["zero_point_s"] + p["prometheus_frame_s"])
                                                    + p["night_health_s"]) / winter, 2)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side (default 4096)")
    parser.add_argument("--science", type=int, default=5, help="science frames (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions of each in-process timing (default 5)")
    parser.add_argument("--out", default="bench-results/bench-health.json")
    parser.add_argument("--work", help="scratch directory (default: a temporary one, deleted)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work, prefix="astep-bench-health-") as scratch:
        result = measure(Path(scratch), args.size, args.science, args.repeats)
    result["date"] = dt.date.today().isoformat()
    write_report(Path(args.out), result)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
