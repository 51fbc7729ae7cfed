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

from astep_cal.devtools.harness import DaemonProcess, open_fds, parse_events, read_ledger, rss_mb
from astep_cal.devtools.soak_checks import Check, lifetime_trends, render, verify
from astep_cal.devtools.soak_plan import MIN_NIGHTS, N_SCIENCE, NightPlan, plan_nights
from astep_cal.devtools.synthetic import SMALL_FIELD, NightSpec, make_night
from astep_cal.state import entries

CRASH_PERCENT = 25  # chance that one solve-field run dies of SIGSEGV
MAX_TRIES = 8  # 0.25**8: about one valid frame in 65000 would exhaust its tries by bad luck alone
FILE_GAP_S = 0.2  # between two files of a night arriving
NIGHT_TIMEOUT_S = 300.0
JUNK_NAME = "23.58.00_SCIENCE.fits"  # after the night's last science frame: the date prefix is added
TRUNCATED_NAME = "23.59.00_SCIENCE.fits"


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
