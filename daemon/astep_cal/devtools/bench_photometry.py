"""``make bench-photometry``: closing a long night's light curves at full size -- time and memory.

The per-frame catalogue step is timed by ``make bench`` on real 4096² frames; what grows with the
night is its closing: every catalogue of the night is read to make each target's light curve, and a
winter night holds ~1400 frames of up to ``max_sources`` (4000) sources, 82 bytes each (~460 MB if
all were held at once). This builds such a night of catalogues (the catalogue step's columns and
header, a solved TAN WCS drifting slowly, a target with a 1 % transit among stars of every
brightness), then closes its photometry (``photometry.night_light_curves``, what ``close_night``
runs) in a child process, and reports the wall time and the peak RSS against the same child's RSS
after its imports (``bench-results/bench-photometry.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DATE = "2026-07-01"
TARGET_RA, TARGET_DEC = 150.0, -60.0

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import structlog
from astep_cal.engine import photometry
from astep_cal.support.config import Settings, PhotometrySettings, Target
cal_dir, night_path, ra, dec = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
night = json.loads(night_path.read_text())
settings = Settings(photometry=PhotometrySettings(targets=(Target("BENCH", ra, dec),)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
with structlog.testing.capture_logs() as events:
    record = photometry.night_light_curves(cal_dir, "2026-07-01", night, settings, structlog.get_logger())
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "rss_after_imports_mb": before, "peak_rss_mb": peak,
                  "status": record["targets"]["BENCH"]["status"], "frames": record["frames"],
                  "events": sorted({e["event"] for e in events})}))
'''


def catalogue_table(rng: np.random.Generator, n_sources: int, size: int, index: int, n_frames: int) -> Any:
    """One frame's catalogue: the same stars every frame (a slow drift), fluxes from a power law,
    the target (row 0 before sorting) dimmed by a 1 % transit in the middle of the night."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    star_rng = np.random.default_rng(1)  # the same sky every frame
    xy = star_rng.uniform(20, size - 20, (n_sources, 2)) + [index * 0.002, index * 0.001]  # the WCS's drift
    flux = 2e3 * star_rng.pareto(1.0, n_sources) + 2e3
    xy[0], flux[0] = [size / 2, size / 2], 5e5
    if abs(index - n_frames / 2) < n_frames / 20:
        flux[0] *= 0.99
    order = np.argsort(-flux, kind="stable")
    xy, flux = xy[order], flux[order]
    table = Table()
    table["id"] = np.arange(1, n_sources + 1, dtype=np.int32)
    table["x"], table["y"] = xy[:, 0], xy[:, 1]
    cards = catalogue_cards(index, size)
    header = fits.Header({key: value for key, (value, _) in cards.items() if key[:2] in ("CT", "CR", "CD")})
    ra, dec = WCS(header).all_pix2world(xy[:, 0], xy[:, 1], 0)
    table["ra"], table["dec"] = ra, dec
    table["background"] = np.full(n_sources, 1200, np.float32)
    table["background_rms"] = np.full(n_sources, 35, np.float32)
    table["peak"] = (flux / 20).astype(np.float32)
    table["flags"] = np.zeros(n_sources, np.int16)
    for k, factor in enumerate((0.93, 0.98, 0.995, 1.0), start=1):
        noisy = flux * factor + rng.normal(0, np.sqrt(flux + 4e3 * k))
        table[f"flux_{k}"], table[f"flux_err_{k}"] = noisy.astype(np.float32), np.sqrt(flux + 4e3 * k).astype(np.float32)
    return table


def catalogue_cards(index: int, size: int) -> dict[str, tuple]:
    minutes = 20 * 60 + index * 70 / 60
    cards: dict[str, tuple] = {
        "DATE-OBS": (f"{DATE}T{int(minutes // 60) % 24:02d}:{int(minutes % 60):02d}:{(minutes * 60) % 60:06.3f}", ""),
        "EXPTIME": (60.0, ""), "OBJECT": ("BENCH", ""), "IMWIDTH": (size, ""), "IMHEIGHT": (size, ""),
        "FWHMUSED": (3.76, ""), "ASTCWCS": ("solved", ""), "ANNIN": (15.0, ""), "ANNOUT": (22.6, ""),
        "CTYPE1": ("RA---TAN", ""), "CTYPE2": ("DEC--TAN", ""), "CRPIX1": (size / 2 + 1 + index * 0.002, ""),
        "CRPIX2": (size / 2 + 1 + index * 0.001, ""), "CRVAL1": (TARGET_RA, ""), "CRVAL2": (TARGET_DEC, ""),
        "CD1_1": (-0.93 / 3600, ""), "CD1_2": (0.0, ""), "CD2_1": (0.0, ""), "CD2_2": (0.93 / 3600, ""),
    }
    for k, factor in enumerate((1.0, 1.5, 2.0, 2.5), start=1):
        cards[f"APRAD{k}"] = (3.76 * factor, "")
    return cards


def build_night(work: Path, n_frames: int, n_sources: int, size: int) -> tuple[Path, Path]:
    """The night's catalogues and its ledger record (every frame calibrated, catalogued, solved)."""
    from astep_cal.formats import names, products

    cal_dir = work / DATE / f"{DATE}-CAMS_CAL"
    cal_dir.mkdir(parents=True)
    rng = np.random.default_rng(2)
    frames = {}
    for index in range(n_frames):
        raw = f"{DATE}_{index:05d}_SCIENCE.fits"
        path = names.cat_path(cal_dir / names.cal_name(raw))
        products.write_catalogue(path, catalogue_table(rng, n_sources, size, index, n_frames),
                                 catalogue_cards(index, size))
        frames[raw] = {"calibrate": {"status": "ok"}, "catalogue": {"status": "ok", "n_sources": n_sources}}
    night_path = work / "night.json"
    night_path.write_text(json.dumps({"frames": frames}))
    return cal_dir, night_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1400, help="frames in the night (default 1400)")
    parser.add_argument("--sources", type=int, default=4000, help="sources a catalogue (default 4000)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="astep-bench-photometry-") as tmp:
        print(f"writing {args.frames} catalogues of {args.sources} sources ...", flush=True)
        cal_dir, night_path = build_night(Path(tmp), args.frames, args.sources, args.size)
        out = subprocess.run([sys.executable, "-c", CHILD, str(cal_dir), str(night_path), str(TARGET_RA),
                              str(TARGET_DEC)], capture_output=True, text=True, check=True).stdout
    result = {"frames": args.frames, "sources": args.sources, **json.loads(out.strip().splitlines()[-1])}
    result["added_rss_mb"] = result["peak_rss_mb"] - result["rss_after_imports_mb"]
    print(f"{args.frames} catalogues of {args.sources} sources: light curve {result['status']} in"
          f" {result['wall_s']:.1f} s ({result['wall_s'] / args.frames * 1000:.1f} ms a frame); peak RSS"
          f" {result['peak_rss_mb']:.0f} MB, {result['added_rss_mb']:.0f} MB over the imports")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench-photometry.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
