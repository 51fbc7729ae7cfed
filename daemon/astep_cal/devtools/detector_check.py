"""The detector check: a synthetic night of a camera unlike the defaults, calibrated by ``once``, judged.

The camera has read noise 20 e- and gain 1.5 e-/ADU and writes no GAIN/RDNOISE cards; the defaults stay
at 9 e- and 2.0 e-/ADU. The night must measure its detector and calibrate with it: the figures printed
are the ones docs/pages/instrument.md quotes and tests/test_detector.py asserts.

    python -m astep_cal.devtools.detector_check OUT_DIR [--size 1024] [--trim 30]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import binary_dilation

from astep_cal.devtools.harness import read_ledger
from astep_cal.devtools.synthetic import SMALL_FIELD, NightSpec, NightTruth, make_night
from astep_cal.formats import products
from astep_cal.science.masters import MaskBit

CAMERA = dict(gain=1.5, read_noise_e=20.0, write_gain_header=False, sky_e_per_s=3.0)


def camera_spec(size: int, **changes: object) -> NightSpec:
    """The check's night: 512² (the tests' small field) or the default 1024² field, dark sky (180 e-)."""
    base = NightSpec(**SMALL_FIELD) if size == 512 else replace(NightSpec(), shape=(size, size))
    return replace(base, n_science=2, **CAMERA, **changes)


def robust_std(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def err_spread(data: np.ndarray, err: np.ndarray, mask: np.ndarray, sky: np.ndarray,
               hits: np.ndarray) -> tuple[float, int]:
    """Robust std of (CAL - truth) / ERR over clean sky pixels (no MASK bit but the border, no injected
    hit, star light under a tenth of the sky's photon noise), and how many pixels."""
    level = float(np.median(sky))
    clean = ((mask & ~np.uint8(MaskBit.BORDER)) == 0) & ~hits & (sky - level < 0.1 * np.sqrt(level))
    z = (data[clean] - sky[clean]) / err[clean]
    return robust_std(z), int(z.size)


def false_cosmics(mask: np.ndarray, sky: np.ndarray, hits: np.ndarray, read_noise_e: float) -> int:
    """Pixels flagged COSMIC at least 2 px from any injected hit and outside stars (star light above
    half the sky's noise, grown by 2 px)."""
    level = float(np.median(sky))
    stars = binary_dilation(sky - level > 0.5 * np.sqrt(level + read_noise_e ** 2), iterations=2)
    return int(np.count_nonzero(((mask & MaskBit.COSMIC) > 0) & ~binary_dilation(hits, iterations=2) & ~stars))


def judge(root: Path, truth: NightTruth) -> list[dict[str, object]]:
    """Per science frame: the noise model in its CAL header and the two figures against the truth."""
    rows = []
    for path in truth.science_files:
        cal = next(root.rglob(path.name.replace(".fits", "_CAL.fits")))
        with fits.open(cal) as hdul:
            image = hdul[products.cal_image_hdu(hdul)]  # a tile-compressed CAL file keeps it in HDU 1
            header, data = image.header, image.data.astype(np.float64)
            err, mask = hdul["ERR"].data.astype(np.float64), hdul["MASK"].data
        sky, hits = truth.sky_e(path.name).astype(np.float64), truth.cosmic_mask(path.name)
        spread, n_pixels = err_spread(data, err, mask, sky, hits)
        false = false_cosmics(mask, sky, hits, truth.spec.read_noise_e)
        rows.append({"frame": path.name, "gain": header.get("ASTCGAIN"), "gain_source": header.get("ASTCGSRC"),
                     "read_noise_e": header.get("ASTCRDN"), "read_noise_source": header.get("ASTCRSRC"),
                     "err_spread": round(spread, 3), "clean_pixels": n_pixels, "false_cosmic_px": false,
                     "false_cosmic_percent": round(100.0 * false / mask.size, 4), "injected_hit_px": int(hits.sum())})
    return rows


def main(argv: list[str] | None = None) -> int:
    from astep_cal.frontends import cli

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--trim", type=int, default=0)
    args = parser.parse_args(argv)
    root = args.out / "data"
    truth = make_night(root, camera_spec(args.size))
    config = args.out / "detector-check.toml"
    config.write_text(f"[calibration]\ntrim = {args.trim}\n[astrometry]\nenabled = false\n")
    start = time.perf_counter()
    code = cli.main(["once", str(root), "--config", str(config)])
    elapsed = time.perf_counter() - start
    detector = read_ledger(root)["nights"][truth.spec.date].get("masters", {}).get("detector", {})
    print(json.dumps({"once_exit": code, "once_s": round(elapsed, 1), "truth": CAMERA, "detector": detector,
                      "frames": judge(root, truth)}, indent=1))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
