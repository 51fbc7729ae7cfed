"""A short ``make fuzz`` run: mutated inputs of every kind, none may give a traceback or a hang, and
every mutated raw file is recorded exactly once (calibrated, failed or a problem)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_a_short_fuzz_run_is_clean(tmp_path):
    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, "-m", "astep_cal.devtools.fuzz", "--count", "120", "--seed", "7",
                           "--out", str(out), "--work", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    results = json.loads(out.read_text())
    assert results["inputs"] == 120
    assert (results["tracebacks"], results["hangs"], results["unaccounted"], results["later_night_stalls"]) == \
        (0, 0, 0, 0), \
        json.dumps({k: v["findings"] for k, v in results["kinds"].items()}, indent=1)
    assert done.returncode == 0
    assert set(results["kinds"]) == {"fits", "ledger", "summary", "config"}
    assert all(kind["inputs"] == 30 for kind in results["kinds"].values())
    assert results["peak_rss_mb"]["once"] < 2.0 * 1024  # mem_limit_gb


def test_a_later_night_not_calibrated_in_time_is_counted_as_a_stall(tmp_path):
    """The stall counter itself: 0 on a processed root, 1 when the later night has no CAL file or is late."""
    import shutil
    import time

    from astep_cal.devtools import fuzz

    base = fuzz.make_base(tmp_path)
    tally = fuzz.Tally()
    fuzz._check_later_night(base, time.time() - 60, {}, tally)
    assert tally.later_stalls == 0, tally.findings
    fuzz._check_later_night(base, time.time() - 60 - fuzz.LATER_BOUND_S - 10, {}, tally)  # calibrated too late
    assert tally.later_stalls == 1
    shutil.rmtree(base / fuzz.LATER / f"{fuzz.LATER}-CAMS_CAL")
    (base / ".astep-cal" / "nights" / f"{fuzz.LATER}.json").unlink()
    fuzz._check_later_night(base, time.time() - 60, {}, tally)
    assert tally.later_stalls == 2
