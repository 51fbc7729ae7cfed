"""``make soak``: a polar winter compressed into minutes, through the real service.

The daemon must run a whole winter untouched. Unit and fault tests each check one thing on a fresh
process; this run checks what only time shows: that after weeks of nights, with faults along the way,
nothing was lost, nothing needs an operator, and the process has not grown. It drives the real
``astep-cal run`` (a subprocess with its own ``NOTIFY_SOCKET``, :class:`~astep_cal.devtools.harness.DaemonProcess`),
the real ``solve-field`` with the installed Tycho-2 index files, the real inotify observer and real
file systems:

- **the storage** is a real tmpfs of limited size (the "disk"); the data root is a *bind mount* of a
  directory on it, like a network or USB disk that can go away and come back with its content. The
  ledger lives outside the data root (``ledger = ...``), as under systemd;
- **nights arrive file by file** on an accelerated clock (a hidden temporary, then a rename, as rsync
  does; a short sleep between files), the daemon set to settle in seconds instead of minutes;
- **the winter**: small 512² frames of a 1° field (:data:`~astep_cal.devtools.synthetic.SMALL_FIELD`), 3 science,
  2 darks, 2 sky flats and 2 flat darks a night; a run of consecutive nights *without* sky flats (they
  borrow the nearest earlier flat), a night without pointing keywords (blind solve);
- **faults** (:func:`plan_nights` puts each on its own night): a junk ``*_SCIENCE.fits`` and a truncated
  copy among the frames; ``SIGKILL`` mid-night, then a restart (systemd's ``Restart=on-failure``);
  ``SIGHUP`` reloads (one after a bad edit of the config); the disk filling up, then freed; the data
  root unmounted mid-transfer, then mounted again; and all along ``solve-field`` crashing with SIGSEGV
  at random (a wrapper script; the daemon's retries with back-off must end every solve).

At the end every check is printed as one table and written with the measurements to
``bench-results/soak.json``; the exit code is 1 when any check fails. Needs root (mounts).

    python -m astep_cal.devtools.soak --nights 30      # make soak (~5 min here)
    python -m astep_cal.devtools.soak --nights 8       # make soak-short (~1.5 min; .ci/run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from astropy.io import fits

from .. import entries, keywords as kw
from .harness import DaemonProcess, open_fds, parse_events, read_ledger, rss_mb, tree_digest
from ..names import cal_dir, cal_name
from .synthetic import SMALL_FIELD, NightSpec, make_night

MIN_NIGHTS = 8  # every fault on a night of its own, with sky flats before and after the run without
FIRST_NIGHT = dt.date(2026, 6, 1)
N_SCIENCE = 3
CRASH_PERCENT = 25  # chance that one solve-field run dies of SIGSEGV
MAX_TRIES = 8  # 0.25**8: about one valid frame in 65000 would exhaust its tries by bad luck alone
FILE_GAP_S = 0.2  # between two files of a night arriving
RSS_GROWTH_MB = 30.0  # allowed growth over one process lifetime, last night against first
FD_GROWTH = 5
WARM_UP_NIGHTS = 3  # a fresh process settles over its first nights (imports, caches, allocator pools)
SLOPE_MIN_NIGHTS = 8  # nights after the warm-up needed to measure a slope (the full run has ~20)
SLOPE_MB_PER_NIGHT = 1.0  # RSS growth per night allowed once warm (see lifetime_trends)
NIGHT_TIMEOUT_S = 300.0
JUNK_NAME = "23.58.00_SCIENCE.fits"  # after the night's last science frame: the date prefix is added
TRUNCATED_NAME = "23.59.00_SCIENCE.fits"


@dataclass(frozen=True)
class NightPlan:
    """One night of the winter: what it holds and which faults are injected while it arrives."""

    index: int
    date: str
    flats: bool = True
    pointing: bool = True
    faults: tuple[str, ...] = ()


def plan_nights(n: int, first: dt.date = FIRST_NIGHT) -> list[NightPlan]:
    """The winter: ``n`` consecutive nights, faults placed at fixed fractions of the run so that a
    short run meets every one of them too. About 30 % of the run (at least 3 nights) has no sky flats,
    starting after 30 % of it; the first and last nights always have their own."""
    if n < MIN_NIGHTS:
        raise ValueError(f"a soak run needs at least {MIN_NIGHTS} nights (got {n})")
    no_flats = range(round(0.3 * n), round(0.3 * n) + max(3, round(0.3 * n)))
    at: dict[int, list[str]] = {}
    for fault, index in (("junk_file", 1), ("sigkill", round(0.25 * n)), ("truncated_file", round(0.5 * n)),
                         ("disk_full", round(0.6 * n)), ("unmount", round(0.8 * n)), ("blind_solve", n - 1)):
        at.setdefault(index, []).append(fault)
    for index in range(3, n, 7):
        at.setdefault(index, []).append("sighup")
    return [NightPlan(index=i, date=(first + dt.timedelta(days=i)).isoformat(), flats=i not in no_flats,
                      pointing="blind_solve" not in at.get(i, []), faults=tuple(sorted(at.get(i, []))))
            for i in range(n)]


def lender(plans: list[NightPlan], plan: NightPlan) -> str | None:
    """The night whose master flat a night without sky flats must borrow: the nearest earlier one
    with its own flats (``flat_max_age_days`` = 30 covers any run this driver plans)."""
    earlier = [p.date for p in plans if p.index < plan.index and p.flats]
    return earlier[-1] if earlier else None


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

def crash_wrapper(path: Path, solve_field: str, log: Path, percent: int, seed: int) -> Path:
    """A ``solve-field`` that dies of SIGSEGV in ``percent`` % of its runs, else runs the real one.

    The draw is a hash of the run's number (the lines of ``log``, one per run) and the seed: as random
    as a crash, yet the same sequence for the same seed.
    """
    path.write_text(f"""#!/bin/sh
n=$(wc -l < "{log}" 2>/dev/null || echo 0)
draw=$(printf '%s-%s' {seed} "$n" | cksum | cut -d' ' -f1)
if [ $((draw % 100)) -lt {percent} ]; then
    echo crash >> "{log}"
    kill -SEGV $$
fi
echo run >> "{log}"
exec "{solve_field}" "$@"
""")
    path.chmod(0o755)
    return path


def make_sources(plans: list[NightPlan], source: Path, truth: Path, seed: int) -> dict[str, dict[str, list[str]]]:
    """Write every night (and its bad files) once, outside the data root; return per night the valid
    science frames and the bad files by name."""
    rng = np.random.default_rng(seed)
    nights: dict[str, dict[str, list[str]]] = {}
    for plan in plans:
        spec = NightSpec(**SMALL_FIELD, date=plan.date, start_time=f"{plan.date}T20:00:00", seed=seed + plan.index,
                         n_science=N_SCIENCE, n_darks=2, n_flats=2 if plan.flats else 0,
                         n_flat_darks=2 if plan.flats else 0, write_pointing_header=plan.pointing)
        made = make_night(source, spec, truth_dir=truth / plan.date)
        cams = source / plan.date / f"{plan.date}-CAMS"
        bad = {}
        if "junk_file" in plan.faults:
            (cams / f"{plan.date}_{JUNK_NAME}").write_bytes(rng.bytes(20_000))
            bad[f"{plan.date}_{JUNK_NAME}"] = "file_unreadable"
        if "truncated_file" in plan.faults:
            whole = made.science_files[0].read_bytes()
            (cams / f"{plan.date}_{TRUNCATED_NAME}").write_bytes(whole[: len(whole) // 2])
            bad[f"{plan.date}_{TRUNCATED_NAME}"] = "file_truncated"
        nights[plan.date] = {"science": [p.name for p in made.science_files], "bad": bad}
    return nights


def arrival_order(source: Path, date: str) -> list[Path]:
    """A night's raw files in the order the telescope takes them: the names start with the time."""
    files = [p for p in (source / date).rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: (p.name, str(p)))


def deliver(path: Path, source: Path, root: Path) -> None:
    """One file arriving as ``rsync -a`` writes it: a hidden temporary beside it, its source mtime kept,
    then a rename."""
    target = root / path.relative_to(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.soak{os.getpid()}")
    shutil.copy2(path, temporary)  # rsync -a: the camera's mtime kept
    os.replace(temporary, target)


class Storage:
    """The data disk: a real tmpfs of ``size_mb``; the data root is a bind mount of a directory on it,
    so unmounting the root keeps the data (a disk gone and back), and a file beside the root fills
    the same file system."""

    def __init__(self, work: Path, size_mb: int):
        self.disk, self.root = work / "disk", work / "data"
        self.disk.mkdir()
        self.root.mkdir()
        _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "astep-soak", str(self.disk))
        (self.disk / "astep").mkdir()
        self.mount()
        self.filler = self.disk / "filler"

    def mount(self) -> None:
        _run("mount", "--bind", str(self.disk / "astep"), str(self.root))

    def unmount(self) -> None:
        _run("umount", "-l", str(self.root))

    def fill(self, leave_kb: int = 32) -> int:
        """Take all the free space but ``leave_kb``; return the bytes taken."""
        stats = os.statvfs(self.disk)
        size = stats.f_bavail * stats.f_frsize - leave_kb * 1024
        with open(self.filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
        return size

    def free(self) -> None:
        self.filler.unlink()

    def close(self) -> None:
        for mount_point in (self.root, self.disk):
            if os.path.ismount(mount_point):
                subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fd_targets(pid: int) -> list[str]:
    """What a process's descriptors point at (to tell a leak from a one-off, when the count moves)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return targets


def _run(*command: str) -> None:
    subprocess.run(command, check=True)


def daemon_config(ledger: Path, solve_field: Path) -> str:
    """The service's settings on an accelerated clock: seconds where the site uses minutes and hours."""
    return f"""ledger = "{ledger}"
[daemon]
settle_seconds = 2.0
no_flat_wait_s = 6.0
reconcile_interval_s = 3.0
storage_retry_s = 1.0
[calibration]
flat_max_age_days = 30
[astrometry]
solve_field = "{solve_field}"
retry_backoff_s = 0.5
max_tries = {MAX_TRIES}
timeout_s = 120.0
[logging]
format = "json"
"""


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class Soak:
    """The winter in progress: the daemon(s) started, what was injected, what was sampled."""

    work: Path
    plans: list[NightPlan]
    storage: Storage = field(init=False)
    daemons: list[DaemonProcess] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    injected: dict[str, Any] = field(default_factory=dict)
    config: str = ""

    @property
    def daemon(self) -> DaemonProcess:
        return self.daemons[-1]

    @property
    def state(self) -> Path:
        return self.work / "state"

    def events(self) -> list[dict[str, Any]]:
        """Every log event of every daemon process of the run, in order."""
        return [e for d in self.daemons for e in parse_events(d.log_path.read_text())]

    def count(self, name: str) -> int:
        return sum(1 for e in self.events() if e["event"] == name)

    def start_daemon(self) -> None:
        self.daemons.append(DaemonProcess(self.work, self.storage.root, self.config))
        self.daemon.wait_message("READY=1", timeout=120)

    def ledger(self) -> dict[str, Any]:
        try:
            return read_ledger(self.storage.root, self.state)
        except (FileNotFoundError, json.JSONDecodeError):
            return {"nights": {}}

    def frames(self, date: str) -> dict[str, Any]:
        return self.ledger()["nights"].get(date, {}).get("frames", {})

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = NIGHT_TIMEOUT_S) -> Any:
        return self.daemon.wait_for(predicate, timeout, what)

    def wait_event(self, name: str, before: int, what: str, timeout: float = 120) -> None:
        self.wait(lambda: self.count(name) > before, what, timeout)

    # --- the faults --------------------------------------------------------------------------------

    def sighup(self, bad_edit: bool) -> None:
        """``systemctl reload``; with ``bad_edit``, first a config that does not parse (kept out)."""
        if bad_edit:
            good = self.daemon.config_path.read_text()
            self.daemon.config_path.write_text(good + "[daemon\n")
            before = self.count("config_reload_failed")
            self.daemon.process.send_signal(signal.SIGHUP)
            self.wait_event("config_reload_failed", before, "config_reload_failed after a bad edit")
            self.daemon.config_path.write_text(good)
        before = self.count("config_reloaded")
        self.daemon.process.send_signal(signal.SIGHUP)
        self.wait_event("config_reloaded", before, "config_reloaded")
        self.injected["sighup"] = self.injected.get("sighup", 0) + 1 + bad_edit

    def sigkill(self, date: str, total: int) -> None:
        """Kill -9 once the night is under way, then start again as ``Restart=on-failure`` would."""
        self.wait(lambda: any(entries.calibration_status(f) == "ok" for f in self.frames(date).values()),
                  f"a first frame of {date} calibrated")
        self.daemon.process.send_signal(signal.SIGKILL)
        self.daemon.process.wait(30)
        done = sum(entries.calibration_status(f) == "ok" for f in self.frames(date).values())
        self.injected["sigkill"] = {"night": date, "frames_calibrated_before_kill": f"{done}/{total}",
                                    "exit": self.daemon.process.returncode}
        time.sleep(1.0)  # RestartSec, shortened
        self.start_daemon()

    def disk_full(self) -> None:
        """Fill the disk before the night's products can be written; free it once the daemon waits."""
        before, back = self.count("storage_unavailable"), self.count("storage_available")
        taken = self.storage.fill()
        self.wait_event("storage_unavailable", before, "storage_unavailable on a full disk")
        self.daemon.wait_message("STATUS=waiting for storage", timeout=60)
        time.sleep(3.0)  # it waits, alive, and writes nothing
        self.storage.free()
        self.wait_event("storage_available", back, "storage_available after freeing the disk")
        self.injected["disk_full"] = {"filled_mb": round(taken / 2**20, 1)}

    def unmount(self) -> None:
        """The data root unmounted mid-transfer, then mounted again with its content."""
        missing, returned = self.count("data_root_missing"), self.count("data_root_returned")
        self.storage.unmount()
        self.wait_event("data_root_missing", missing, "data_root_missing")
        self.daemon.wait_message("STATUS=waiting for storage", timeout=60)
        time.sleep(3.0)
        written = [str(p) for p in self.storage.root.rglob("*")]  # under the mount point: must stay empty
        self.storage.mount()
        self.wait_event("data_root_returned", returned, "data_root_returned")
        self.injected["unmount"] = {"written_under_mount_point": written}

    # --- the nights --------------------------------------------------------------------------------

    def night(self, plan: NightPlan, source: Path, expected: dict[str, list[str]]) -> None:
        """Deliver one night file by file, with its faults, and wait until the daemon has been through it."""
        if "sighup" in plan.faults:
            self.sighup(bad_edit="sighup" not in self.injected)
        files = arrival_order(source, plan.date)
        for number, path in enumerate(files):
            if "unmount" in plan.faults and number == len(files) // 2:
                self.unmount()
            deliver(path, source, self.storage.root)
            time.sleep(FILE_GAP_S)
        if "disk_full" in plan.faults:
            self.disk_full()
        if "sigkill" in plan.faults:
            self.sigkill(plan.date, len(expected["science"]))
        self.wait(lambda: self.night_seen(plan.date, expected), f"night {plan.date} processed")
        self.wait(self.idle, "the daemon idle")  # comparable samples: no solve-field pipes, no frame in memory
        pid = self.daemon.process.pid
        self.samples.append({"night": plan.date, "pid": pid, "rss_mb": round(rss_mb(pid), 1), "fds": open_fds(pid),
                             "fd_targets": sorted(fd_targets(pid))})

    def idle(self) -> bool:
        statuses = [m for _, m in self.daemon.messages if m.startswith("STATUS=")]
        return bool(statuses) and statuses[-1].startswith("STATUS=idle")

    def night_seen(self, date: str, expected: dict[str, list[str]]) -> bool:
        """Every valid frame calibrated and tried by solve-field, every bad file recorded."""
        night = self.ledger()["nights"].get(date, {})
        frames = night.get("frames", {})
        tried = all(entries.calibration_status(frames.get(name, {})) == "ok"
                    and entries.solve_status(frames[name]) in ("solved", "failed")
                    for name in expected["science"])
        recorded = {Path(p["path"]).name for p in night.get("problems", [])}
        return tried and set(expected["bad"]) <= recorded

    def all_solved(self, expected: dict[str, dict[str, list[str]]]) -> bool:
        nights = self.ledger()["nights"]
        return all(entries.solve_status(nights.get(date, {}).get("frames", {}).get(name, {})) == "solved"
                   for date, lists in expected.items() for name in lists["science"])


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
            header_solved = fits.getheader(directory / name).get(kw.WCS_STATUS.name) == "solved"
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

    status = subprocess.run([sys.executable, "-m", "astep_cal.cli", "status", str(root), "--json", "--config",
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
        Check("blind-solved frames (no pointing keywords)", sum(s.get("status") == "solved" and not s.get("hinted")
                                                                 for s in blind), N_SCIENCE,
              len(blind) == N_SCIENCE and all(s.get("status") == "solved" and not s.get("hinted") for s in blind)),
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


def run(n_nights: int, seed: int, out: Path, keep: bool) -> int:
    if os.geteuid() != 0:
        print("astep-cal soak needs root: the storage is a real tmpfs, bind-mounted and unmounted", file=sys.stderr)
        return 2
    solve_field = shutil.which("solve-field")
    if not solve_field:
        print("astep-cal soak needs solve-field (make system-deps)", file=sys.stderr)
        return 2
    plans = plan_nights(n_nights)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still unmount and stop the daemon
    work = Path(tempfile.mkdtemp(prefix="astep-soak-", dir="/var/tmp"))
    started = time.monotonic()
    source = work / "source"
    expected = make_sources(plans, source, work / "truth", seed)
    generated_s = time.monotonic() - started
    print(f"soak: {n_nights} nights generated in {generated_s:.0f} s under {work}", flush=True)
    crash_log = work / "solve-field-runs.log"
    soak = Soak(work=work, plans=plans)
    soak.state.mkdir()
    soak.config = daemon_config(soak.state / "ledger.json",
                                crash_wrapper(work / "solve-field-crashing", solve_field, crash_log, CRASH_PERCENT, seed))
    soak.storage = Storage(work, size_mb=64 + 16 * n_nights)
    stop: dict[str, Any] = {}
    error = ""
    try:
        soak.start_daemon()
        for plan in plans:
            soak.night(plan, source, expected[plan.date])
            sample = soak.samples[-1]
            print(f"soak: {plan.date} done ({', '.join(plan.faults) or 'no fault'}{'' if plan.flats else ', no flats'})"
                  f"  RSS {sample['rss_mb']} MB, {sample['fds']} fds, {time.monotonic() - started:.0f} s", flush=True)
        soak.wait(lambda: soak.all_solved(expected), "every valid frame solved (retries)", timeout=240)
        stop = {"exit": None, "seconds": round(soak.daemon.stop(timeout=30), 1)}
        stop["exit"] = soak.daemon.process.returncode
    except (AssertionError, OSError, subprocess.CalledProcessError) as failure:
        error = f"{type(failure).__name__}: {failure}"
        print(f"soak: run interrupted: {error}", file=sys.stderr)
    finally:
        checks = verify(soak, source, expected, crash_log, stop) if soak.daemons else []
        for daemon in soak.daemons:
            daemon.close()
        soak.storage.close()
    if error:
        checks.append(Check("run completed", "no", "yes", False))
    table = render(checks)
    elapsed = round(time.monotonic() - started, 1)
    print(f"\nsoak: {n_nights} nights, {elapsed} s (generation {generated_s:.0f} s)\n{table}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "nights": n_nights, "seed": seed, "wall_s": elapsed, "generation_s": round(generated_s, 1), "error": error,
        "ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks], "table": table,
        "plan": [asdict(p) for p in plans], "samples": soak.samples, "lifetimes": lifetime_trends(soak.samples),
        "injected": soak.injected, "work": str(work)}, indent=1, default=str))
    ok = all(c.ok for c in checks)
    print(f"soak: written {out}")
    if keep or not ok:
        print(f"soak: data, ledger and daemon logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m astep_cal.devtools.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=30, help=f"nights of the winter (at least {MIN_NIGHTS})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data, ledger, logs)")
    args = parser.parse_args(argv)
    if args.nights < MIN_NIGHTS:
        parser.error(f"--nights must be at least {MIN_NIGHTS}")
    return run(args.nights, args.seed, args.out, args.keep)


if __name__ == "__main__":
    sys.exit(main())
