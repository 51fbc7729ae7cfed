"""The cost of a late frame and the bytes a night writes, plain output beside the default (issue 27).

A daemon fed frame by frame runs its engine once per new frame on a night already processed: the
fixed cost of a run (process start and imports, the night's inventory, ledger and masters, closing the
night) is paid by that one frame. For each output form (the default, tile-compressed; and
``[output] compress = false``) on a fresh copy of the same night:

1. ``astep-cal once`` on the night without its last science frame (the steady cadence, from the log);
2. the last frame arrives; ``astep-cal once`` again, timed (wall and CPU of the process): its
   **marginal wall time over its frame work** (the ledger's calibration, catalogue and solve seconds
   of that frame);
3. the same in the daemon (``astep-cal run``, imports paid once): the daemon started and idle, a new
   frame arrives (a copy of the last one, one cadence later), then a second (the steady case: the first
   after the daemon's start pays one-time costs); from its arrival to the night's run done
   (``night_done``: CAL, catalogue, WCS, ledger, light curves, summary.json), less the daemon's
   ``settle_seconds``, over that frame's work; and to the summary's picture drawn (deferred by
   ``close_delay_s``, which is subtracted too);
4. **bytes written per raw byte**: every file astep-cal wrote under the root (CAL, CAT, masters,
   summaries, light curves, ledger) over the raw night's bytes; the CAL files alone beside it.

``python -m astep_cal.devtools.bench_late --size 1024`` on its own; ``make bench`` runs it in each round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from astep_cal.devtools.harness import numeric_medians, write_report
from astep_cal.state import entries

FORMS = {"compressed": "", "plain": "[output]\ncompress = false\n"}


def _run_once(root: Path, config: Path, log_path: Path, mem_limit: float) -> dict[str, float]:
    """``astep-cal once`` in its own process: wall seconds and CPU seconds (user + system, its own
    and its children's: solve-field) from ``wait4``."""
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    argv = [sys.executable, "-m", "astep_cal", "once", str(root), "--mem-limit", str(mem_limit),
            "--config", str(config)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"astep-cal once exited {os.waitstatus_to_exitcode(status)} (log: {log_path})")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def frame_work_s(root: Path, date: str, raw_name: str) -> float:
    """The frame's own work from the ledger: calibration (read, calibrate, cosmic rays, quality, write),
    catalogue and solve seconds."""
    night = json.loads((root / ".astep-cal" / "nights" / f"{date}.json").read_text())
    frame = night["frames"][raw_name]
    parts = [entries.calibration(frame).get("duration_s"), entries.solve(frame).get("duration_s"),
             (frame.get("catalogue") or {}).get("duration_s")]
    return float(sum(p for p in parts if p))


DAEMON_SETTLE_S = 0.5
DAEMON_CLOSE_DELAY_S = 3.0


def _next_frame(late: Path, held: Path, later_s: float = 90.0) -> Path:
    """A copy of ``late`` observed ``later_s`` later (DATE-OBS and name), written to ``held``; returns the
    name it will have in the night."""
    from astropy.io import fits

    with fits.open(late) as hdul:
        when = dt.datetime.fromisoformat(hdul[0].header["DATE-OBS"]) + dt.timedelta(seconds=later_s)
        hdul[0].header["DATE-OBS"] = when.isoformat(timespec="milliseconds")
        hdul.writeto(held)
    return late.with_name(f"{when.strftime('%Y-%m-%d_%H.%M.%S')}_SCIENCE.fits")


def _event_time(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _one_arrival(daemon: Any, held: Path, arriving: Path) -> dict[str, float]:
    """One frame dropped into the watched night: seconds to its run done and to the deferred close done."""
    before = daemon.count("night_done")
    arrived = time.time()
    held.rename(arriving)
    daemon.wait_for(lambda: daemon.count("night_done") > before, 600, "the new frame's run")
    done = _event_time([e for e in daemon.events() if e["event"] == "night_done"][-1])
    drawn = daemon.wait_for(lambda: [e for e in daemon.events() if e["event"] == "summary_written"
                                     and e.get("png_kb") and _event_time(e) > done], 120, "the deferred close")
    return {"wall_s": done - arrived - DAEMON_SETTLE_S,
            "summary_s": _event_time(drawn[-1]) - arrived - DAEMON_SETTLE_S - DAEMON_CLOSE_DELAY_S}


def daemon_late(root: Path, work: Path, form: str, late: Path) -> dict[str, float]:
    """Two new frames (:func:`_next_frame`, 90 and 180 s after the last) arriving one by one in a processed
    night a daemon watches. For each: seconds from its arrival to the night's run done (``night_done``: its
    CAL file, catalogue, WCS, health and ledger written, summary.json remade), less the daemon's
    ``settle_seconds`` (a deliberate wait for the transfer to end, not work), over the frame's work from
    the ledger; and to the deferred close done (light curves, summary PNG), less the settling and
    ``close_delay_s``. The second frame is the daemon's steady case; the first after its start also pays
    one-time costs (the health step's first Moon position: astropy's ephemeris, ~1-4 s)."""
    from astep_cal.devtools.harness import DaemonProcess

    config = (f"{FORMS[form]}[daemon]\nsettle_seconds = {DAEMON_SETTLE_S}\nclose_delay_s = {DAEMON_CLOSE_DELAY_S}\n"
              f'[logging]\nformat = "json"\n')
    frames = []
    for n, later_s in enumerate((90.0, 180.0)):
        held = work / form / f"next-frame-{n}.fits"
        frames.append((held, _next_frame(late, held, later_s)))
    daemon = DaemonProcess(work / form, root, config)
    try:
        daemon.wait_message("READY=1", timeout=120)
        time.sleep(3.0)  # its start-up scan of the night finds nothing to do
        first, steady = (_one_arrival(daemon, held, arriving) for held, arriving in frames)
        daemon.stop(60)
    finally:
        daemon.close()
    date = late.parent.parent.name
    first_work, steady_work = (frame_work_s(root, date, arriving.name) for _, arriving in frames)
    return {"wall_s": steady["wall_s"], "frame_work_s": steady_work, "summary_s": steady["summary_s"],
            "first_wall_s": first["wall_s"], "first_frame_work_s": first_work}


def _tree_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def one_form(night_dir: Path, work: Path, form: str, mem_limit: float) -> dict[str, Any]:
    """Steps 1-3 above for one output form, on a fresh copy of the night."""
    from astep_cal.devtools.bench import astep_cadence

    root, raws, late, held, config = _without_its_last_frame(night_dir, work / form, form)
    raw_bytes = _tree_bytes(raws)
    first = _run_once(root, config, work / form / "first.log", mem_limit)
    held.rename(late)
    second = _run_once(root, config, work / form / "late.log", mem_limit)
    work_s = frame_work_s(root, night_dir.name, late.name)
    written = [p for p in root.rglob("*") if p.is_file() and p not in set(raws)]
    cal = [p for p in written if p.name.endswith("_CAL.fits")]
    written_bytes = _tree_bytes(written)
    daemon = daemon_late(root, work, form, late)
    result = {
        "night_wall_s": first["wall_s"], **astep_cadence(work / form / "first.log"),
        "late_wall_s": second["wall_s"], "late_cpu_s": second["cpu_s"], "late_frame_work_s": work_s,
        "late_wall_over_work": second["wall_s"] / work_s if work_s else None,
        "daemon_late_wall_s": daemon["wall_s"], "daemon_late_frame_work_s": daemon["frame_work_s"],
        "daemon_late_wall_over_work": daemon["wall_s"] / daemon["frame_work_s"] if daemon["frame_work_s"] else None,
        "daemon_late_summary_s": daemon["summary_s"],
        "daemon_first_late_wall_over_work": daemon["first_wall_s"] / daemon["first_frame_work_s"]
        if daemon["first_frame_work_s"] else None,
        "raw_bytes": raw_bytes, "written_bytes": written_bytes, "written_per_raw_byte": written_bytes / raw_bytes,
        "cal_bytes_per_frame": _tree_bytes(cal) / max(1, len(cal)),
    }
    shutil.rmtree(root)
    return result


def _without_its_last_frame(night_dir: Path, form_dir: Path, form: str) -> tuple[Path, list[Path], Path, Path, Path]:
    """A fresh copy of the night under ``form_dir``, its last science frame held back beside it, and the
    form's configuration: (root, raw files, the late frame's place, where it is held, config)."""
    root = form_dir / "root"
    night = root / night_dir.name
    shutil.copytree(night_dir, night)
    raws = sorted(p for p in night.rglob("*") if p.is_file())
    science = sorted(p for p in raws if "science" in p.name.lower() or p.name.lower().startswith("sci"))
    late = (science or raws)[-1]
    held = form_dir / late.name
    late.rename(held)
    config = form_dir / "config.toml"
    config.write_text(FORMS[form])
    return root, raws, late, held, config


def steady_cadence(night_dir: Path, work: Path, form: str, mem_limit: float) -> float | None:
    """``astep-cal once`` on a fresh copy of the night (its last science frame held back, as in
    :func:`one_form`): the steady cadence alone."""
    from astep_cal.devtools.bench import astep_cadence

    form_dir = work / f"{form}-cadence"
    root, _, _, _, config = _without_its_last_frame(night_dir, form_dir, form)
    _run_once(root, config, form_dir / "once.log", mem_limit)
    cadence = astep_cadence(form_dir / "once.log")["steady_frame_s"]
    shutil.rmtree(form_dir)
    return cadence


def late_frame_round(night_dir: Path, work: Path, mem_limit: float, index: int = 0) -> dict[str, Any]:
    """Both forms on the same night, as one flat record (``<form>_<figure>``, what ``bench.summarise`` takes
    medians of); the ratio of their cadences.

    The forms run in the order A B B A (A the first form, swapped every other round): :func:`one_form` for
    each, then a second run of each for its cadence alone (:func:`steady_cadence`), in the reverse order.
    Each form's steady cadence is the mean of its two runs, one in each position: in 3 rounds of A B only,
    the form that ran first in a round was slower by itself (2026-12-06, quiet machine: compressed / plain
    1.21 and 1.12 with compressed first, 1.05 with plain first), and with an odd number of rounds one form
    is first more often."""
    order = list(FORMS) if not index % 2 else list(FORMS)[::-1]
    result = {f"{form}_{key}": value for form in order
              for key, value in one_form(night_dir, work, form, mem_limit).items()}
    for form in order[::-1]:
        again = steady_cadence(night_dir, work, form, mem_limit)
        first = result.get(f"{form}_steady_frame_s")
        result[f"{form}_steady_frame_runs_s"] = [first, again]
        result[f"{form}_steady_frame_s"] = (first + again) / 2 if first and again else first or again
    plain, packed = result.get("plain_steady_frame_s"), result.get("compressed_steady_frame_s")
    result["cadence_compressed_over_plain"] = packed / plain if plain and packed else None
    return result


def print_late(result: dict[str, Any]) -> None:
    """The table of docs/pages/compression.md from a (median) flat record."""
    nan = float("nan")
    print("| form | steady cadence (s) | late frame (`once`): wall (s) | CPU (s) | its frame work (s) | wall / work "
          "| late frame in the daemon: wall (s) | its frame work (s) | wall / work | first after start: wall / work "
          "| to the deferred close (s) | bytes written / raw byte | CAL MB / frame |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for form in FORMS:
        r = {key[len(form) + 1:]: value for key, value in result.items() if key.startswith(f"{form}_")}
        print(f"| {form} | {r.get('steady_frame_s') or nan:.2f} | {r['late_wall_s']:.2f} | {r['late_cpu_s']:.2f} | "
              f"{r['late_frame_work_s']:.2f} | {r.get('late_wall_over_work') or nan:.2f} | "
              f"{r.get('daemon_late_wall_s') or nan:.2f} | {r.get('daemon_late_frame_work_s') or nan:.2f} | "
              f"{r.get('daemon_late_wall_over_work') or nan:.2f} | {r.get('daemon_first_late_wall_over_work') or nan:.2f} | "
              f"{r.get('daemon_late_summary_s') or nan:.2f} | "
              f"{r['written_per_raw_byte']:.3f} | {r['cal_bytes_per_frame'] / 1e6:.1f} |")
    if result.get("cadence_compressed_over_plain"):
        print(f"steady cadence compressed / plain: {result['cadence_compressed_over_plain']:.3f}")


def main(argv: list[str] | None = None) -> int:
    from astep_cal.devtools.bench import make_bench_night

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--science", type=int, default=4, help="science frames, the last one arriving late")
    parser.add_argument("--mem-limit", type=float, default=2.0)
    parser.add_argument("--plain-first", action="store_true", help="run the plain form first (default: last)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, the forms' order swapped in each")
    parser.add_argument("--out", type=Path, default=Path("bench-results/late_frame.json"))
    args = parser.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="astep-bench-late-") as tmp:
        night_dir = make_bench_night(Path(tmp) / "night-root", args.science, args.size)
        for index in range(args.rounds):
            rounds.append(late_frame_round(night_dir, Path(tmp) / "work", args.mem_limit,
                                           index=index + int(args.plain_first)))
            print(f"round {index + 1}: cadence compressed / plain "
                  f"{rounds[-1]['cadence_compressed_over_plain'] or float('nan'):.3f}", flush=True)
            write_report(args.out, {"rounds": rounds})  # kept if cut short
    result = numeric_medians(rounds)
    print_late(result)
    write_report(args.out, {**result, "rounds": rounds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
