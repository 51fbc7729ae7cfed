"""``astep-cal demo``: a synthetic night, processed end to end, judged against its truth.

It shows a newcomer what the service does and how well, in about a minute, with nothing but the
installed package, Astrometry.net and its Tycho-2 index files.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from astep_cal.devtools.evaluate import score_frame
from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.engine.pipeline import process_root
from astep_cal.formats.names import cal_dir, cal_name
from astep_cal.formats.products import read_cal_header
from astep_cal.state.ledger import Ledger, RootLock
from astep_cal.support.config import Settings
from astep_cal.support.logs import configure


def run_demo(directory: Path | None = None) -> int:
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="astep-cal-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    configure("console", "warning")
    spec = NightSpec()
    print(f"Generating a synthetic night ({spec.n_science} science frames of {spec.shape[1]}x{spec.shape[0]}, "
          f"{spec.pixel_scale_arcsec}\"/px, real Tycho-2 stars) in {root} ...")
    truth = make_night(root, spec)
    settings = Settings()
    start = time.perf_counter()
    ledger_path = settings.ledger_path(root)
    with RootLock(ledger_path):
        ledger = Ledger.load(ledger_path)
        results = process_root(root, settings, ledger)
    elapsed = time.perf_counter() - start
    night = results[0]
    print(f"Processed in {elapsed:.1f} s: {night.calibrated} calibrated, {night.solved} solved, "
          f"{night.failed} failed.\n")
    scores = [score_frame(cal_dir(root, spec.date) / cal_name(p.name), truth, p.name) for p in truth.science_files]
    print(f"{'frame':42} {'WCS err px':>10} {'stars':>9} {'flat res':>9} {'CR removed':>11} {'hot masked':>10}")
    for s in scores:
        wcs = f"{s.wcs_error_px:.3f}" if s.wcs_error_px is not None else "unsolved"
        print(f"{s.name:42} {wcs:>10} {s.stars_matched:>4}/{s.stars_in_field:<4} {100 * s.flat_residual:>8.2f}% "
              f"{100 * s.cosmic_removed:>10.1f}% {100 * s.hot_masked:>9.1f}%")
    errors = [s.wcs_error_px for s in scores if s.wcs_error_px is not None]
    if errors:
        print(f"\nMedian WCS error {np.median(errors):.3f} px; cosmic-ray pixels removed "
              f"{100 * np.mean([s.cosmic_removed for s in scores]):.1f}% of {sum(s.cosmic_pixels for s in scores)}.")
    headers = [read_cal_header(cal_dir(root, spec.date) / cal_name(p.name)) for p in truth.science_files]
    fwhm = [h["FWHM"] for h in headers if "FWHM" in h]
    if fwhm:
        print(f"Median FWHM {np.median(fwhm):.2f}\" (injected {spec.fwhm_arcsec:.2f}\"), stars detected per frame "
              f"{', '.join(str(h.get('NSTARS')) for h in headers)}.")
    print(f"\nOutputs:  {cal_dir(root, spec.date)}  (masters in masters/)")
    print(f"Ledger:   {ledger_path}")
    print(f"Truth:    {truth.truth_dir}")
    print(f"Status:   astep-cal status {root}")
    print(f"Report:   astep-cal report {spec.date} {root}   (summary.json, summary.png beside the CAL files)")
    ok = all(s.solved for s in scores) and night.failed == 0
    return 0 if ok else 1
