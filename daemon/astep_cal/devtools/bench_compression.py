"""``make bench-compression``: plain float32 CAL files against tile-compressed ones, side by side.

One calibrated frame of a :func:`astep_cal.devtools.defect_scene.defect_scene` (a grid of isolated stars with
dead columns, hot pixels, cosmic rays, saturated stars; masters from simulated raw frames) is written
with :func:`astep_cal.formats.products.calibrated_hdul` plain, as before issue 27 (one-row tiles), with
other tile heights and quantisation levels, and with the defaults, then read back. Per form: bytes per
raw (16-bit) byte, write CPU seconds scaled to a 4096² frame and read time (medians of ``--repeats``),
the ``ERR`` change, the noise the quantisation
adds (rms of compressed - plain on unmasked pixels) relative to the sky noise, and the photometric
change on the same stars (:func:`astep_cal.devtools.evaluate.aperture_fidelity` on both: median of the flux
difference over the bright stars, and the spread of the normalised residuals). The output must also
pass ``fitsverify`` and ``funpack`` when they are installed. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal.devtools.defect_scene import DefectScene, defect_scene
from astep_cal.devtools.evaluate import aperture_fidelity, calibrate_scene
from astep_cal.devtools.harness import write_report
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


RAW_BYTES_PER_PIXEL = 2  # ASTEP raw frames are 16-bit integers


@dataclass(frozen=True)
class Form:
    """One way of writing the CAL file: plain (``output`` None), the project's writer with ``output``,
    or (``legacy``) the writer before issue 27: astropy's default one-row tiles and cfitsio's per-tile
    noise estimate at ``output.quantize_level``."""

    label: str
    output: OutputSettings | None
    legacy: bool = False


def default_forms(levels: list[float], tile_rows: list[int], err_levels: list[float]) -> list[Form]:
    default = OutputSettings()
    forms = [Form("plain float32", None), Form("before: 1 row a tile, per-tile noise, q=16",
                                               OutputSettings(compress=True, tile_rows=1), legacy=True)]
    forms += [Form(f"{rows} rows a tile", replace(default, tile_rows=rows)) for rows in tile_rows]
    forms += [Form(f"q={level:g}", replace(default, quantize_level=level)) for level in levels]
    forms += [Form(f"ERR q={level:g}", replace(default, err_quantize_level=level)) for level in err_levels]
    label = f"default ({default.tile_rows} rows, q={default.quantize_level:g}, ERR q={default.err_quantize_level:g})"
    forms.append(Form(label, default))
    return forms


def _legacy_hdul(header: fits.Header, result: CalibratedFrame, output: OutputSettings) -> fits.HDUList:
    """The compressed CAL file as written before issue 27 (kept here for the comparison only)."""
    plain = products.calibrated_hdul(header, result, {}, None)
    lossy = dict(compression_type="RICE_1", quantize_level=output.quantize_level, quantize_method=1,
                 dither_seed=-1)
    return fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(result.data, plain[0].header, name="SCI", **lossy),
                         fits.CompImageHDU(result.error, plain["ERR"].header, name="ERR", **lossy),
                         fits.CompImageHDU(result.mask, plain["MASK"].header, name="MASK",
                                           compression_type="RICE_1")])


def _hdul(form: Form, header: fits.Header, result: CalibratedFrame) -> fits.HDUList:
    if form.legacy:
        return _legacy_hdul(header, result, form.output)
    return products.calibrated_hdul(header, result, {}, form.output)


def measure(size: int, forms: list[Form], repeats: int, seed: int = 3) -> dict[str, Any]:
    scene, result = _calibrated(size, seed)
    header = fits.Header({"EXPTIME": scene.exptime})
    sky_noise = float(np.sqrt(scene.sky_e + scene.read_noise_e ** 2))
    stars = scene.stars
    reference = aperture_fidelity(result.data, result.error, result.mask, scene.truth_e, stars["x"], stars["y"],
                                  scene.sky_e)
    bright = (reference["true"] > 20000) & ~reference["flagged"]
    clean = result.mask == 0
    raw_bytes = size * size * RAW_BYTES_PER_PIXEL
    to_4096 = (4096 / size) ** 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="astep-bench-fz-") as tmp:
        for number, form in enumerate(forms):
            path = Path(tmp) / f"frame_{number}.fits"
            writes, cpus, reads = [], [], []
            for _ in range(repeats):
                start, cpu = time.perf_counter(), time.process_time()
                products.write_calibrated(path, _hdul(form, header, result))
                writes.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
                start = time.perf_counter()
                with fits.open(path, memmap=False) as hdul:
                    index = products.cal_image_hdu(hdul)
                    data, error, mask = (np.array(hdul[index].data), np.array(hdul["ERR"].data),
                                         np.array(hdul["MASK"].data))
                reads.append(time.perf_counter() - start)
            table = aperture_fidelity(data, error, mask, scene.truth_e, stars["x"], stars["y"], scene.sky_e)
            added = float(np.std((data - result.data)[clean]))
            err_change = (error - result.error)[clean] / result.error[clean]
            unpacked = Path(tmp) / f"unpacked_{number}.fits"
            rows.append({
                "form": form.label,
                "bytes": path.stat().st_size,
                "bytes_per_raw_byte": path.stat().st_size / raw_bytes,
                "write_s": statistics.median(writes),
                "write_cpu_s": statistics.median(cpus),
                "write_cpu_s_per_4096": statistics.median(cpus) * to_4096,
                "write_wall_s_per_4096": statistics.median(writes) * to_4096,
                "read_s": statistics.median(reads),
                "added_noise_rel_sky": added / sky_noise,
                "err_rms_rel_change": float(np.std(err_change)),
                "err_max_rel_change": float(np.max(np.abs(err_change))),
                "mask_identical": bool(np.array_equal(mask, result.mask)),
                "bright_flux_change": float(np.median((table["delta"] - reference["delta"])[bright]
                                                      / reference["true"][bright])),
                "bright_flux_max_change": float(np.max(np.abs(table["delta"] - reference["delta"])[bright]
                                                       / reference["true"][bright])),
                "bright_sigma_change": float(np.median(table["sigma"][bright] / reference["sigma"][bright] - 1)),
                "bright_flux_bias_vs_truth": float(np.median(table["delta"][bright] / table["true"][bright])),
                "z_std": float(np.std(table["z"][~table["flagged"]])),
                "fitsverify_ok": _tool_ok(["fitsverify", "-q", str(path)]),
                "funpack_ok": (None if form.output is None
                               else _tool_ok(["funpack", "-O", str(unpacked), str(path)])),
            })
    return {"size": size, "n_stars": len(stars), "n_bright": int(bright.sum()), "sky_noise_e": sky_noise,
            "raw_bytes": raw_bytes, "rows": rows}


def print_table(report: dict[str, Any]) -> None:
    print(f"{report['size']}² frame, {report['n_stars']} stars ({report['n_bright']} bright), sky noise "
          f"{report['sky_noise_e']:.1f} e-")
    print("| form | bytes / raw byte | write CPU (s) per 4096² | write wall (s) per 4096² | read (s) | added noise / sky noise "
          "| ERR change (rms, rel.) | bright-star flux change (median, max) | bright-star sigma change "
          "| z std | fitsverify | funpack |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in report["rows"]:
        print(f"| {row['form']} | {row['bytes_per_raw_byte']:.3f} | {row['write_cpu_s_per_4096']:.2f} | {row['write_wall_s_per_4096']:.2f} | "
              f"{row['read_s']:.2f} | {row['added_noise_rel_sky']:.4f} | {row['err_rms_rel_change']:.2e} | "
              f"{row['bright_flux_change']:+.1e}, {row['bright_flux_max_change']:.1e} | "
              f"{row['bright_sigma_change']:+.1e} | {row['z_std']:.3f} | "
              f"{row['fitsverify_ok']} | {row['funpack_ok']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--levels", type=float, nargs="*", default=[8.0, 32.0])
    parser.add_argument("--tile-rows", type=int, nargs="*", default=[16, 256, 4096])
    parser.add_argument("--err-levels", type=float, nargs="*", default=[16.0, 256.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/compression.json"))
    args = parser.parse_args(argv)
    report = measure(args.size, default_forms(args.levels, args.tile_rows, args.err_levels), args.repeats)
    print_table(report)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
