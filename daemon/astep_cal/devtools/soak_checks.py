"""The soak run's end-of-winter checks (``make soak``): every check against the files, the ledger,
the logs and the memory/descriptor samples, as one table. The run itself is :mod:`soak`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astep_cal.devtools.harness import tree_digest
from astep_cal.devtools.soak_plan import MIN_NIGHTS, N_SCIENCE, lender
from astep_cal.formats import keywords as kw
from astep_cal.formats.names import cal_dir, cal_name
from astep_cal.formats.products import read_cal_header
from astep_cal.state import entries

if TYPE_CHECKING:
    from astep_cal.devtools.soak import Soak

RSS_GROWTH_MB = 30.0  # allowed growth over one process lifetime, last night against first
FD_GROWTH = 5
WARM_UP_NIGHTS = 3  # a fresh process settles over its first nights (imports, caches, allocator pools)
SLOPE_MIN_NIGHTS = 8  # nights after the warm-up needed to measure a slope (the full run has ~20)
SLOPE_MB_PER_NIGHT = 1.0  # RSS growth per night allowed once warm (see lifetime_trends)



def _without_pointing(solve: dict) -> bool:
    """A solve that used no header pointing: blind, or around an earlier solution of the same night."""
    return not solve.get("hinted") or solve.get("hint") == "earlier solution"

def lifetime_trends(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resource samples (one per night: ``pid``, ``night``, ``rss_mb``, ``fds``) grouped by process
    lifetime: a restart resets memory and descriptors, so only samples of the same process compare.
    Longest lifetime first.

    Two questions: has the process grown (last night against first), and does it keep growing once
    warm? A fresh process gains ~10-25 MB over its first nights (lazy imports, matplotlib's first
    figure, allocator pools) and then stays flat; a leak shows as a steady slope after that, which a
    long lifetime measures more sharply than first-vs-last. Measured here (30-night runs, 22-night
    lifetime, 512² frames): 1.27 MB a night with the astroscrappy leak, 1.19 without it but with the
    worker's freed heap kept by glibc, 0.29-0.63 in four runs with both fixed (samples scatter by
    ±6 MB from night to night: the fit's own noise is ~0.2 MB a night), hence the 1.0 bound.
    """
    lifetimes: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        lifetimes.setdefault(sample["pid"], []).append(sample)
    trends = []
    for pid, runs in lifetimes.items():
        first, last = runs[0], runs[-1]
        warm = runs[WARM_UP_NIGHTS - 1:]
        slope = (float(np.polyfit(range(len(warm)), [r["rss_mb"] for r in warm], 1)[0])
                 if len(warm) >= SLOPE_MIN_NIGHTS else None)
        checks = {"rss_ok": last["rss_mb"] - first["rss_mb"] <= RSS_GROWTH_MB,
                  "fds_ok": last["fds"] - first["fds"] <= FD_GROWTH,
                  "slope_ok": slope is None or slope <= SLOPE_MB_PER_NIGHT}
        trends.append({"pid": pid, "nights": len(runs), "first_night": first["night"], "last_night": last["night"],
                       "rss_first_mb": first["rss_mb"], "rss_last_mb": last["rss_mb"],
                       "rss_max_mb": max(r["rss_mb"] for r in runs), "fds_first": first["fds"], "fds_last": last["fds"],
                       "warm_slope_mb_per_night": None if slope is None else round(slope, 3),
                       **checks, "ok": all(checks.values())})
    return sorted(trends, key=lambda t: -t["nights"])


@dataclass
class Check:
    """One row of the summary table."""

    name: str
    value: Any
    expected: Any
    ok: bool


def render(checks: list[Check]) -> str:
    """The summary table: one line per check, its value, what was expected, and PASS/FAIL."""
    rows = [("check", "value", "expected", "")] + [(c.name, str(c.value), str(c.expected), "PASS" if c.ok else "FAIL")
                                                   for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


# --- the scene: sources, storage, solver -----------------------------------------------------------

def verify(soak: Soak, source: Path, expected: dict[str, dict[str, list[str]]], crash_log: Path,
           stop: dict[str, Any]) -> list[Check]:
    """Every end-of-winter check, from the files, the ledger, the logs and the samples."""
    root, plans = soak.storage.root, soak.plans
    ledger = soak.ledger()["nights"]
    events = soak.events()
    n_valid = sum(len(v["science"]) for v in expected.values())
    cal_files, solved_headers, mismatched, orphans, missing = 0, 0, [], [], []
    for date, lists in expected.items():
        frames = ledger.get(date, {}).get("frames", {})
        ok_outputs = {cal_name(n): e for n, e in frames.items() if entries.calibration_status(e) == "ok"}
        directory = cal_dir(root, date)
        on_disk = {p.name for p in directory.glob("*_CAL.fits")} if directory.is_dir() else set()
        orphans += sorted(on_disk - set(ok_outputs))
        missing += sorted(set(ok_outputs) - on_disk)
        for name in sorted(on_disk & set(ok_outputs)):
            header_solved = read_cal_header(directory / name).get(kw.WCS_STATUS.name) == "solved"
            ledger_solved = entries.solve_status(ok_outputs[name]) == "solved"
            cal_files += 1
            solved_headers += header_solved
            if header_solved != ledger_solved:
                mismatched.append(name)
    expected_cal = {cal_name(n) for lists in expected.values() for n in lists["science"]}
    found_cal = {p.name for date in expected for p in cal_dir(root, date).glob("*_CAL.fits")}
    lost = sorted(expected_cal - found_cal)

    raw_same = raw_total = 0
    for plan in plans:
        for sub in (f"{plan.date}-CAMS", f"{plan.date}-CAMS_SKYFLAT"):
            if (source / plan.date / sub).is_dir():
                want, have = tree_digest(source / plan.date / sub), tree_digest(root / plan.date / sub)
                raw_total += len(want)
                raw_same += sum(1 for k, v in want.items() if have.get(k) == v) if set(want) == set(have) else 0
    temporaries = [str(p) for base in (root, soak.state) for p in base.rglob("*") if ".astep-tmp-" in p.name]

    bad_logged = {}
    for lists in expected.values():
        for name, event in lists["bad"].items():
            seen = [e["event"] for e in events if Path(str(e.get("path", ""))).name == name]
            bad_logged[name] = seen
    soak.injected["bad_files_logged"] = bad_logged
    bad_ok = all(seen == [expected[name[:10]]["bad"][name]] for name, seen in bad_logged.items())

    status = subprocess.run([sys.executable, "-m", "astep_cal", "status", str(root), "--json", "--config",
                             str(soak.daemon.config_path)], capture_output=True, text=True, timeout=120)
    rows = json.loads(status.stdout)["nights"] if status.stdout.strip().startswith("{") else []
    needing_operator = [r["night"] for r in rows if r["state"] != "done"]

    borrowed = [(p.date, (entries.masters_record(ledger.get(p.date, {})).get("flat") or {}).get("night"), lender(plans, p))
                for p in plans if not p.flats]
    blind = [entries.solve(e) for p in plans if not p.pointing for e in ledger.get(p.date, {}).get("frames", {}).values()]
    crashes = crash_log.read_text().split() if crash_log.exists() else []
    trends = lifetime_trends(soak.samples)
    longest = trends[0] if trends else {}
    calibration_failures = [e for e in events if e["event"] == "frame_failed" and e.get("stage") != "astrometry"]
    sighups = soak.injected.get("sighup", 0)
    reloads = soak.count("config_reloaded") + soak.count("config_reload_failed")
    unmount = soak.injected.get("unmount", {})
    kill = soak.injected.get("sigkill", {})
    return [
        Check("nights", len(plans), f">= {MIN_NIGHTS}", len(plans) >= MIN_NIGHTS),
        Check("valid frames calibrated (CAL file + ok entry)", cal_files, n_valid, cal_files == n_valid),
        Check("valid frames solved (ASTCWCS=solved)", solved_headers, n_valid, solved_headers == n_valid),
        Check("frames lost", len(lost), 0, not lost),
        Check("calibration failures", len(calibration_failures), 0, not calibration_failures),
        Check("nights needing an operator (status not done)", len(needing_operator), 0,
              bool(rows) and not needing_operator),
        Check("manual steps taken", 0, 0, True),
        Check("raw files sha256-identical to the source", f"{raw_same}/{raw_total}", f"{raw_total}/{raw_total}",
              raw_same == raw_total > 0),
        Check("temporary files left (.astep-tmp-)", len(temporaries), 0, not temporaries),
        Check("CAL files without an ok ledger entry", len(orphans), 0, not orphans),
        Check("ok ledger entries without a CAL file", len(missing), 0, not missing),
        Check("ASTCWCS disagreeing with the ledger", len(mismatched), 0, not mismatched),
        Check("bad files logged exactly once", sum(len(s) == 1 for s in bad_logged.values()), len(bad_logged),
              bad_ok and bool(bad_logged)),
        Check("nights without sky flats, borrowing the right flat", sum(b[1] == b[2] for b in borrowed), len(borrowed),
              bool(borrowed) and all(b[1] == b[2] is not None for b in borrowed)),
        # No pointing keywords: a blind solve first, then the night's own solution as the hint (solve_budget),
        # never a pointing from the header.
        Check("frames solved without pointing keywords (blind, then the night's solution)",
              sum(s.get("status") == "solved" and _without_pointing(s) for s in blind), N_SCIENCE,
              len(blind) == N_SCIENCE and all(s.get("status") == "solved" and _without_pointing(s) for s in blind)
              and any(not s.get("hinted") for s in blind)),
        Check("solve-field crashes injected / runs", f"{crashes.count('crash')}/{len(crashes)}", "> 0 crashes",
              crashes.count("crash") > 0),
        Check("SIGKILL mid-night, restarted", kill.get("frames_calibrated_before_kill", "-"), "killed mid-night",
              kill.get("exit") == -signal.SIGKILL and len(soak.daemons) == 2),
        Check("SIGHUP sent / reloads logged", f"{sighups}/{reloads}", "equal, one bad edit refused",
              sighups > 0 and reloads == sighups and soak.count("config_reload_failed") == 1),
        Check("disk full: storage_unavailable, then resumed", soak.injected.get("disk_full", {}).get("filled_mb", "-"),
              "MB filled, resumed", "disk_full" in soak.injected),
        Check("unmount/remount: missing, returned", f"{soak.count('data_root_missing')}/{soak.count('data_root_returned')}",
              "1/1, nothing written under the mount point",
              soak.count("data_root_missing") == soak.count("data_root_returned") == 1
              and unmount.get("written_under_mount_point") == []),
        Check("worker errors", soak.count("worker_error"), 0, soak.count("worker_error") == 0),
        Check("RSS first -> last night (MB, longest lifetime)",
              f"{longest.get('rss_first_mb')} -> {longest.get('rss_last_mb')} ({longest.get('nights')} nights)",
              f"<= first + {RSS_GROWTH_MB:.0f}", bool(trends) and all(t["rss_ok"] for t in trends)),
        Check("RSS growth once warm (MB/night, least squares)",
              "n/a: too few nights" if longest.get("warm_slope_mb_per_night") is None
              else longest["warm_slope_mb_per_night"],
              f"<= {SLOPE_MB_PER_NIGHT} (over >= {SLOPE_MIN_NIGHTS} nights)", bool(trends) and all(t["slope_ok"] for t in trends)),
        Check("open fds first -> last night", f"{longest.get('fds_first')} -> {longest.get('fds_last')}",
              f"<= first + {FD_GROWTH}", bool(trends) and all(t["fds_ok"] for t in trends)),
        Check("clean stop (SIGTERM): exit code, seconds", f"{stop.get('exit')}, {stop.get('seconds')}", "0, < 20",
              stop.get("exit") == 0 and stop.get("seconds", 99) < 20),
    ]
