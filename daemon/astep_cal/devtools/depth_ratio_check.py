"""The two-colour check: a synthetic ASTEP+ night (``DATE-CAMB`` and ``DATE-CAMR``, each with its own sensor,
noise and sky flats, ASTEP's header keywords) whose target's transit has a depth per camera, processed by
``once`` with ``cameras = ["CAMB", "CAMR"]`` and no ``targets``; the blue/red depth ratio it wrote, judged.
The figures printed are the ones docs/pages/headers-and-targets.md quotes; tests/test_cameras.py runs the
same night (chromatic).

    python -m astep_cal.devtools.depth_ratio_check OUT_DIR [--blue 0.01] [--red 0.01]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from astep_cal.devtools.synthetic import SMALL_FIELD, NightSpec, NightTruth, make_night
from astep_cal.devtools.transit import TransitSpec
from astep_cal.formats import names

DATE = "2026-07-01"
# 512² at 7.2"/px (solves), 14 frames 10 min apart around a 1.3 h transit of a mag-8 field star.
SPEC = dataclasses.replace(NightSpec(**SMALL_FIELD), fwhm_arcsec=30.0, n_science=14, cadence_s=600.0,
                           n_cosmic_rays=4, header_style="astep",
                           transit=TransitSpec(mid_time=f"{DATE}T21:05:00", duration_h=1.3))
CONFIG = 'cameras = ["CAMB", "CAMR"]\n[logging]\nformat = "json"\n'


def make_astep_plus(root: Path, depths: dict[str, float], spec: NightSpec = SPEC) -> dict[str, NightTruth]:
    """One night per camera under ``root`` (truth in ``root/.truth/CAMERA``); ``depths``: camera -> depth."""
    truths = {}
    for index, (camera, depth) in enumerate(depths.items()):
        transit = dataclasses.replace(spec.transit, depth=depth) if spec.transit else None
        camera_spec = dataclasses.replace(spec, camera=camera, seed=spec.seed + 10 * index, sensor_seed=42 + index,
                                          transit=transit)
        truths[camera] = make_night(root, camera_spec, truth_dir=root / ".truth" / camera)
    return truths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--blue", type=float, default=0.01, help="transit depth in CAMB")
    parser.add_argument("--red", type=float, default=0.01, help="transit depth in CAMR")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    make_astep_plus(args.out, {"CAMB": args.blue, "CAMR": args.red})
    config = args.out / "astep_plus.toml"
    config.write_text(CONFIG)
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "astep_cal", "once", str(args.out), "--config", str(config)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        return 1
    ratio = json.loads((names.cal_dir(args.out, f"{DATE}-CAMR") / "depth_ratio_SYN-1.json").read_text())
    blue, red = ratio["blue"], ratio["red"]
    print(json.dumps({"truth": args.blue / args.red, "ratio": ratio["ratio"], "error": ratio["error"],
                      "status": ratio["status"], "blue_depth": blue.get("depth"), "blue_error": blue.get("error"),
                      "red_depth": red.get("depth"), "red_error": red.get("error"),
                      "once_s": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
