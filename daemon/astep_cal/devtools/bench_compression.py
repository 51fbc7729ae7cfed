"""``make bench-compression``: plain float32 CAL files against tile-compressed ones, side by side.

One calibrated frame of a :func:`astep_cal.devtools.defect_scene.defect_scene` (a grid of isolated stars with
dead columns, hot pixels, cosmic rays, saturated stars; masters from simulated raw frames) is written
with :func:`astep_cal.formats.products.calibrated_hdul` plain and at each quantisation level, then read back.
Per form: bytes per frame, write and read time (median of ``--repeats``), the noise the quantisation
adds (rms of compressed - plain on unmasked pixels) relative to the sky noise, and the photometric
change on the same stars (:func:`astep_cal.devtools.evaluate.aperture_fidelity` on both: median of the flux
difference over the bright stars, and the spread of the normalised residuals). The output must also
pass ``fitsverify`` and ``funpack`` when they are installed. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal.devtools.defect_scene import DefectScene, defect_scene
from astep_cal.devtools.evaluate import aperture_fidelity, calibrate_scene
from astep_cal.formats import products
from astep_cal.science.calibrate import CalibratedFrame
from astep_cal.support.config import OutputSettings


def _calibrated(size: int, seed: int) -> tuple[DefectScene, CalibratedFrame]:
    scene = defect_scene((size, size), seed=seed, dead_columns=(61, size // 3, size // 2, size // 2 + 1))
    return scene, calibrate_scene(scene)


def _tool_ok(command: list[str]) -> bool | None:
    if shutil.which(command[0]) is None:
        return None
    done = subprocess.run(command, capture_output=True, text=True)
    return done.returncode == 0 and "error" not in (done.stdout + done.stderr).lower().replace("0 error", "")


def measure(size: int, levels: list[float], repeats: int, seed: int = 3) -> dict[str, Any]:
    scene, result = _calibrated(size, seed)
    header = fits.Header({"EXPTIME": scene.exptime})
    sky_noise = float(np.sqrt(scene.sky_e + scene.read_noise_e ** 2))
    stars = scene.stars
    reference = aperture_fidelity(result.data, result.error, result.mask, scene.truth_e, stars["x"], stars["y"],
                                  scene.sky_e)
    bright = (reference["true"] > 20000) & ~reference["flagged"]
    clean = result.mask == 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="astep-bench-fz-") as tmp:
        for level in [None, *levels]:
            output = OutputSettings(compress=level is not None, quantize_level=level or 16.0)
            path = Path(tmp) / f"frame_{level}.fits"
            writes, reads = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                products.write_calibrated(path, products.calibrated_hdul(header, result, {}, output))
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                with fits.open(path, memmap=False) as hdul:
                    index = products.cal_image_hdu(hdul)
                    data, error, mask = (np.array(hdul[index].data), np.array(hdul["ERR"].data),
                                         np.array(hdul["MASK"].data))
                reads.append(time.perf_counter() - start)
            table = aperture_fidelity(data, error, mask, scene.truth_e, stars["x"], stars["y"], scene.sky_e)
            added = float(np.std((data - result.data)[clean]))
            unpacked = Path(tmp) / f"unpacked_{level}.fits"
            rows.append({
                "form": "plain float32" if level is None else f"RICE q={level:g}",
                "bytes": path.stat().st_size,
                "write_s": statistics.median(writes),
                "read_s": statistics.median(reads),
                "added_noise_rel_sky": added / sky_noise,
                "err_max_rel_change": float(np.max(np.abs(error - result.error)[clean] / result.error[clean])),
                "mask_identical": bool(np.array_equal(mask, result.mask)),
                "bright_flux_change": float(np.median((table["delta"] - reference["delta"])[bright]
                                                      / reference["true"][bright])),
                "bright_flux_bias_vs_truth": float(np.median(table["delta"][bright] / table["true"][bright])),
                "z_std": float(np.std(table["z"][~table["flagged"]])),
                "fitsverify_ok": _tool_ok(["fitsverify", "-q", str(path)]),
                "funpack_ok": (None if level is None
                               else _tool_ok(["funpack", "-O", str(unpacked), str(path)])),
            })
    return {"size": size, "n_stars": len(stars), "n_bright": int(bright.sum()), "sky_noise_e": sky_noise,
            "rows": rows}


def print_table(report: dict[str, Any]) -> None:
    print(f"{report['size']}² frame, {report['n_stars']} stars ({report['n_bright']} bright), sky noise "
          f"{report['sky_noise_e']:.1f} e-")
    print("| form | MB/frame | write (s) | read (s) | added noise / sky noise | bright-star flux change "
          "| flux bias vs truth | z std | fitsverify | funpack |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in report["rows"]:
        print(f"| {row['form']} | {row['bytes'] / 1e6:.1f} | {row['write_s']:.2f} | {row['read_s']:.2f} | "
              f"{row['added_noise_rel_sky']:.3f} | {100 * row['bright_flux_change']:+.4f} % | "
              f"{100 * row['bright_flux_bias_vs_truth']:+.3f} % | {row['z_std']:.3f} | "
              f"{row['fitsverify_ok']} | {row['funpack_ok']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--levels", type=float, nargs="+", default=[4.0, 8.0, 16.0, 32.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/compression.json"))
    args = parser.parse_args(argv)
    report = measure(args.size, args.levels, args.repeats)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
