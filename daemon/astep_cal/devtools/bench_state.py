"""``make bench-state``: what the state costs when the ledger holds a whole archive.

Synthetic ledgers of 150 and 500 nights × 1000 frames (entries shaped like real ones, ~1.2 KB a
frame) are built through the real :class:`~astep_cal.state.ledger.Ledger`, then measured:

- **recording one frame**: a new 1000-frame night recorded frame by frame (a calibration save and a
  solve save per frame, as the pipeline does), each ``save`` timed; median and the slowest, at the end
  of the night when its file is largest;
- **status**: ``astep-cal status --json`` in its own process (start-up included); and ``report`` of
  the last night (its summary built from that night's file); ``astep-cal trends`` and ``trends --json``
  (every night carries health figures, one in five with alerts: docs/pages/health.md);
- **the daemon's memory from the state**: RSS of a real ``astep-cal run`` started on a root with the
  archive's ledger, less the RSS of one started with an empty ledger; and on the 150-night root below,
  the duration of its full reconcile (start) and of its periodic ones (every 3 s here);
- **once with nothing to do** (150 nights): a root of 150 nights × 1000 science frames and their CAL
  files (hard links to tiny FITS files: the check reads directories and stats files, never pixels),
  ``astep-cal once`` timed, and every file's mtime compared before and after (nothing written).

Side by side, the same frame recording done the schema-1 way (one ``ledger.json`` holding every night,
serialised to compare and again to write at each save) on the 150-night archive: the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal.devtools.harness import rss_mb
from astep_cal.engine.rules import calibration_fingerprint
from astep_cal.formats.names import cal_name
from astep_cal.formats.raw_night import raw_listing
from astep_cal.state.ledger import Ledger, RootLock
from astep_cal.support.config import Settings
from astep_cal.support.storage import fingerprint

TARGETS = {"record_ms": 50.0, "status_s": 2.0, "trends_s": 2.0, "daemon_state_rss_mb": 100.0, "once_idle_s": 60.0}


def frame_entry(name: str, raw: dict[str, int], config: str, index: int) -> dict[str, Any]:
    """A ledger entry shaped like a real calibrated and solved frame (every field the pipeline writes)."""
    return {
        "raw": raw, "output": {"size": 134_231_040, "mtime_ns": 1_782_938_475_123_456_789 + index},
        "calibrate": {
            "status": "ok", "output": cal_name(name), "duration_s": 8.123, "config": config, "software": "0.1.0",
            "dark": {"exptime": 60.0, "scale": 1.0, "bias_origin": "none"},
            "flat": {"night": "2026-05-01", "borrowed": False}, "gain": 2.0, "gain_source": "default",
            "n_cosmic": 1234 + index % 97, "n_saturated": 12, "sky_e": 1234.56, "date_obs": "2026-07-01T20:00:00.000",
            "quality": {"sky_noise_e": 35.12, "n_stars": 1234, "fwhm_px": 2.534, "fwhm_arcsec": 2.356,
                        "pixel_scale_arcsec": 0.93, "ellipticity": 0.05, "n_fwhm_stars": 200,
                        "masked_fraction": 0.0012, "duration_s": 1.02}},
        "astrometry": {"status": "solved", "tries": 1, "duration_s": 2.5, "hinted": True, "n_matched": 45,
                       "residual_arcsec": 0.123, "pixel_scale_arcsec": 0.9301},
    }


def night_dates(n: int) -> list[str]:
    start = np.datetime64("2026-03-01")
    return [str(start + np.timedelta64(i, "D")) for i in range(n)]


def frame_names(date: str, n: int) -> list[str]:
    return [f"{date}_{20 + i // 3600 % 4:02d}.{i // 60 % 60:02d}.{i % 60:02d}_{i:04d}_SCIENCE.fits" for i in range(n)]


def health_record(index: int) -> dict[str, Any]:
    """A night's health as ``night_health`` records it (figures, flat change, alerts, 7-night trend);
    one night in five raised two alerts."""
    figures = {"throughput": 19.0 - 0.001 * (index % 7), "zp_median": 18.98, "n_zp": 980, "zp_frame_scatter": 0.031,
               "sky_mag_arcsec2": 21.4, "moon_alt_max_deg": -12.0, "moon_illumination": 0.4, "fwhm_arcsec": 2.4,
               "ellipticity": 0.06, "bias_adu": 1000.2, "read_noise_adu": 4.51, "read_noise_e": 9.02,
               "n_hot": 2000 + index, "dark_e_per_s": 0.2, "gain": 2.0, "ccd_temp_c": -60.0,
               "flat_change": {"against": "2026-02-28", "key": ["2026-02-28", []], "large_scale_std": 0.002,
                               "n_structures": 0, "structures": []}}
    figures["alerts"] = [{"kind": "throughput", "throughput": 18.9, "baseline": 19.0, "drop_pct": 8.0,
                          "baseline_nights": 5}, {"kind": "hot_pixels", "n_hot": 2600, "baseline": 2000,
                                                   "rise_pct": 30.0}] if index % 5 == 0 else []
    figures["trend"] = [{"night": "2026-02-28", "throughput": 19.0, "n_hot": 2000, "fwhm_arcsec": 2.4,
                         "ellipticity": 0.06, "sky_mag_arcsec2": 21.4, "alerts": []}] * 7
    return figures


def night_record(date: str, names: list[str], raw: dict[str, int], config: str, listing: str | None) -> dict[str, Any]:
    record = {"masters": {"shape": [4096, 4096], "darks": {"60": {"file": "master_dark_60s.fits", "inputs": []}},
                          "flat": {"night": date, "file": f"{date}/{date}-CAMS_CAL/masters/master_flat.fits"},
                          "mask": {"file": "bad_pixel_mask.fits"}, "complete": True},
              "problems": [], "inventory": {"science": len(names), "darks": 20, "biases": 0, "flats": 20},
              "frames": {name: frame_entry(name, raw, config, i) for i, name in enumerate(names)},
              "health": health_record(int(date[-2:]) + 31 * int(date[5:7]))}
    if listing is not None:
        record["listing"] = listing
    return record


def build_ledger(state: Path, dates: list[str], frames: int, root: Path | None = None) -> Path:
    """A schema-2 ledger of ``dates`` × ``frames`` (matching the raw files under ``root`` when given)."""
    config = calibration_fingerprint(Settings())
    path = state / "ledger.json"
    with RootLock(path):  # the lock file exists on a real station; it is not a write of the run
        pass
    ledger = Ledger.load(path)
    raw = {"size": 33_560_640, "mtime_ns": 1_782_938_400_000_000_000}
    for date in dates:
        names = frame_names(date, frames)
        listing = None
        if root is not None:
            raw = fingerprint(root / date / f"{date}-CAMS" / names[0])
            listing = raw_listing(root, date)
        ledger.night(date).update(night_record(date, names, raw, config, listing))
        ledger.save()
        ledger.release(date)
    return path


def tiny_fits(path: Path, kind: str) -> None:
    hdu = fits.PrimaryHDU(np.zeros((8, 8), np.uint16))
    hdu.header["EXPTIME"] = 60.0
    hdu.header["IMAGETYP"] = kind
    hdu.writeto(path)


def build_root(root: Path, dates: list[str], frames: int) -> None:
    """Night directories of ``frames`` science files and their CAL files, all hard links to two tiny
    FITS files (one inode each: the check stats every name, it never reads pixels), and a summary."""
    templates = root / ".templates"  # one pair a night: a file system caps the links to one inode
    templates.mkdir(parents=True)
    for date in dates:
        raw, cal_file = templates / f"{date}-raw.fits", templates / f"{date}-cal.fits"
        tiny_fits(raw, "LIGHT")
        tiny_fits(cal_file, "LIGHT")
        cams, cal = root / date / f"{date}-CAMS", root / date / f"{date}-CAMS_CAL"
        cams.mkdir(parents=True)
        (root / date / f"{date}-CAMS_SKYFLAT").mkdir()
        cal.mkdir()
        for name in frame_names(date, frames):
            os.link(raw, cams / name)
            os.link(cal_file, cal / cal_name(name))
        (cal / "summary.json").write_text("{}")


def time_recording(state: Path, frames: int) -> dict[str, float]:
    """A new night recorded frame by frame, two saves a frame (as ``NightRun`` does); milliseconds per
    save, and the whole night's release (its last full save and the index) at the end."""
    ledger = Ledger.load(state / "ledger.json")
    config = calibration_fingerprint(Settings())
    date = "2027-12-31"
    times = []
    for i, name in enumerate(frame_names(date, frames)):
        entry = frame_entry(name, {"size": 1, "mtime_ns": i}, config, i)
        solve = entry.pop("astrometry")
        ledger.frame(date, name).update(entry)
        start = time.perf_counter()
        ledger.save(lazy_index=True)  # as the pipeline records a calibrated frame
        times.append(time.perf_counter() - start)
        ledger.frame(date, name)["astrometry"] = solve
        start = time.perf_counter()
        ledger.save(lazy_index=True)  # and its solve
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    ledger.release(date)
    release_ms = round(1000 * (time.perf_counter() - start), 2)
    last = times[-200:]
    return {"release_ms": release_ms, "record_median_ms": round(1000 * statistics.median(times), 2),
            "record_end_of_night_median_ms": round(1000 * statistics.median(last), 2),
            "record_max_ms": round(1000 * max(times), 2)}


def time_schema1_recording(state: Path, dates: list[str], frames: int, saves: int) -> dict[str, float]:
    """The baseline: the schema-1 way (one file; each save serialises it twice, to compare and to write)."""
    config = calibration_fingerprint(Settings())
    raw = {"size": 33_560_640, "mtime_ns": 1}
    data = {"schema": 1, "software": "0.1.0", "nights": {d: night_record(d, frame_names(d, frames), raw, config, None)
                                                       for d in dates}}
    path = state / "ledger-schema1.json"
    path.write_text(json.dumps(data, sort_keys=True, indent=1))
    start = time.perf_counter()
    data = json.loads(path.read_text())
    load_s = time.perf_counter() - start
    times = []
    saved = json.dumps({k: v for k, v in data.items() if k != "updated"}, sort_keys=True, indent=1)
    for i in range(saves):
        data["nights"][dates[-1]]["frames"][f"extra{i}.fits"] = frame_entry(f"extra{i}.fits", raw, config, i)
        start = time.perf_counter()
        current = json.dumps({k: v for k, v in data.items() if k != "updated"}, sort_keys=True, indent=1)
        if current != saved:  # what Ledger.save did in schema 1: compare, then serialise again to write
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, sort_keys=True, indent=1))
            os.replace(tmp, path)
            saved = current
        times.append(time.perf_counter() - start)
    size_mb = path.stat().st_size / 1e6
    path.unlink()
    return {"schema1_ledger_mb": round(size_mb, 1), "schema1_load_s": round(load_s, 2),
            "schema1_record_ms": round(1000 * statistics.median(times), 1)}


def time_command(args: list[str], repeats: int = 3) -> float:
    """Median wall time of an ``astep-cal`` command in its own process (start-up included)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "astep_cal", *args], capture_output=True, text=True,
                              timeout=600)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"astep-cal {args[0]} failed: {done.stderr[-2000:]}")
    return round(statistics.median(times), 3)


def run_daemon(root: Path, state: Path, seconds: float, reconcile_s: float = 600.0) -> dict[str, Any]:
    """A real ``astep-cal run`` on ``root`` with the ledger in ``state`` for ``seconds`` after its first
    rescan: its RSS then, and the durations of its full and periodic reconciles (from its JSON log)."""
    config = state.parent / f"{state.name}-daemon.toml"
    config.write_text(f'ledger = "{state / "ledger.json"}"\n[astrometry]\nenabled = false\n'
                      f'[daemon]\nreconcile_interval_s = {reconcile_s}\n[logging]\nformat = "json"\n')
    log = config.with_suffix(".log")
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "astep_cal", "run", "--config", str(config), "--root",
                                    str(root)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while '"rescan"' not in log.read_text() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(seconds)
        rss = rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    rescans = [e for e in map(_json_or_none, log.read_text().splitlines()) if e and e.get("event") == "rescan"]
    full = [e["duration_s"] for e in rescans if e.get("full")]
    periodic = [e["duration_s"] for e in rescans if not e.get("full")]
    return {"rss_mb": round(rss, 1), "full_rescan_s": full[0] if full else None,
            "periodic_rescan_s": statistics.median(periodic) if periodic else None}


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def file_times(*directories: Path) -> dict[str, int]:
    return {str(p): p.lstat().st_mtime_ns for d in directories for p in d.rglob("*")}


def time_once_idle(root: Path, state: Path) -> tuple[float, int]:
    """``astep-cal once`` on a finished archive: seconds, and how many files it changed (must be 0)."""
    before = file_times(root, state)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "astep_cal", "once", str(root), "--ledger",
                           str(state / "ledger.json")], capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"once failed ({done.returncode}): {done.stderr[-3000:]}")
    after = file_times(root, state)
    changed = sum(1 for k in set(before) | set(after) if before.get(k) != after.get(k))
    return round(seconds, 2), changed


def measure(work: Path, sizes: list[int], frames: int, once_nights: int, baseline: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"frames_per_night": frames, "archives": {}}
    empty_root = work / "empty-root"
    empty_root.mkdir()
    empty_state = work / "empty-state"
    empty_state.mkdir()
    rss_empty = run_daemon(empty_root, empty_state, 8.0)["rss_mb"]
    for nights in sizes:
        state = work / f"state-{nights}"
        state.mkdir()
        start = time.perf_counter()
        build_ledger(state, night_dates(nights), frames)
        row: dict[str, Any] = {"build_s": round(time.perf_counter() - start, 1),
                               "state_mb": round(sum(p.stat().st_size for p in state.rglob("*.json")) / 1e6, 1),
                               "index_kb": round((state / "ledger.json").stat().st_size / 1e3, 1)}
        ledger_arg = ["--ledger", str(state / "ledger.json")]
        row["status_s"] = time_command(["status", str(empty_root), "--json", *ledger_arg])
        row["report_s"] = time_command(["report", night_dates(nights)[-1], str(empty_root), "--json", *ledger_arg])
        row["trends_s"] = time_command(["trends", str(empty_root), *ledger_arg])
        row["trends_json_s"] = time_command(["trends", str(empty_root), "--json", *ledger_arg])
        rss = run_daemon(empty_root, state, 8.0)["rss_mb"]
        row["daemon_rss_mb"], row["daemon_state_rss_mb"] = rss, round(rss - rss_empty, 1)
        row.update(time_recording(state, frames))
        if baseline and nights == min(sizes):
            row.update(time_schema1_recording(state, night_dates(nights), frames, saves=2))
        results["archives"][str(nights)] = row
        shutil.rmtree(state)
        print(f"{nights} nights: {row}", flush=True)
    if once_nights:
        root, state = work / "root", work / "state-once"
        dates = night_dates(once_nights)
        build_root(root, dates, frames)
        state.mkdir()
        build_ledger(state, dates, frames, root=root)
        seconds, changed = time_once_idle(root, state)
        results["once_idle"] = {"nights": once_nights, "seconds": seconds, "files_changed": changed}
        print(f"once, {once_nights} nights with nothing to do: {seconds} s, {changed} files changed", flush=True)
        results["daemon_on_archive"] = {"nights": once_nights, **run_daemon(root, state, 12.0, reconcile_s=3.0)}
        print(f"daemon on that root: {results['daemon_on_archive']}", flush=True)
    results["daemon_rss_empty_mb"] = round(rss_empty, 1)
    return results


def check_targets(results: dict[str, Any]) -> dict[str, bool]:
    checks = {}
    for nights, row in results["archives"].items():
        checks[f"record one frame <= {TARGETS['record_ms']:g} ms ({nights} nights)"] = (
            row["record_end_of_night_median_ms"] <= TARGETS["record_ms"])
        checks[f"status <= {TARGETS['status_s']:g} s ({nights} nights)"] = row["status_s"] <= TARGETS["status_s"]
        checks[f"trends, trends --json <= {TARGETS['trends_s']:g} s ({nights} nights)"] = (
            max(row["trends_s"], row["trends_json_s"]) <= TARGETS["trends_s"])
        checks[f"daemon RSS from the state <= {TARGETS['daemon_state_rss_mb']:g} MB ({nights} nights)"] = (
            row["daemon_state_rss_mb"] <= TARGETS["daemon_state_rss_mb"])
    if "once_idle" in results:
        once = results["once_idle"]
        checks[f"once, nothing to do, <= {TARGETS['once_idle_s']:g} s, 0 files written ({once['nights']} nights)"] = (
            once["seconds"] <= TARGETS["once_idle_s"] and once["files_changed"] == 0)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", default="150,500", help="archive sizes, comma-separated (default 150,500)")
    parser.add_argument("--frames", type=int, default=1000, help="frames per night (default 1000)")
    parser.add_argument("--once-nights", type=int, default=150, help="nights of the `once` root (0: skip)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the schema-1 baseline")
    parser.add_argument("--out", default="bench-results", help="directory for bench-state.json")
    parser.add_argument("--work", help="scratch directory (default: a temporary one, deleted)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.nights.split(",") if n]
    with tempfile.TemporaryDirectory(dir=args.work, prefix="astep-bench-state-") as scratch:
        results = measure(Path(scratch), sizes, args.frames, args.once_nights, not args.no_baseline)
    results["targets"] = check_targets(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-state.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    for name, met in results["targets"].items():
        print(f"{'met   ' if met else 'MISSED'}  {name}")
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
