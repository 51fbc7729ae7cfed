"""Reprocess the archive on a Dask cluster: ``astep-cal reprocess ROOT``.

When calibration improves, years of nights are redone at home on many machines. The work is the same
as ``astep-cal once`` — the same engine functions from :mod:`pipeline` (``ensure_masters``,
``calibrate_entry``, ``solve_frame``) — spread by Dask distributed instead of one process:

* the **client** (this process) holds the data-root lock, plans each night (inventory, what is not done
  yet), submits one *masters task* per night and one *frame task* per frame, and is the only writer of
  the ledger, from the tasks' results, saved atomically every few seconds and at the end — so an
  interrupted run resumes where it stopped and a frame is never recorded twice;
* **workers** read and write the shared data root (the same path on every node). Tasks get paths and
  small dicts, never pixels: a masters task writes ``_CAL/masters/`` once, frame tasks read them from
  disk (cached per worker process) and write their CAL file atomically, so a worker killed mid-task
  leaves nothing partial and the retried task, starting again from the ledger entry the client sent,
  simply writes the same file. Worker-side functions are module-level and take only picklable values.
"""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from astep_cal import __version__
from astep_cal.engine.frame_steps import calibrate_entry, log_solve, record_solve, solve_frame
from astep_cal.engine.night_masters import Masters, ensure_masters, load_masters
from astep_cal.engine.pipeline import NightResult, close_night, frames_to_do, open_night
from astep_cal.engine.rules import needs_calibration, needs_solve
from astep_cal.formats import names
from astep_cal.formats.cameras import discover_units
from astep_cal.formats.names import cal_dir, masters_dir
from astep_cal.formats.raw_night import NightInventory, RawFrame, take_inventory, valid_date
from astep_cal.science.masters import cpu_count
from astep_cal.state import entries
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import ConfigError, Settings
from astep_cal.support.logs import configure, get_logger
from astep_cal.support.storage import remove_stale_temporaries

TASK_RETRIES = 2  # an exception escaping a task (e.g. the raw file vanished): try again before giving up
SAVE_INTERVAL_S = 5.0  # ledger saves at most this often (and at the end): bounded cost on a large ledger
WORKER_WAIT_S = 120.0  # a scheduler without workers yet (batch jobs still queued): wait this long
MAX_PENDING_FRAMES = 2000  # plan more nights only while fewer frames than this are waiting


class ClusterError(RuntimeError):
    """The Dask cluster cannot be reached or cannot do the work (reported without a traceback)."""


# --- the night range ------------------------------------------------------------------------------

def parse_night_range(text: str | None) -> tuple[str | None, str | None]:
    """``FROM..TO`` (inclusive, either side may be empty) or a single ``YYYY-MM-DD``."""
    if text is None:
        return None, None
    first, separator, last = text.partition("..")
    if not separator:
        last = first
    bounds = (first.strip() or None, last.strip() or None)
    for bound in bounds:
        if bound is not None and not valid_date(bound):
            raise ConfigError(f"--nights {text}: {bound!r} is not a YYYY-MM-DD date (use FROM..TO)")
    if bounds[0] and bounds[1] and bounds[0] > bounds[1]:
        raise ConfigError(f"--nights {text}: {bounds[0]} is after {bounds[1]}")
    return bounds


def select_nights(nights: list[str], first: str | None, last: str | None) -> list[str]:
    days = {d: names.unit_date(d) for d in nights}  # a date's every camera is in its range
    return [d for d in nights if (first is None or days[d] >= first) and (last is None or days[d] <= last)]


# --- worker side ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _configure_worker_logs(log_format: str, level: str) -> None:
    """Once per worker process: the worker's own log lines (master_built, frame_calibrated, ...)."""
    configure(log_format, level)


def worker_version() -> str:
    """Run on every worker at start: all nodes must run the same astep-cal."""
    return __version__


def worker_sees_root(root: str) -> bool:
    """Run on every worker at start: the data root must be mounted at the same path on every node."""
    return os.path.isdir(root)


def masters_task(root: str, date: str, settings: Settings, record: dict[str, Any], *earlier: Any) -> dict[str, Any]:
    """Build (or read back) one night's masters on a worker and write them under ``_CAL/masters/``.

    ``earlier`` are the results of earlier nights' masters tasks this night may borrow a flat from;
    Dask passes them only to make this task wait for them. Returns the ledger record (with the problems
    found while building: frames of another size, unusable flats) and, instead of raising, the error
    that makes the night's frames blocked or failed — exactly what ``once`` records for them.
    """
    _configure_worker_logs(settings.logging.format, settings.logging.level)
    log = get_logger(night=date)
    inventory = take_inventory(Path(root), date)
    try:
        masters = ensure_masters(Path(root), inventory, settings, copy.deepcopy(record), log)
    except Exception as error:
        return {"record": None, "error": error}
    return {"record": masters.record, "error": None}


_masters_cache: dict[str, tuple[str, Masters]] = {}


def _worker_masters(root: Path, date: str, outcome: dict[str, Any] | None) -> Masters:
    """The night's masters read from disk, kept for the next frame of the same night on this worker."""
    if outcome is None:
        raise RuntimeError("masters were not planned for this night")  # a planning bug, never expected
    if outcome["error"] is not None:
        raise outcome["error"]
    key = repr(sorted(outcome["record"].items()))
    cached = _masters_cache.get(date)
    if cached is None or cached[0] != key:
        _masters_cache.clear()  # one night at a time per worker: 4096² masters are ~200 MB
        _masters_cache[date] = (key, load_masters(root, date, outcome["record"]))
    return _masters_cache[date][1]


def frame_task(root: str, date: str, frame: RawFrame, settings: Settings, masters: dict[str, Any] | None,
               entry: dict[str, Any], calibrate: bool) -> dict[str, Any]:
    """Calibrate (when asked) and plate-solve one frame on a worker; return its new ledger entry.

    ``entry`` is the frame's ledger entry as the client planned it; the task works on a copy, so a
    retry after a worker death starts from the same state and produces the same entry. ``masters`` is
    the result of the night's masters task (Dask resolves the dependency).
    """
    _configure_worker_logs(settings.logging.format, settings.logging.level)
    log = get_logger(night=date, frame=frame.name)
    entry = copy.deepcopy(entry)
    root_path = Path(root)
    cal_path = cal_dir(root_path, date) / names.cal_name(frame.name)
    if calibrate:
        calibrate_entry(frame, lambda: _worker_masters(root_path, date, masters), settings, cal_path, entry, log)
    if needs_solve(entry, settings, deferred=True):  # an archive rerun has no night budget: deferred solves too
        record_solve(entry, solve_frame(cal_path, settings, entries.solve_tries(entry) + 1), cal_path)
        log_solve(log, entry["astrometry"], entry.get("health"))
    return entry


# --- client side ----------------------------------------------------------------------------------

def needs_recalibration(entry: dict[str, Any], frame: RawFrame, cal_path: Path, settings: Settings) -> bool:
    """``once``'s rule, and also a frame calibrated by another astep-cal version (the point of reprocessing)."""
    done = entries.calibration(entry)
    outdated = done.get("status") == "ok" and done.get("software") != __version__
    return outdated or needs_calibration(entry, frame, cal_path, settings)


@dataclass
class NightPlan:
    """One night's work as submitted: its futures and what is left to collect."""

    inventory: NightInventory
    result: NightResult
    waiting: set[str] = field(default_factory=set)  # frame names not collected yet
    listing: str = ""  # the raw directories' digest when the inventory was taken


ProgressCallback = Callable[[str, int, int], None]


class Reprocess:
    """One reprocessing run: plan nights, submit tasks, collect results into the ledger.

    Only this object (in the client process) writes the ledger.
    """

    def __init__(self, client: Any, root: Path, settings: Settings, ledger: Ledger, *, force: bool = False,
                 progress: ProgressCallback | None = None, on_result: Callable[[str, str], None] | None = None):
        self.client, self.root, self.settings, self.ledger = client, root, settings, ledger
        self.force, self.progress, self.on_result = force, progress, on_result  # on_result(kind, key): a test hook
        self.log = get_logger()
        self.run_id = uuid.uuid4().hex[:8]  # task keys stay unique on a long-lived shared scheduler
        self.plans: dict[str, NightPlan] = {}
        self.masters_futures: dict[str, Any] = {}
        self.tasks: dict[str, tuple[str, str, bool]] = {}  # task key -> (night, frame name or "", calibrate)
        self.done_frames = self.total_frames = 0
        self._last_save = 0.0
        self._finished, self._closed = set[str](), set[str]()  # nights all collected / closed

    # --- planning and submission

    def run(self, dates: list[str]) -> list[NightResult]:
        from distributed import as_completed

        pending = as_completed()
        try:
            for date in dates:
                for future in self._submit_night(date):
                    pending.add(future)
                while pending.count() >= MAX_PENDING_FRAMES:
                    self._collect(next(pending))
            while not pending.is_empty():
                self._collect(next(pending))
        finally:
            if pending.count():  # interrupted: what was not collected is done again by the next run
                self.client.cancel(list(pending.futures))
            self.ledger.save()
        return [plan.result for plan in self.plans.values()]

    def _submit_night(self, date: str) -> list[Any]:
        inventory, listing = open_night(self.root, date, self.ledger, self.force)
        todo = frames_to_do(inventory, self.ledger, self.settings, recalibrate=needs_recalibration, deferred=True)
        plan = NightPlan(inventory, NightResult(date, to_do=len(todo)), {f.name for f, _ in todo}, listing)
        self.plans[date] = plan
        if not todo:
            self._night_finished(date)
            return []
        self.log.info("night_started", night=date, frames=len(todo), science=len(inventory.science))
        futures = []
        masters = None
        if any(calibrate for _, calibrate in todo):
            masters = self._submit_masters(inventory)
            futures.append(masters)
        for frame, calibrate in todo:
            entry = self.ledger.frame(date, frame.name)
            key = f"frame-{date}-{frame.name}-{self.run_id}"
            self.tasks[key] = (date, frame.name, calibrate)
            futures.append(self.client.submit(frame_task, str(self.root), date, frame, self.settings, masters,
                                              entry, calibrate, key=key, retries=TASK_RETRIES, pure=False))
        self.total_frames += len(todo)
        return futures

    def _submit_masters(self, inventory: NightInventory) -> Any:
        """One task per night; a night without sky flats waits for the earlier nights it may borrow from."""
        date = inventory.date
        record = entries.masters_record(self.ledger.night(date))
        if record.get("software") != __version__:
            record = {}  # masters of another version are rebuilt, like the frames
        earlier = []
        if not inventory.flats:  # still being built: wait for them (those done are on disk already)
            earlier = [future for other, future in self.masters_futures.items() if other < date]
        key = f"masters-{date}-{self.run_id}"
        self.tasks[key] = (date, "", True)
        future = self.client.submit(masters_task, str(self.root), date, self.settings, record, *earlier, key=key,
                                    retries=TASK_RETRIES, pure=False, priority=10)
        self.masters_futures[date] = future
        return future

    # --- collection (the only place the ledger is written)

    def _collect(self, future: Any) -> None:
        date, name, calibrate = self.tasks.pop(future.key)
        error = future.exception() if future.status == "error" else None
        value = None if error is not None else future.result()
        if name:
            self._record_frame(date, name, calibrate, value, error)
        else:
            self._record_masters(date, value, error)
        if self.on_result:
            self.on_result("frame" if name else "masters", future.key)
        self._save(force=False)

    def _record_masters(self, date: str, outcome: dict[str, Any] | None, error: BaseException | None) -> None:
        self.masters_futures.pop(date, None)  # done: later nights find its flat on disk
        if error is not None:  # the frames depending on it fail too, and are recorded then
            self.log.error("masters_failed", night=date, error=f"{type(error).__name__}: {error}")
            return
        assert outcome is not None
        if outcome["record"] is not None:  # its problems (found while building) are merged at the night's end
            self.ledger.night(date)["masters"] = outcome["record"]

    def _record_frame(self, date: str, name: str, calibrate: bool, entry: dict[str, Any] | None,
                      error: BaseException | None) -> None:
        plan = self.plans[date]
        before = self.ledger.frame(date, name)
        if entry is None:  # the task itself failed (e.g. its workers kept dying): recorded, not fatal
            entry = copy.deepcopy(before)
            reason = f"{type(error).__name__}: {error}"
            if calibrate:
                entry["calibrate"] = {"status": "failed", "error": reason}
            else:
                tries = entries.solve_tries(entry) + 1
                entry["astrometry"] = {"status": "failed", "tries": tries, "error": reason}
            self.log.error("frame_failed", night=date, frame=name, stage="task", error=reason)
        self.ledger.night(date)["frames"][name] = entry
        self._count(plan.result, calibrate, before, entry)
        plan.waiting.discard(name)
        self.done_frames += 1
        if self.progress:
            self.progress(f"{len([p for p in self.plans.values() if not p.waiting])}/{len(self.plans)} nights",
                          self.done_frames, self.total_frames)
        if not plan.waiting:
            self._night_finished(date)

    @staticmethod
    def _count(result: NightResult, calibrate: bool, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Count what this run did to the frame, as ``once`` counts it."""
        status = entries.calibration_status(after)
        if calibrate:
            result.calibrated += status == "ok"
            result.blocked += status == "blocked"
            result.failed += status == "failed"
        solved = entries.solve(after)
        if solved and solved != before.get("astrometry"):
            result.solved += solved.get("status") == "solved"
            result.failed += solved.get("status") == "failed"

    def _night_finished(self, date: str) -> None:
        """Close finished nights in date order, as ``once``: a night's health is judged on the earlier ones."""
        self._finished.add(date)
        for other in sorted(set(self.plans) - self._closed):
            if other not in self._finished:
                break
            self._closed.add(other)
            plan = self.plans[other]
            for directory in (plan.inventory.cal_dir, masters_dir(self.root, other)):
                remove_stale_temporaries(directory)  # a worker killed in the middle of a write left one
            close_night(self.root, plan.inventory, plan.listing, self.ledger, self.settings, plan.result,
                        self.log.bind(night=other))
            self._last_save = time.monotonic()

    def _save(self, force: bool) -> None:
        if force or time.monotonic() - self._last_save >= SAVE_INTERVAL_S:
            self.ledger.save()
            self._last_save = time.monotonic()


# --- the cluster ----------------------------------------------------------------------------------

def _dashboard_available() -> bool:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it; without it the cluster runs without one)
    except ImportError:
        return False
    return True


@contextmanager
def open_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client: to ``scheduler`` when given, else to a ``LocalCluster`` on this machine (loopback).

    The local cluster has one single-threaded worker process per core: calibration is CPU-bound Python
    and NumPy, so processes, not threads, give the speed-up. Dask's own log lines are silenced there
    (a Ctrl-C would print its workers' heartbeat tracebacks): astep-cal's events and the ledger tell
    what happened.
    """
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:  # waits up to the Dask setting distributed.comm.timeouts.connect (DASK_... environment)
            client = Client(scheduler, timeout=dask.config.get("distributed.comm.timeouts.connect"))
        except (OSError, TimeoutError, ValueError) as error:
            raise ClusterError(f"cannot connect to the Dask scheduler {scheduler}: {error}") from None
        with client:
            yield client
        return
    n_workers = workers or cpu_count()
    dashboard = "127.0.0.1:0" if _dashboard_available() else None
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=dashboard, silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def check_workers(client: Any, root: Path) -> int:
    """Fail early and clearly when a worker runs another version or does not see the data root."""
    if not client.scheduler_info().get("workers"):
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise ClusterError(f"no worker joined the scheduler within {WORKER_WAIT_S:g} s") from None
    versions = client.run(worker_version)
    wrong = {address: version for address, version in versions.items() if version != __version__}
    if wrong:
        raise ClusterError(f"workers run another astep-cal version than {__version__}: {wrong}")
    blind = [address for address, seen in client.run(worker_sees_root, str(root)).items() if not seen]
    if blind:
        raise ClusterError(f"workers {', '.join(blind)} do not see the data root {root} (same path on every node)")
    return len(versions)


def reprocess_root(client: Any, root: Path, settings: Settings, ledger: Ledger, *, first: str | None = None,
                   last: str | None = None, force: bool = False, progress: ProgressCallback | None = None,
                   on_result: Callable[[str, str], None] | None = None) -> list[NightResult]:
    """Reprocess every night of ``root`` between ``first`` and ``last`` (inclusive), oldest first."""
    log = get_logger()
    found, problems = discover_units(root, settings.cameras)
    for problem in problems:
        log.warning(problem.event, path=str(problem.path), error=problem.reason)
    ledger.root_problems = [{"path": p.path.name, "event": p.event, "reason": p.reason} for p in problems]
    dates = select_nights(found, first, last)
    return Reprocess(client, root, settings, ledger, force=force, progress=progress, on_result=on_result).run(dates)
