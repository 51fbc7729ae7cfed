"""``make bench``: astep-cal against the straightforward pipeline and the astroscrappy floor, side by side.

One run generates a 4096² night (N science frames, 20 darks, 20 sky flats) with the synthetic
generator, then, for each of ``--repeats`` rounds, runs in separate processes:

(a) ``baseline``: the guide's recipe written plainly with ccdproc (combine darks and flats, ``ccdmask``
    bad-pixel mask, ``ccd_process``, ``cosmicray_lacosmic``, ``solve-field`` with only the scale limits);
(b) ``floor``: bare ``astroscrappy.detect_cosmics`` on one calibrated frame (the per-frame floor);
(c) ``astep-cal once`` on a fresh copy of the same night;
(d) ``bench_frames`` on astep-cal's output: CPU seconds per stage of every frame, the cosmic-ray step
    against bare astroscrappy on the same frames (CPU, and both against the truth), solve times, a blind solve;
(e) ``bench_late``: the default (compressed) output beside plain: a late frame's wall time over its frame
    work (``once``, the daemon), bytes written per raw byte, the steady cadence of each.
Peak RSS comes from the OS (``wait4`` rusage of each child). Medians over the rounds, the ratios (end to end
also per round) are printed as a table and written as JSON (``bench-results/bench.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from astep_cal.devtools.bench_late import late_frame_round, print_late
from astep_cal.devtools.harness import numeric_medians
from astep_cal.state import entries

BASELINE_SCRIPT = r'''
import json, subprocess, sys, time, tempfile, warnings
from pathlib import Path
import numpy as np
import ccdproc
from astropy import units as u
from astropy.nddata import CCDData
warnings.simplefilter("ignore")
night, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
cams, flats_dir = night / (night.name + "-CAMS"), night / (night.name + "-CAMS_SKYFLAT")
t = {}
def read(paths): return [CCDData.read(p, unit="adu") for p in paths]
start = time.perf_counter()
science_darks = sorted(cams.glob("*_DARK*.fits"))
master_dark = ccdproc.combine([str(p) for p in science_darks], method="median", unit="adu", mem_limit=2e9,
                              sigma_clip=True, dtype=np.float32)
flat_darks = sorted(flats_dir.glob("*_DARK*.fits"))
master_flat_dark = ccdproc.combine([str(p) for p in flat_darks], method="median", unit="adu", mem_limit=2e9,
                                   dtype=np.float32)
t["master_darks_s"] = time.perf_counter() - start
start = time.perf_counter()
flats = [ccdproc.subtract_dark(f, master_flat_dark, exposure_time="EXPTIME", exposure_unit=u.s)
         for f in read(sorted(flats_dir.glob("*_SKYFLAT*.fits")))]
master_flat = ccdproc.combine(flats, method="median", scale=lambda a: 1 / np.median(a), mem_limit=2e9,
                              sigma_clip=True, dtype=np.float32)
master_flat.data /= np.median(master_flat.data)
del flats
t["master_flat_s"] = time.perf_counter() - start
start = time.perf_counter()
mask = ccdproc.ccdmask(master_flat)
t["ccdmask_s"] = time.perf_counter() - start
cal, solve = [], []
for path in sorted(cams.glob("*_SCIENCE*.fits")):
    start = time.perf_counter()
    ccd = CCDData.read(path, unit="adu")
    ccd.mask = mask
    # the guide's order: dark, flat, (mask), ADU -> electrons, cosmic rays
    ccd = ccdproc.subtract_dark(ccd, master_dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
    ccd = ccdproc.flat_correct(ccd, master_flat)
    ccd = ccdproc.gain_correct(ccd, 2.0 * u.electron / u.adu)
    ccd = ccdproc.cosmicray_lacosmic(ccd, sigclip=4.5, readnoise=9.0, satlevel=65535, gain_apply=False)
    target = out / (path.stem + "_CAL.fits")
    ccd.write(target, overwrite=True)
    cal.append(time.perf_counter() - start)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["solve-field", "--scale-units", "degwidth", "--scale-low", "0.9", "--scale-high", "1.1",
                        "--no-plots", "--overwrite", "--dir", tmp, "--new-fits", "none", str(target)],
                       capture_output=True, timeout=600)
    solve.append(time.perf_counter() - start)
t["calibrate_per_frame_s"] = float(np.median(cal))
t["solve_per_frame_s"] = float(np.median(solve))
print(json.dumps(t))
'''

FLOOR_SCRIPT = r'''
import json, sys, time
import astroscrappy
import numpy as np
from astropy.io import fits
data = fits.getdata(sys.argv[1]).astype(np.float32)
start = time.perf_counter()
astroscrappy.detect_cosmics(data, sigclip=4.5, sigfrac=0.3, objlim=5.0, gain=1.0, readnoise=9.0,
                            satlevel=130000.0, niter=1, sepmed=True)
print(json.dumps({"astroscrappy_s": time.perf_counter() - start}))
'''


def run_measured(argv: list[str], env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> tuple[float, float, str]:
    """Run a child process; return (wall seconds, peak RSS in MB from wait4, stdout). Its stderr (the
    JSON log lines of ``astep-cal``) goes to ``log_path`` when given."""
    start = time.perf_counter()
    stderr = open(log_path, "w") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    finally:
        if log_path is not None:
            stderr.close()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {process.returncode}")
    return wall, usage.ru_maxrss / 1024.0, output


BENCH_FWHM_PX = 3.5 / 0.93  # the bench night's seeing, in pixels at every --size


def make_bench_night(root: Path, n_science: int, size: int = 4096) -> Path:
    """ASTEP's night: 4096² frames of 0.93"/px (``size`` < 4096: the same 1° field, coarser, for a quick
    check of the bench itself; its figures are not the benchmark's)."""
    from astep_cal.devtools.synthetic import NightSpec, make_night

    scale = size / 4096
    spec = NightSpec(shape=(size, size), pixel_scale_arcsec=0.93 / scale, n_science=n_science, n_darks=20,
                     n_flats=20, n_flat_darks=20, fwhm_arcsec=BENCH_FWHM_PX * 0.93 / scale,
                     n_cosmic_rays=round(600 * scale ** 2), n_hot_pixels=round(2000 * scale ** 2),
                     dead_column=round(1200 * scale))
    truth = make_night(root, spec)
    return truth.night_dir


def astep_stage_split(root: Path) -> dict[str, float]:
    """Per-frame stage medians from the ledger astep-cal wrote."""
    nights = [json.loads(p.read_text()) for p in sorted((root / ".astep-cal" / "nights").glob("*.json"))]
    frames = [f for night in nights for f in night["frames"].values()]
    calibrate = [entries.calibration(f)["duration_s"] for f in frames if "duration_s" in entries.calibration(f)]
    solve = [entries.solve(f)["duration_s"] for f in frames if "duration_s" in entries.solve(f)]
    return {"calibrate_per_frame_s": statistics.median(calibrate) if calibrate else None,
            "solve_per_frame_s": statistics.median(solve) if solve else None,
            "solved": sum(entries.solve_status(f) == "solved" for f in frames)}


def _log_events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # not a log line
    return events


def astep_cadence(log_path: Path) -> dict[str, float | None]:
    """From astep-cal's own JSON log: the seconds the masters took, and the steady-state cadence, the
    median interval between successive ``frame_calibrated`` events. The cadence is what a long night
    costs per frame: it holds everything done per frame (reading, calibrating, metrics, writing, the
    ledger) with the solve of the previous frame running beside it on the other core."""
    events = _log_events(log_path)
    built = [e for e in events if e.get("event") == "master_built"]
    masters = sum(e.get("duration_s", 0.0) for e in built)
    mask = [e["duration_s"] for e in built if e.get("kind") == "mask" and "duration_s" in e]
    stamps = [dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
              for e in events if e.get("event") == "frame_calibrated"]
    intervals = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    return {"masters_s": round(masters, 2) if masters else None, "mask_s": mask[0] if mask else None,
            "steady_frame_s": statistics.median(intervals) if intervals else None}


def wcs_errors_px(root: Path, truth_dir: Path) -> list[float]:
    """WCS error (px, median over the frame) against the synthetic truth of every solved CAL file."""
    from astep_cal.devtools.evaluate import wcs_error_of
    from astep_cal.devtools.synthetic import load_truth

    truth = load_truth(truth_dir)
    errors = [wcs_error_of(cal, truth) for cal in sorted(root.glob("*/*-CAMS_CAL/*_CAL.fits"))]
    return [e for e in errors if e is not None]


def photometry_cost(root: Path) -> dict[str, float | None]:
    """Issue 16's cost per frame: the catalogue step (median of the ledger's ``catalogue`` durations, run
    inside ``once``) and the night's light curve over these frames' catalogues, timed here with the
    middle star of the reference catalogue as the target (what closing the night adds), per frame."""
    from astep_cal.formats.products import read_catalogue
    from astep_cal.science.lightcurve import FrameCatalogue, light_curve
    from astep_cal.support.config import Target

    nights = [json.loads(p.read_text()) for p in sorted((root / ".astep-cal" / "nights").glob("*.json"))]
    durations = [entries.catalogue(f)["duration_s"] for n in nights for f in n["frames"].values()
                 if entries.catalogue(f).get("status") == "ok"]
    paths = sorted(root.glob("*/*-CAMS_CAL/*_CAT.fits"))
    if not durations or not paths:
        return {"catalogue_per_frame_s": None, "lightcurve_per_frame_s": None}
    start = time.perf_counter()
    frames = [FrameCatalogue(p.name, *read_catalogue(p)) for p in paths]
    reference = max(frames, key=lambda f: len(f.table))
    star = reference.table[len(reference.table) // 2]
    light_curve(frames, Target("bench", float(star["ra"]), float(star["dec"])), 10.0)
    return {"catalogue_per_frame_s": statistics.median(durations),
            "lightcurve_per_frame_s": (time.perf_counter() - start) / len(frames)}


def catalogue_positions(root: Path, truth_dir: Path, fwhm_px: float) -> dict[str, float | None]:
    """Issue 16's position targets at ASTEP's own scale: bright isolated stars of every frame's ``CAT``
    against the truth (pixels) and their true places (the Tycho-2 RA/Dec, arcseconds)."""
    import numpy as np

    from astep_cal.devtools.evaluate import CatalogueAccuracy, catalogue_accuracy
    from astep_cal.devtools.synthetic import load_truth
    from astep_cal.formats.products import read_catalogue

    truth = load_truth(truth_dir)
    parts = []
    for path in sorted(root.glob("*/*-CAMS_CAL/*_CAT.fits")):
        raw_name = path.name.removesuffix("_CAT.fits") + ".fits"
        parts.append(catalogue_accuracy(read_catalogue(path)[0], truth.stars(raw_name), fwhm_px))
    accuracy = CatalogueAccuracy(np.concatenate([p.offsets_px for p in parts] or [np.zeros(0)]),
                                 np.concatenate([p.separations_arcsec for p in parts] or [np.zeros(0)]))
    if not len(accuracy.offsets_px):
        return {"cat_bright_stars": 0}
    sep = accuracy.separations_arcsec
    return {"cat_bright_stars": len(sep), "cat_offset_median_px": float(np.median(accuracy.offsets_px)),
            "cat_offset_p95_px": float(np.percentile(accuracy.offsets_px, 95)),
            "cat_offset_max_px": float(accuracy.offsets_px.max()),
            "cat_radec_median_arcsec": float(np.nanmedian(sep)),
            "cat_radec_p95_arcsec": float(np.nanpercentile(sep, 95)), "cat_radec_max_arcsec": float(np.nanmax(sep))}


def run_astep_once(night_dir: Path, work: Path, mem_limit: float, config: Path | None
                   ) -> tuple[Path, Path, dict[str, Any]]:
    """``astep-cal once`` on a fresh copy of the night: (root, log, wall/RSS/ledger/log figures)."""
    root = work / "astep-root"
    shutil.copytree(night_dir, root / night_dir.name)
    log_path = work / "astep-cal.log"
    json_logs = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    argv = [sys.executable, "-m", "astep_cal", "once", str(root), "--mem-limit", str(mem_limit)]
    wall, rss, _ = run_measured(argv + (["--config", str(config)] if config else []), env=json_logs,
                                log_path=log_path)
    return root, log_path, {"wall_s": wall, "peak_rss_mb": rss, **astep_stage_split(root), **astep_cadence(log_path)}


def without_photometry(work: Path, night_dir: Path, mem_limit: float) -> dict[str, Any]:
    """The same night with ``[photometry] enabled = false`` (no catalogue, no light curve): the cadence
    issue 16's step is measured against, in the same round."""
    config = work / "no-photometry.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[photometry]\nenabled = false\n")
    root, _, figures = run_astep_once(night_dir, work, mem_limit, config)
    shutil.rmtree(root)
    return figures


def one_round(night_dir: Path, work: Path, mem_limit: float, index: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {}
    baseline_out = work / "baseline-out"
    wall, rss, out = run_measured([sys.executable, "-c", BASELINE_SCRIPT, str(night_dir), str(baseline_out)])
    result["baseline"] = {"wall_s": wall, "peak_rss_mb": rss, **json.loads(out.strip().splitlines()[-1])}
    first_cal = sorted(baseline_out.glob("*_CAL.fits"))[0]
    wall, rss, out = run_measured([sys.executable, "-c", FLOOR_SCRIPT, str(first_cal)])
    result["floor"] = {"wall_s": wall, "peak_rss_mb": rss, **json.loads(out.strip().splitlines()[-1])}
    if index % 2:  # the two astep-cal runs swap places every round: neither always runs first
        result["no_photometry"] = without_photometry(work / "no-photometry", night_dir, mem_limit)
    root, log_path, figures = run_astep_once(night_dir, work, mem_limit, None)
    if not index % 2:
        result["no_photometry"] = without_photometry(work / "no-photometry", night_dir, mem_limit)
    truth_dir = night_dir.parent / ".truth" / night_dir.name
    errors = wcs_errors_px(root, truth_dir)
    result["astep_cal"] = {**figures, "wcs_error_px": statistics.median(errors) if errors else None,
                           **photometry_cost(root), **catalogue_positions(root, truth_dir, BENCH_FWHM_PX)}
    _, _, out = run_measured([sys.executable, "-m", "astep_cal.devtools.bench_frames", str(root), str(truth_dir)])
    frames = json.loads(out.strip().splitlines()[-1])
    result["frames"] = {**{f"stage_{k}_cpu_s": v for k, v in frames.pop("cpu_per_stage_s").items()}, **frames}
    result["late"] = late_frame_round(night_dir, work / "late", mem_limit, index)
    shutil.rmtree(root)
    shutil.rmtree(baseline_out)
    return result


def projection_h(wall_s: float, steady_frame_s: float, n_measured: int, n_frames: int) -> float:
    """Hours for ``n_frames``: the measured night's fixed part (wall minus its frames) plus the frames."""
    fixed = max(0.0, wall_s - n_measured * steady_frame_s)
    return (fixed + n_frames * steady_frame_s) / 3600


ISSUE14_CADENCE_S = 8.23  # README: steady cadence before issue 14's science fixes (4096², 2 cores)

TARGETS = {  # checked on the medians of one run; m: medians, r: ratios, p: the summary
    "issue 15: cosmic-ray step <= 30 % of bare astroscrappy's CPU": lambda m, r, p: m["frames"]["cosmic_over_bare_cpu"]
    <= 0.30,
    "issue 15: hits removed (truth) >= bare astroscrappy": lambda m, r, p: m["frames"]["removed_ours"]
    >= m["frames"]["removed_bare"],
    "issue 15: star-core false hits <= bare astroscrappy": lambda m, r, p: m["frames"]["core_false_ours"]
    <= m["frames"]["core_false_bare"],
    "issue 15: solve <= 1.2 s median": lambda m, r, p: m["astep_cal"]["solve_per_frame_s"] <= 1.2,
    "issue 15: WCS error < 0.1 px median": lambda m, r, p: m["astep_cal"]["wcs_error_px"] < 0.1,
    "issue 15: 100 % solved, blind solve too": lambda m, r, p: m["astep_cal"]["solved"] >= p["n_science"]
    and bool(m["frames"]["blind_solved"]),
    "issue 15: steady cadence <= 4.0 s": lambda m, r, p: m["astep_cal"]["steady_frame_s"] <= 4.0,
    "issue 15: CPU-s per frame <= 7 (goal)": lambda m, r, p: m["frames"]["cpu_per_frame_s"] <= 7,
    "issue 15: end to end >= 8x the baseline": lambda m, r, p: r["baseline_over_astep_end_to_end"] >= 8,
    "issue 15: 1000-frame night <= 1.25 h": lambda m, r, p: p["projection_1000_frames_h"] <= 1.25,
    "issue 15: peak RSS <= 1.5 GB (--mem-limit 2)": lambda m, r, p: m["astep_cal"]["peak_rss_mb"] <= 1500,
    f"issue 14: steady cadence <= 1.1 x {ISSUE14_CADENCE_S} s": lambda m, r, p: m["astep_cal"]["steady_frame_s"]
    <= 1.1 * ISSUE14_CADENCE_S,
    "issue 6: bad-pixel mask < 5 s": lambda m, r, p: (m["astep_cal"]["mask_s"] or 0) < 5,
    "issue 16: catalogue + light curve < 1 s / frame": lambda m, r, p: (m["astep_cal"].get("catalogue_per_frame_s")
                                                                       or 0) + (m["astep_cal"].get(
        "lightcurve_per_frame_s") or 0) < 1.0,
    "issue 16: steady cadence grows <= 15 % with the catalogue": lambda m, r, p: r[
        "cadence_with_over_without_photometry"] <= 1.15,
    "issue 16: bright stars within 0.1 px of truth (every one)": lambda m, r, p: m["astep_cal"][
        "cat_offset_max_px"] < 0.1,
    "issue 16: RA/Dec within 0.2\" of the Tycho-2 place (every one)": lambda m, r, p: m["astep_cal"][
        "cat_radec_max_arcsec"] < 0.2,
    "issue 27: products <= 1.0 x the raw bytes": lambda m, r, p: m["late"]["compressed_written_per_raw_byte"] <= 1.0,
    "issue 27: cadence compressed <= 1.1 x plain": lambda m, r, p: m["late"]["cadence_compressed_over_plain"] <= 1.1,
    "issue 27: late frame in the daemon <= 1.3 x its work": lambda m, r, p: m["late"][
        "compressed_daemon_late_wall_over_work"] <= 1.3,
    "issue 15/27: end to end >= 8x the baseline in every round": lambda m, r, p: min(r["end_to_end_per_round"]) >= 8,
}


def summarise(rounds: list[dict[str, Any]], n_science: int, mem_limit: float, size: int = 4096) -> dict[str, Any]:
    runs = ("baseline", "floor", "astep_cal", "no_photometry", "frames", "late")
    medians = {name: numeric_medians([r[name] for r in rounds]) for name in runs}
    floor = medians["floor"]["astroscrappy_s"]
    astep = medians["astep_cal"]
    steady = astep.get("steady_frame_s") or astep["calibrate_per_frame_s"]
    ratios = {
        "baseline_over_astep_end_to_end": medians["baseline"]["wall_s"] / astep["wall_s"],
        "astep_steady_frame_over_floor": steady / floor,
        "astep_calibrate_over_floor": (astep["calibrate_per_frame_s"] or 0) / floor,
        "cadence_with_over_without_photometry": steady / (medians["no_photometry"].get("steady_frame_s") or steady),
        "baseline_mask_over_astep_mask": medians["baseline"]["ccdmask_s"] / max(astep.get("mask_s") or 0.01, 0.01),
        "end_to_end_per_round": [r["baseline"]["wall_s"] / r["astep_cal"]["wall_s"] for r in rounds],
    }
    summary = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "n_science": n_science, "size": size, "repeats": len(rounds), "mem_limit_gb": mem_limit,
        "medians": medians,
        "ratios": ratios,
        # Once per night (masters, start-up, the last solve) plus 1000 frames at the steady cadence.
        "projection_1000_frames_h": projection_h(astep["wall_s"], steady, n_science, 1000),
        "rounds": rounds,
    }
    summary["targets"] = {name: bool(check(medians, ratios, summary)) for name, check in TARGETS.items()}
    return summary


def print_table(summary: dict[str, Any]) -> None:
    m = summary["medians"]
    b, a, f, fr = m["baseline"], m["astep_cal"], m["floor"], m["frames"]
    print(f"\n{summary['n_science']} science frames of {summary['size']}², 20 darks, 20 flats; medians of"
          f" {summary['repeats']} rounds")
    print(f"{'':34}{'baseline':>12}{'astep-cal':>12}{'floor':>10}")

    def row(label: str, base: float | None, astep: float | None, floor: float | None = None, fmt: str = ".2f") -> None:
        cells = [f"{v:>12{fmt}}" if v is not None else f"{'':>12}" for v in (base, astep)]
        print(f"{label:34}{cells[0]}{cells[1]}" + (f"{floor:>10{fmt}}" if floor is not None else ""))

    row("end to end (s)", b["wall_s"], a["wall_s"], fmt=".1f")
    row("peak RSS (MB)", b["peak_rss_mb"], a["peak_rss_mb"], f["peak_rss_mb"], fmt=".0f")
    row("masters (s)", b["master_darks_s"] + b["master_flat_s"], a.get("masters_s"), fmt=".1f")
    row("bad-pixel mask (s)", b["ccdmask_s"], a.get("mask_s"))
    row("calibrate / frame (s)", b["calibrate_per_frame_s"], a["calibrate_per_frame_s"], f["astroscrappy_s"])
    row("solve / frame (s)", b["solve_per_frame_s"], a["solve_per_frame_s"])
    row("steady cadence / frame (s)", b["calibrate_per_frame_s"] + b["solve_per_frame_s"], a.get("steady_frame_s"))
    row("WCS error vs truth (px)", None, a.get("wcs_error_px"), fmt=".3f")
    row("catalogue / frame (s)", None, a.get("catalogue_per_frame_s"), fmt=".3f")
    row("light curve / frame (s)", None, a.get("lightcurve_per_frame_s"), fmt=".3f")
    row("cadence without photometry (s)", None, m["no_photometry"].get("steady_frame_s"))
    row("end to end without photometry (s)", None, m["no_photometry"].get("wall_s"), fmt=".1f")
    if a.get("cat_bright_stars"):
        print(f"catalogue, {a['cat_bright_stars']:.0f} bright isolated stars: offset from truth median"
              f" {a['cat_offset_median_px']:.4f} px, p95 {a['cat_offset_p95_px']:.4f}, max {a['cat_offset_max_px']:.4f};"
              f" RA/Dec from the Tycho-2 place median {a['cat_radec_median_arcsec']:.3f}\","
              f" p95 {a['cat_radec_p95_arcsec']:.3f}\", max {a['cat_radec_max_arcsec']:.3f}\"")
    print("\nCPU seconds per frame (all threads; solve includes solve-field), medians over the frames:")
    stages = [k for k in fr if k.startswith("stage_")]
    print("  " + ", ".join(f"{k[6:-6]} {fr[k]:.2f}" for k in stages) + f"; total {fr['cpu_per_frame_s']:.2f}")
    print(f"cosmic-ray step {fr['cosmic_step_cpu_s']:.2f} CPU-s against bare astroscrappy {fr['bare_astroscrappy_cpu_s']:.2f}"
          f" on the same frames: {fr['cosmic_over_bare_cpu']:.1%}; screened vs whole-frame L.A.Cosmic masks differ"
          f" in {fr['screened_differs_px']} px")
    print(f"hit pixels removed (truth, {fr['hit_pixels']:.0f} px): astep-cal {fr['removed_ours']:.2%}, bare astroscrappy"
          f" {fr['removed_bare']:.2%}; false hits in star cores: {fr['core_false_ours']:.0f} vs {fr['core_false_bare']:.0f}")
    print(f"solve (wall): {fr['solve_wall_s']:.2f} s median from the source list ({fr['solved_from_list']:.0f} of"
          f" {fr['n_frames']:.0f}), blind {fr['blind_solve_wall_s']:.2f} s (solved: {bool(fr['blind_solved'])})")
    r = summary["ratios"]
    print(f"\nbaseline / astep-cal end to end: {r['baseline_over_astep_end_to_end']:.2f}x (per round: "
          f"{', '.join(f'{x:.2f}' for x in r['end_to_end_per_round'])})")
    print(f"astep-cal steady frame / astroscrappy floor: {r['astep_steady_frame_over_floor']:.2f}")
    print(f"steady cadence with / without the catalogue: {r['cadence_with_over_without_photometry']:.3f}")
    print(f"projected 1000-frame night: {summary['projection_1000_frames_h']:.2f} h\n")
    print_late(m["late"])
    for name, met in summary["targets"].items():
        print(f"  {'MET   ' if met else 'MISSED'}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--science", type=int, default=5, help="science frames in the night (default 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mem-limit", type=float, default=2.0)
    parser.add_argument("--out", default="bench-results", help="directory for bench.json")
    parser.add_argument("--size", type=int, default=4096, help="frame side (default 4096; smaller only to try the bench)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="astep-bench-") as tmp:
        work = Path(tmp)
        print(f"generating a {args.size}² night with {args.science} science frames, 20 darks, 20 flats ...", flush=True)
        night_dir = make_bench_night(work / "night-root", args.science, args.size)
        rounds = []
        for index in range(args.repeats):
            print(f"round {index + 1}/{args.repeats} ...", flush=True)
            rounds.append(one_round(night_dir, work / f"round-{index}", args.mem_limit, index))
    summary = summarise(rounds, args.science, args.mem_limit, args.size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(summary, indent=1))
    print_table(summary)
    print(f"\nwritten {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
