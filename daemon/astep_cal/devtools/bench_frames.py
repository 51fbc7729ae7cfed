"""``make bench``'s per-frame part: CPU seconds per stage, the cosmic-ray step against bare astroscrappy.

Run in its own process (``python -m astep_cal.devtools.bench_frames ROOT TRUTH_DIR``) on a night that
``astep-cal once`` has just processed (its masters are reused). For every science frame, in turn:
read, calibrate (first pass, cosmic-ray step, error map: ``calibrate_frame``'s own timings), quality
metrics, write a CAL file, plate-solve it (solve-field's CPU counted from the children's rusage); then
bare ``astroscrappy.detect_cosmics`` on the same electrons (bad pixels filled, the same settings, the
whole frame), the floor the cosmic-ray step is measured against. CPU is process time (every thread:
astroscrappy runs its filters with OpenMP), so the figures hold on a busy machine where wall times
do not. Both cosmic-ray results are scored against the truth: the fraction of injected hit pixels
brought back within 5 sigma (:func:`evaluate.cosmic_removed_fraction`) and the clean pixels flagged in
the 3x3 cores of unsaturated stars. On one frame a night the solve is also run blind (no RA/Dec), and
L.A.Cosmic's mask on the screened patches is compared with its whole-frame run (they must agree).
Prints one JSON line of medians.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import astroscrappy
import numpy as np

from astep_cal.devtools.evaluate import cosmic_removed_fraction
from astep_cal.devtools.synthetic import load_truth
from astep_cal.engine import astrometry
from astep_cal.formats import names, products
from astep_cal.formats.fitsio import read_image
from astep_cal.science import quality
from astep_cal.science.calibrate import calibrate_frame, fill_bad_pixels, first_pass, sky_level
from astep_cal.science.cosmics import lacosmic_mask, lacosmic_parameters
from astep_cal.science.masters import MaskBit
from astep_cal.support.config import AstrometrySettings, CosmicSettings

GAIN, READ_NOISE_E, SATURATION_ADU = 2.0, 9.0, 65535.0  # the bench night's (synthetic defaults)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def star_core_false_hits(cosmic: np.ndarray, truth_hits: np.ndarray, saturated: np.ndarray, stars: Any) -> int:
    """Pixels flagged in the 3x3 cores of unsaturated stars that no cosmic ray hit."""
    count = 0
    ny, nx = cosmic.shape
    for x, y in zip(np.rint(np.asarray(stars["x"])).astype(int), np.rint(np.asarray(stars["y"])).astype(int)):
        if 1 <= y < ny - 1 and 1 <= x < nx - 1:
            core = np.s_[y - 1:y + 2, x - 1:x + 2]
            if not saturated[core].any():
                count += int((cosmic[core] & ~truth_hits[core]).sum())
    return count


def _electrons(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray,
               pixel_mask: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The frame as astep-cal hands it to the cosmic-ray step (electrons, bad pixels filled), its sky
    and the saturation level in electrons."""
    data, saturated, bad = first_pass(raw, dark, flat, pixel_mask, GAIN, SATURATION_ADU)
    sky = sky_level(data, ~bad & ~saturated)
    fill_bad_pixels(data, bad, sky)
    return data, sky, float((SATURATION_ADU - np.median(dark[::16, ::16])) * GAIN)


def bare_astroscrappy(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, pixel_mask: np.ndarray,
                      settings: CosmicSettings) -> tuple[float, float, np.ndarray, np.ndarray]:
    """CPU and wall seconds of one whole-frame ``detect_cosmics`` on the frame's electrons (bad pixels
    filled, as astep-cal gives them), with its mask and cleaned frame."""
    data, _, saturation_e = _electrons(raw, dark, flat, pixel_mask)
    cpu, wall = time.process_time(), time.perf_counter()
    mask, cleaned = astroscrappy.detect_cosmics(data, **lacosmic_parameters(settings, READ_NOISE_E, saturation_e))
    return time.process_time() - cpu, time.perf_counter() - wall, mask, cleaned


def screened_against_whole_frame(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, pixel_mask: np.ndarray,
                                 settings: CosmicSettings) -> int:
    """Pixels where L.A.Cosmic on the screened patches and on the whole (mirrored) frame disagree."""
    data, sky, saturation_e = _electrons(raw, dark, flat, pixel_mask)
    masks = [lacosmic_mask(data, settings, READ_NOISE_E, saturation_e, sky, screened=screened)
             for screened in (True, False)]
    return int(np.count_nonzero(masks[0] != masks[1]))


def one_frame(raw_path: Path, masters: Path, truth: Any, work: Path, blind: bool) -> dict[str, Any]:
    """Every figure of one frame (see the module's docstring); the blind solve and the screened
    against whole-frame comparison when ``blind``."""
    cpu: dict[str, float] = {}
    start = time.process_time()
    raw, header = read_image(raw_path)
    dark, _ = read_image(masters / names.dark_file_name(float(header["EXPTIME"])))
    flat, _ = read_image(masters / names.MASTER_FLAT)
    pixel_mask = read_image(masters / names.PIXEL_MASK)[0].astype(np.uint8)
    cpu["read"] = time.process_time() - start
    settings = CosmicSettings()
    result = calibrate_frame(raw, dark, flat, pixel_mask, gain=GAIN, read_noise_e=READ_NOISE_E,
                             saturation_adu=SATURATION_ADU, cosmics=settings, timings=cpu)
    start = time.process_time()
    measured = quality.measure_frame(result.data, result.mask)
    cpu["quality"] = time.process_time() - start
    cal = work / names.cal_name(raw_path.name)
    start = time.process_time()
    products.write_calibrated(cal, products.calibrated_hdul(header, result, {}, None, measured.sources))
    cpu["write"] = time.process_time() - start
    start, children, wall = time.process_time(), _children_cpu(), time.perf_counter()
    solved = astrometry.solve(cal, products.read_cal_header(cal), AstrometrySettings())
    cpu["solve"] = time.process_time() - start + _children_cpu() - children
    figures: dict[str, Any] = {"cpu": cpu, "solve_wall_s": time.perf_counter() - wall, "solved": solved.solved,
                               "solved_from_list": solved.from_list}
    if blind:
        blind_result = astrometry.solve(cal, products.read_cal_header(cal),
                                        replace(AstrometrySettings(), use_header_pointing=False))
        figures.update(blind_solved=blind_result.solved, blind_solve_wall_s=blind_result.duration_s,
                       screened_differs_px=screened_against_whole_frame(raw, dark, flat, pixel_mask, settings))
    bare_cpu, bare_wall, bare_mask, bare_cleaned = bare_astroscrappy(raw, dark, flat, pixel_mask, settings)
    hits = truth.cosmic_mask(raw_path.name).astype(bool)
    usable = (result.mask & (MaskBit.BAD | MaskBit.SATURATED | MaskBit.LOW_FLAT)) == 0
    sky, stars = truth.sky_e(raw_path.name), truth.stars(raw_path.name)
    ours = (result.mask & MaskBit.COSMIC) > 0
    saturated = (result.mask & MaskBit.SATURATED) > 0
    figures.update(
        bare_astroscrappy_cpu_s=bare_cpu, bare_astroscrappy_wall_s=bare_wall,
        removed_ours=cosmic_removed_fraction(result.data, sky, hits & usable, truth.flat, READ_NOISE_E),
        removed_bare=cosmic_removed_fraction(bare_cleaned, sky, hits & usable, truth.flat, READ_NOISE_E),
        core_false_ours=star_core_false_hits(ours, hits, saturated, stars),
        core_false_bare=star_core_false_hits(bare_mask.astype(bool) & usable, hits, saturated, stars),
        hit_pixels=int((hits & usable).sum()),
    )
    cal.unlink()
    return figures


def measure_night(root: Path, truth_dir: Path) -> dict[str, Any]:
    """Medians over the night's science frames (the first frame's figures are dropped when there are
    more than two: imports and caches warm up on it)."""
    truth = load_truth(truth_dir)
    night = truth_dir.name
    masters = root / night / f"{night}-CAMS_CAL" / "masters"
    frames = []
    with tempfile.TemporaryDirectory(prefix="astep-bench-frames-") as work:
        for index, raw_path in enumerate(truth.science_files):
            frames.append(one_frame(root / night / raw_path.parent.name / raw_path.name, masters, truth,
                                    Path(work), blind=index == 1 or len(truth.science_files) == 1))
    steady = frames[1:] if len(frames) > 2 else frames
    stages = sorted(steady[0]["cpu"])
    cpu = {stage: statistics.median(f["cpu"][stage] for f in steady) for stage in stages}
    blind = [f for f in frames if "blind_solved" in f]
    return {
        "cpu_per_stage_s": cpu,
        "cpu_per_frame_s": sum(cpu.values()),
        "cosmic_step_cpu_s": cpu["cosmic_rays"],
        "bare_astroscrappy_cpu_s": statistics.median(f["bare_astroscrappy_cpu_s"] for f in steady),
        "bare_astroscrappy_wall_s": statistics.median(f["bare_astroscrappy_wall_s"] for f in steady),
        "cosmic_over_bare_cpu": statistics.median(f["cpu"]["cosmic_rays"] / f["bare_astroscrappy_cpu_s"]
                                                  for f in steady),
        "removed_ours": sum(f["removed_ours"] * f["hit_pixels"] for f in frames) / sum(f["hit_pixels"] for f in frames),
        "removed_bare": sum(f["removed_bare"] * f["hit_pixels"] for f in frames) / sum(f["hit_pixels"] for f in frames),
        "hit_pixels": sum(f["hit_pixels"] for f in frames),
        "core_false_ours": sum(f["core_false_ours"] for f in frames),
        "core_false_bare": sum(f["core_false_bare"] for f in frames),
        "solve_wall_s": statistics.median(f["solve_wall_s"] for f in frames),
        "solved_from_list": sum(bool(f["solved_from_list"]) for f in frames),
        "blind_solved": all(f["blind_solved"] for f in blind) if blind else None,
        "blind_solve_wall_s": blind[0]["blind_solve_wall_s"] if blind else None,
        "screened_differs_px": blind[0]["screened_differs_px"] if blind else None,
        "n_frames": len(frames),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure_night(Path(args[0]), Path(args[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
