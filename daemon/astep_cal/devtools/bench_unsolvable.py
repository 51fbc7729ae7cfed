"""``make bench-unsolvable``: what a night of frames that cannot be plate-solved costs the daemon (issue 23).

The real daemon (``astep-cal run`` through :mod:`astep_cal.devtools.harness`, real ``solve-field`` and
index files) is given the same synthetic data root twice per round, on a fresh copy each time:

* ``off``: ``[astrometry] enabled = false``;
* ``unsolvable``: solving on with the **default budgets**, but a field-width range (0.3–0.5°) that the
  night's 1° field is outside — the "wrong setting" failure of the issue, where each ``solve-field``
  search runs to its own end and finds nothing (frost or thin cloud end the same way: a search that fails).

The root holds the night under test (``--frames`` science frames of ``--size``² pixels, a 1° field) and,
the day after, a small next night (``--next-frames``): the daemon works oldest first, so the next night's
start shows whether it waited for the first one's solves. For each run, from the daemon's own log events:

* ``night_s``: the first night's wall time, ``night_started`` to ``night_done``;
* ``tail_s``: of it, the time after its last frame was calibrated (the wait for solves, then the summary);
* ``next_start_s``: from the first night's ``night_done`` to the next night's ``night_started``;
* ``next_night_s``: the next night's wall time; and from the ledger the first night's solves tried
  (``failed``, their seconds) and ``deferred``;
* ``daemon_cpu_s``, ``solve_field_cpu_s``: CPU seconds of the daemon itself and of its children (solve-field)
  over the run: the work, which the load of a shared machine does not move as it moves wall times.

Rounds alternate which mode runs first (the machine's load drifts); the medians, the ratio
``unsolvable / off`` of the night's wall time (of the medians, and the median of the rounds' ratios) and the
worst case of a night of 1000 unsolvable frames (:func:`worst_case_1000`) are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from astep_cal.devtools.harness import DaemonProcess, read_ledger, write_report
from astep_cal.support.settings import AstrometrySettings

UNSOLVABLE = "scale_low_deg = 0.3\nscale_high_deg = 0.5\n"  # the field is 1° wide: outside the range
MODES = {"off": "enabled = false\n", "unsolvable": UNSOLVABLE}
FIELD_ARCSEC = 512 * 7.2  # a 1° field, as ``synthetic.SMALL_FIELD``, whatever the frame size


def make_root(root: Path, frames: int, size: int, next_frames: int) -> tuple[str, str]:
    """The night under test and the next night (synthetic, 1° field, ``size``² frames); their dates."""
    from astep_cal.devtools.synthetic import SMALL_FIELD, NightSpec, make_night

    scale = FIELD_ARCSEC / size
    spec = dataclasses.replace(NightSpec(**SMALL_FIELD), shape=(size, size), pixel_scale_arcsec=scale,
                               fwhm_arcsec=2.5 * scale,
                               n_science=frames, n_cosmic_rays=round(40 * (size / 512) ** 2),
                               n_hot_pixels=round(80 * (size / 512) ** 2), dead_column=size * 150 // 512,
                               cadence_s=30.0)
    second = dataclasses.replace(spec, n_science=next_frames, date="2026-07-02",
                                 start_time="2026-07-02T20:00:00", seed=spec.seed + 1)
    make_night(root, spec)
    make_night(root, second)
    shutil.rmtree(root / ".truth", ignore_errors=True)
    return spec.date, second.date


def _time(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process itself and of its children it waited for (solve-field), from
    ``/proc``: the work done, whatever the machine's load did to the wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def one_run(source: Path, work: Path, mode: str, dates: tuple[str, str],
            keep_logs: Path | None = None) -> dict[str, Any]:
    """The daemon on a fresh copy of ``source`` in ``mode`` until both nights are done (figures above)."""
    first, second = dates
    root = work / mode / "root"
    shutil.copytree(source, root)
    config = (f"[daemon]\nsettle_seconds = 0.5\nno_flat_wait_s = 3600\n[astrometry]\n{MODES[mode]}"
              f"[logging]\nformat = \"json\"\n")
    daemon = DaemonProcess(work / mode, root, config)

    def next_night_done() -> bool:
        return any(e["event"] == "night_done" and e.get("night") == second for e in daemon.events())

    try:
        daemon.wait_for(next_night_done, 3600, "the next night done")
        events = daemon.events()
        own_cpu_s, children_cpu_s = _cpu_s(daemon.process.pid)
        daemon.stop(120)
    finally:
        daemon.close()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(daemon.log_path, keep_logs / f"{mode}-{time.strftime('%H%M%S')}.log")
    of = {night: [e for e in events if e.get("night") == night] for night in dates}

    def at(night: str, name: str) -> float:  # the night's first such event (the idle retry passes come later)
        return _time(next(e for e in of[night] if e["event"] == name))

    last_calibrated = max(_time(e) for e in of[first] if e["event"] == "frame_calibrated")
    frames = read_ledger(root)["nights"][first]["frames"]
    solves = [f.get("astrometry") or {} for f in frames.values()]
    failed = [s["duration_s"] for s in solves if s.get("status") == "failed" and "duration_s" in s]
    calibrations = [f["calibrate"]["duration_s"] for f in frames.values() if "duration_s" in f.get("calibrate", {})]
    result = {
        "night_s": at(first, "night_done") - at(first, "night_started"),
        "tail_s": at(first, "night_done") - last_calibrated,
        "next_start_s": at(second, "night_started") - at(first, "night_done"),
        "next_night_s": at(second, "night_done") - at(second, "night_started"),
        "calibrate_per_frame_s": statistics.median(calibrations),
        "daemon_cpu_s": own_cpu_s, "solve_field_cpu_s": children_cpu_s,
        "tried": len(failed), "failed_solve_s": sum(failed),
        "failed_solve_per_frame_s": statistics.median(failed) if failed else None,
        "deferred": sum(s.get("status") == "deferred" for s in solves),
        "solved": sum(s.get("status") == "solved" for s in solves),
    }
    shutil.rmtree(work / mode)
    return result


def worst_case_1000(settings: AstrometrySettings, calibrate_per_frame_s: float,
                    failed_per_frame_s: float | None, frames: int = 1000) -> dict[str, Any]:
    """The bounds the budget settings give a night of ``frames`` unsolvable frames, with the measured
    per-frame figures put in (``docs/pages/headers-and-targets.md``, "Worst case").

    First pass: solving runs beside calibration, its failed solving paced at ``wait_fraction`` of the time
    calibrating so far and stopped at ``night_budget_s`` (the solve going over either ends within
    ``frame_budget_s``): at most min(night_budget_s, wait_fraction × T_cal) + frame_budget_s of solve-field,
    which is what it can take from the calibration when no core is free. Once calibrated, a night whose every
    solve failed is not waited for (one with some solved waits at most ``wait_fraction`` × T_cal). Later, each idle retry pass costs at
    most night_budget_s + frame_budget_s (what a night arriving meanwhile waits), and every frame is tried
    at most ``max_tries`` times, each try at most ``frame_budget_s``."""
    pass_bound = settings.night_budget_s + settings.frame_budget_s
    calibration = frames * calibrate_per_frame_s
    per_try = failed_per_frame_s if failed_per_frame_s else settings.frame_budget_s
    return {
        "frames": frames,
        "first_pass_solving_bound_s": min(settings.night_budget_s, settings.wait_fraction * calibration)
        + settings.frame_budget_s,
        "first_pass_wait_bound_s": min(settings.wait_fraction * calibration, pass_bound),
        "calibration_s_at_measured_rate": calibration,
        "pass_bound_s": pass_bound,
        "idle_solving_bound_h": frames * settings.max_tries * settings.frame_budget_s / 3600,
        "idle_solving_measured_h": frames * settings.max_tries * per_try / 3600,
        "idle_passes_measured": math.ceil(frames * settings.max_tries * per_try / pass_bound),
        "frames_tried_per_pass_measured": settings.night_budget_s / per_try + 1,
    }


def summarise(rounds: list[dict[str, dict[str, Any]]], frames: int, size: int, next_frames: int) -> dict[str, Any]:
    medians = {mode: {key: statistics.median(v for r in rounds if (v := r[mode][key]) is not None)
                      for key in rounds[0][mode] if any(r[mode][key] is not None for r in rounds)}
               for mode in MODES}
    off, on = medians["off"], medians["unsolvable"]
    return {
        "frames": frames, "size": size, "next_frames": next_frames, "rounds": len(rounds),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "medians": medians,
        "ratio_night_s": on["night_s"] / off["night_s"],
        "ratio_night_s_per_round": [r["unsolvable"]["night_s"] / r["off"]["night_s"] for r in rounds],
        "median_round_ratio": statistics.median(r["unsolvable"]["night_s"] / r["off"]["night_s"] for r in rounds),
        "worst_case_1000": worst_case_1000(AstrometrySettings(), off["calibrate_per_frame_s"],
                                           on.get("failed_solve_per_frame_s")),
        "per_round": rounds,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['frames']} frames of {summary['size']}², {summary['rounds']} rounds (medians):")
    print("| mode | night (s) | after the last calibration (s) | next night starts after (s) | next night (s) "
          "| solves tried | their s | deferred | daemon CPU (s) | solve-field CPU (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, m in summary["medians"].items():
        print(f"| {mode} | {m['night_s']:.1f} | {m['tail_s']:.1f} | {m['next_start_s']:.1f} | "
              f"{m['next_night_s']:.1f} | {m['tried']:g} | {m['failed_solve_s']:.1f} | {m['deferred']:g} | "
              f"{m.get('daemon_cpu_s', float('nan')):.1f} | {m.get('solve_field_cpu_s', float('nan')):.1f} |")
    rounds = ", ".join(f"{r:.3f}" for r in summary["ratio_night_s_per_round"])
    print(f"night wall time, unsolvable / off: {summary['ratio_night_s']:.3f} (of the medians); rounds: {rounds}")
    print("worst case, 1000 unsolvable frames:", summary["worst_case_1000"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--next-frames", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/unsolvable.json"))
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy each run's daemon log there")
    args = parser.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="astep-bench-unsolvable-") as tmp:
        source = Path(tmp) / "source"
        dates = make_root(source, args.frames, args.size, args.next_frames)
        for index in range(args.rounds):
            order = list(MODES) if index % 2 == 0 else list(MODES)[::-1]
            started = time.monotonic()
            rounds.append({mode: one_run(source, Path(tmp) / "work", mode, dates, args.keep_logs) for mode in order})
            print(f"round {index + 1}: " + ", ".join(f"{mode} night {rounds[-1][mode]['night_s']:.1f} s"
                                                    for mode in MODES)
                  + f" ({time.monotonic() - started:.0f} s)", flush=True)
            write_report(args.out, summarise(rounds, args.frames, args.size, args.next_frames))  # kept if cut short
    summary = summarise(rounds, args.frames, args.size, args.next_frames)
    print_summary(summary)
    write_report(args.out, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
