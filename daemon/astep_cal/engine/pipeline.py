"""One night through the stages: inventory -> masters -> calibrate each frame -> solve each frame.

This is the imperative shell around the science functions: it takes the inventory, plans the frames to
do (``rules``), has the masters made or read back (``night_masters``), runs each frame's steps
(``frame_steps``, inside the stage runner of ``stages``), records the results in the ledger, and writes
the nightly summary. A failing frame is recorded in the ledger with its reason and the night goes on.

Astrometry of frame N runs in a worker thread (solve-field is a separate process) while frame N+1 is
being calibrated, so both cores are busy. Only the calling thread touches the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astep_cal.engine import photometry
from astep_cal.engine.frame_steps import calibrate_entry, log_solve, record_solve, solve_frame
from astep_cal.engine.masters_cache import MastersCache
from astep_cal.engine.night_health import night_health
from astep_cal.engine.night_masters import Masters, ensure_masters
from astep_cal.engine.rules import needs_calibration, needs_solve, night_has_work
from astep_cal.engine.solve_budget import NightSolving
from astep_cal.engine.solve_process import terminate_running_solves
from astep_cal.engine.stages import PHOTOMETRY_STEP, SUMMARY_STEP, StepSkipped, run_stage
from astep_cal.formats import names, summary
from astep_cal.formats.cameras import discover_units
from astep_cal.formats.names import cal_dir, masters_dir
from astep_cal.formats.raw_night import (
    NightInventory,
    RawFrame,
    make_output_dirs,
    problem_record,
    raw_listing,
    take_inventory,
)
from astep_cal.state import entries
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import Settings
from astep_cal.support.faults import checkpoint
from astep_cal.support.logs import get_logger
from astep_cal.support.storage import StorageUnavailable, ensure_root, remove_stale_temporaries, root_present

ProgressCallback = Callable[[str, int, int], None]  # (night, frames finished, frames to do)


def record_inventory(night: dict[str, Any], inventory: NightInventory, listing: str, root: Path, log: Any) -> None:
    """Problems, notes and counts of the inventory into the night's record (``once``, the daemon and
    ``reprocess`` alike). A problem is logged only when new: a bad file is reported once per version,
    however often the night is looked at; notes only when the raw files changed."""
    known = night.get("problems", [])
    problems = [problem_record(p, root) for p in inventory.problems]
    for problem, record in zip(inventory.problems, problems):
        if record not in known:
            log.warning(problem.event, path=str(problem.path), error=problem.reason)
    if night.get("listing") != listing:
        for note in inventory.notes:
            log.info(note.event, path=str(note.path), reason=note.reason)
    problems += [p for p in entries.masters_record(night).get("problems", []) if p not in problems]
    night["problems"] = problems
    night["listing"] = listing
    night.pop(entries.STUCK, None)  # looked at whole: whatever kept the night from being read is gone
    night["inventory"] = {"science": len(inventory.science), "darks": len(inventory.darks),
                          "biases": len(inventory.biases), "flats": len(inventory.flats)}


# --- a night: the steps every front-end shares ------------------------------------------------------

FrameRule = Callable[[dict[str, Any], RawFrame, Path, Settings], bool]  # does this frame need calibrating?


def open_night(root: Path, date: str, ledger: Ledger, force: bool) -> tuple[NightInventory, str]:
    """Start a night: forget it when forced, take the listing then the inventory (a file arriving in
    between shows as a changed listing next time), sweep temporaries left by a crash."""
    if force:
        ledger.forget_night(date)
    listing = raw_listing(root, date)
    inventory = take_inventory(root, date)
    checkpoint("stage:inventory_taken")
    remove_stale_temporaries(inventory.cal_dir)
    remove_stale_temporaries(masters_dir(root, date))
    return inventory, listing


def frames_to_do(inventory: NightInventory, ledger: Ledger, settings: Settings,
                 recalibrate: FrameRule = needs_calibration, deferred: bool = False) -> list[tuple[RawFrame, bool]]:
    """The night's science frames that need work, in name order, each with whether it is calibrated
    (else only solved). ``reprocess`` passes its own rule (it also redoes other versions' frames);
    ``deferred``: solves deferred by a night's budget are work too."""
    todo = []
    for frame in sorted(inventory.science, key=lambda f: f.name):
        entry = ledger.frame(inventory.date, frame.name)
        calibrate = recalibrate(entry, frame, inventory.cal_dir / names.cal_name(frame.name), settings)
        if calibrate or needs_solve(entry, settings, deferred):
            todo.append((frame, calibrate))
    return todo


def close_night(root: Path, inventory: NightInventory, listing: str, ledger: Ledger, settings: Settings,
                result: "NightResult", log: Any, summarise: bool = True, defer: bool = False) -> bool:
    """End a night: its inventory recorded, the ledger saved, ``night_done`` logged, the light curves,
    health and nightly summary remade (when frames were processed, the summary is missing, or a deferred
    close is pending), the night dropped from memory.

    ``defer`` (the daemon, fed frame by frame): when frames were processed, only the health and
    summary.json are remade; the light curves (which read every catalogue of the night again) and the
    summary's PNG are left for :func:`finish_night_close`, once frames stop arriving. The night's record
    says ``close_pending`` until then, so a restart finishes it. Returns whether it was deferred."""
    date = inventory.date
    night = ledger.night(date)  # asked for now: what is changed now is saved now
    record_inventory(night, inventory, listing, root, log)
    pending = night.get(entries.CLOSE_PENDING) == "pending"
    remake = summarise and (result.to_do or pending or not summary.summary_path(inventory.cal_dir).is_file())
    deferred = remake and defer and result.to_do > 0
    if remake:  # new frames (late ones too): the light curves are made again, the health, then the summary
        if deferred:
            night[entries.CLOSE_PENDING] = "pending"  # saved before summary.json is written
        else:
            write_night_photometry(root, date, night, settings, log)
        night_health(root, inventory, night, ledger, settings, log)
    ledger.save()
    if result.to_do:
        log.info("night_done", **{k: v for k, v in vars(result).items() if k != "date"})
    if remake:
        write_night_summary(root, date, night, settings, log, png=not deferred, refresh_png=pending)
        if deferred:
            log.info("night_close_deferred", night=date)
        elif pending:
            night.pop(entries.CLOSE_PENDING, None)  # done (or its failures logged): not pending any more
            ledger.save()
    ledger.release(date)
    return deferred


def finish_night_close(root: Path, date: str, ledger: Ledger, settings: Settings, log: Any) -> bool:
    """The light curves and summary PNG a daemon deferred (:func:`close_night`), once the night's frames
    stop arriving: the same products as a close that was not deferred. True when there was one to finish."""
    night = ledger.night(date)
    pending = night.get(entries.CLOSE_PENDING) == "pending"
    if pending:
        log = log.bind(night=date)  # its events name the night, as an immediate close's do
        write_night_photometry(root, date, night, settings, log)
        write_night_summary(root, date, night, settings, log, refresh_png=True)
        night.pop(entries.CLOSE_PENDING, None)
        ledger.save()
    ledger.release(date)
    return pending


def write_night_summary(root: Path, date: str, night: dict[str, Any], settings: Settings, log: Any,
                        png: bool = True, refresh_png: bool = False) -> None:
    """summary.json + summary.png for the night (``png=False``: the JSON alone; ``refresh_png``: the PNG
    drawn even when the JSON is unchanged), through the stage runner: a failure is logged
    (``summary_failed``), never raised (the night is done); storage trouble goes up like any step's."""
    if not night.get("frames"):
        return
    with run_stage("summary", log, SUMMARY_STEP, root=root) as step:
        make_output_dirs(root, date)  # refuses a _CAL directory that links out of the root
        written = summary.write_summary(root, date, night, settings, png=png, refresh_png=refresh_png)
        if written is None:
            raise StepSkipped("nothing to summarise")
        step.update(path=str(written.json_path.relative_to(root)), json_kb=written.json_kb, png_kb=written.png_kb)


def write_night_photometry(root: Path, date: str, night: dict[str, Any], settings: Settings, log: Any) -> None:
    """The light curve of every target (configured, or named by the frames) from the night's catalogues,
    written beside the summary and recorded in ``night["photometry"]`` (summary.json shows it), through the
    stage runner: a failure is logged (``photometry_failed``) and recorded, the night is done all the same."""
    wanted = settings.photometry
    if not wanted.enabled or not night.get("frames") or not (
            wanted.targets or (wanted.frame_targets and _frames_name_a_target(night))):
        return
    with run_stage("photometry", log, PHOTOMETRY_STEP, root=root) as step:
        make_output_dirs(root, date)
        step.update(photometry.night_light_curves(cal_dir(root, date), date, night, settings, log))
    night["photometry"] = step


def _frames_name_a_target(night: dict[str, Any]) -> bool:
    """Whether a frame's header named a science target (its calibration record says which)."""
    return any(entries.calibration(entry).get("target") for entry in night.get("frames", {}).values())


# --- a night in this process (``once``, the daemon) ----------------------------------------------

def _abandon(futures: list[Future]) -> None:
    """Solves not to be waited for (a stop, an error): those queued cancelled, the running one ended."""
    for future in futures:
        future.cancel()
    terminate_running_solves(grace_s=1.0)


@dataclass
class NightResult:
    date: str
    to_do: int = 0
    calibrated: int = 0
    solved: int = 0
    failed: int = 0
    blocked: int = 0
    deferred: int = 0


class NightRun:
    """Processes one night; holds what is shared between its frames for the duration of the run."""

    def __init__(self, root: Path, date: str, settings: Settings, ledger: Ledger, force: bool,
                 progress: ProgressCallback | None = None, should_stop: Callable[[], bool] = lambda: False,
                 retry_deferred: bool = False, defer_close: bool = False, masters_cache: MastersCache | None = None):
        self.root, self.date, self.settings, self.ledger = root, date, settings, ledger
        self.force, self.progress, self.should_stop = force, progress, should_stop
        self.retry_deferred = retry_deferred  # solves deferred by an earlier pass's budget are work too
        self.defer_close = defer_close  # the daemon: light curves and summary PNG once frames stop arriving
        self.close_pending = False  # the night's close was deferred (finish_night_close finishes it)
        self.masters_cache = masters_cache  # the daemon's: the night's masters kept between its runs
        self.solving = NightSolving(settings.astrometry.night_budget_s)
        self.log = get_logger(night=date)
        self.result = NightResult(date)
        self.inventory: NightInventory | None = None  # taken when the run starts
        self.masters: Masters | None = None
        self._masters_error: Exception | None = None

    def run(self) -> NightResult:
        """Process the night; raises :class:`StorageUnavailable` (nothing recorded) when the data root
        is full or gone, so the caller can wait and run the night again."""
        if not root_present(self.root):
            raise StorageUnavailable(f"the data root {self.root} is not there (unmounted?)")
        try:
            return self._run()
        except OSError as error:
            ensure_root(self.root, error)
            raise

    def _run(self) -> NightResult:
        self.inventory, listing = open_night(self.root, self.date, self.ledger, self.force)
        frames = [frame for frame, _ in frames_to_do(self.inventory, self.ledger, self.settings,
                                                     deferred=self.retry_deferred)]
        self.result.to_do = len(frames)
        if frames:
            self.log.info("night_started", frames=len(frames), science=len(self.inventory.science))
            self._process(frames)
        self.close_pending = close_night(self.root, self.inventory, listing, self.ledger, self.settings, self.result,
                                       self.log, summarise=not self.should_stop(), defer=self.defer_close)
        return self.result

    def _ensure_masters(self) -> Masters:
        if self.masters is not None:
            return self.masters
        if self._masters_error is not None:
            raise self._masters_error  # tried once this run already: don't rebuild for every frame
        night = self.ledger.night(self.date)
        cache = self.masters_cache
        if cache is not None and (kept := cache.get(self.root, self.date, entries.masters_record(night))):
            self.masters = kept
            return kept
        try:
            self.masters = ensure_masters(self.root, self.inventory, self.settings, entries.masters_record(night),
                                          self.log)
        except StorageUnavailable:
            raise  # not the night's fault: nothing cached, built again when the storage is back
        except Exception as error:  # logged and recorded by the stage runner; each frame records it
            self._masters_error = error
            raise
        checkpoint("stage:masters_built")
        night["masters"] = self.masters.record
        self.ledger.save()
        if cache is not None:
            cache.keep(self.root, self.date, self.masters)
        return self.masters

    def _process(self, frames: list[RawFrame]) -> None:
        pending: list[tuple[str, Future]] = []
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="solve") as solver:
            try:
                for index, frame in enumerate(frames, start=1):
                    if self.should_stop():
                        self.log.info("night_interrupted", remaining=len(frames) - index + 1)
                        break
                    self._calibrate(frame)
                    if self.result.calibrated:  # a pass that calibrates: its failed solving is paced (solve_budget)
                        self.solving.pace_from(started, self.settings.astrometry.wait_fraction)
                    entry = self.ledger.frame(self.date, frame.name)
                    if needs_solve(entry, self.settings, self.retry_deferred):
                        cal_path = self.inventory.cal_dir / names.cal_name(frame.name)
                        tries = entries.solve_tries(entry) + 1
                        pending.append((frame.name, solver.submit(solve_frame, cal_path, self.settings, tries,
                                                                  self.solving)))
                    pending = self._collect(pending, wait=False)
                    if self.progress:
                        self.progress(self.date, index, len(frames))
                if self.result.calibrated:  # the solves left may hold the night a fraction of its calibration
                    self.solving.close_after(time.monotonic() - started, self.settings.astrometry)
                self._wait_for_solves([f for _, f in pending], end_with_the_wait=bool(self.result.calibrated))
            except BaseException:  # storage trouble, a crash: the queued solves are not waited for (each could
                _abandon([f for _, f in pending])  # take its frame budget before the error reaches the caller)
                raise
            self._collect(pending, wait=True)
        if self.result.deferred:
            self.log.warning("solve_deferred", frames=self.result.deferred, failed_s=round(self.solving.failed_s, 1),
                             night_budget_s=self.settings.astrometry.night_budget_s)

    def _wait_for_solves(self, futures: list[Future], end_with_the_wait: bool) -> None:
        """Wait for the solves still queued or running.

        ``end_with_the_wait`` (a pass that calibrated): only until the end of the night's wait for solves
        (``solve_budget``); the solves still running then are stopped — one started before the wait was set
        has its whole frame budget, which would hold the night past its wait (those not started yet are
        deferred by ``solving.spent``). A pass of deferred solves calibrates nothing, queues every solve at
        once and has no such wait. Either way a stop cancels those not started and ends the running one:
        otherwise a shutdown waited for all of them (up to ``night_budget_s``), past systemd's stop timeout.
        """
        while wait_futures(futures, timeout=0.2).not_done:
            if self.should_stop():
                _abandon(futures)
            elif end_with_the_wait and self.solving.over():
                self.solving.cut_off()
                terminate_running_solves(grace_s=1.0)  # again each turn: a run may start between two kills

    def _calibrate(self, frame: RawFrame) -> None:
        entry = self.ledger.frame(self.date, frame.name)
        cal_path = self.inventory.cal_dir / names.cal_name(frame.name)
        if not needs_calibration(entry, frame, cal_path, self.settings):
            return
        log = self.log.bind(frame=frame.name)
        status = calibrate_entry(frame, self._ensure_masters, self.settings, cal_path, entry, log, self.root)
        if status == "ok":
            self.result.calibrated += 1
        elif status == "blocked":
            self.result.blocked += 1
        else:
            self.result.failed += 1
        self.ledger.save(lazy_index=True)

    def _collect(self, pending: list[tuple[str, Future]], wait: bool) -> list[tuple[str, Future]]:
        """Record finished solves in the ledger (from this thread only); return those still running."""
        still = []
        for name, future in pending:
            if not wait and not future.done():
                still.append((name, future))
                continue
            self._record_solve(name, future)
        return still

    def _record_solve(self, name: str, future: Future) -> None:
        if future.cancelled():
            return  # never started (shutdown): the frame stays pending
        record = future.result()  # only StorageUnavailable is raised: it stops the night, nothing recorded
        if record["status"] != "solved" and self.should_stop():
            return  # ended by a shutdown, not a failure: stays pending, no try counted
        record_solve(self.ledger.frame(self.date, name), record, self.inventory.cal_dir / names.cal_name(name))
        if record["status"] == "deferred":
            self.result.deferred += 1  # logged once for the night (solve_deferred), saved with the next change
            return
        if record["status"] == "solved":
            self.result.solved += 1
        else:
            self.result.failed += 1
        log_solve(self.log.bind(frame=name), record)
        self.ledger.save(lazy_index=True)


def process_root(root: Path, settings: Settings, ledger: Ledger, *, nights: list[str] | None = None,
                 force: bool = False, progress: ProgressCallback | None = None) -> list[NightResult]:
    """Process every night under ``root`` (or only ``nights``: night keys, or dates for all their cameras),
    oldest first, each camera of a night as its own unit (``formats/cameras``). Solves an earlier run deferred
    (a night's budget of failed solving spent) are tried again, under this run's budget.

    A night with nothing to do (:func:`night_has_work`) is not opened: a run over a finished archive
    costs a listing and a stat per file, and writes nothing.
    """
    log = get_logger()
    found, problems = discover_units(root, settings.cameras)
    for problem in problems:
        log.warning(problem.event, path=str(problem.path), error=problem.reason)
    ledger.root_problems = [{"path": p.path.name, "event": p.event, "reason": p.reason} for p in problems]
    selected = [d for d in found if nights is None or d in nights or names.unit_date(d) in nights]
    results = [NightRun(root, date, settings, ledger, force, progress, retry_deferred=True).run() for date in selected
               if force or night_has_work(root, date, ledger, settings, retry_blocked=True, new_settings_count=True,
                                          deferred=True)]
    ledger.save()
    return results
