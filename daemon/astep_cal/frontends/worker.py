"""The daemon's worker thread: which night to work on next, and working on it.

The only thread that writes the ledger. It takes nights from the file events the observer recorded
(``watcher.NightEvents``) and from reconciles of the data root (a full one at start, on SIGHUP and when
the data root comes back; a cheap one every ``reconcile_interval_s``), waits until a night is complete
(``watcher.night_readiness``) and runs it through the same engine as ``astep-cal once``
(``pipeline.NightRun``), one night at a time, oldest first. Storage trouble (disk full, data root gone)
is waited out, never recorded as failed frames.

It stamps ``progress.heartbeat`` whenever it makes progress; the main thread (``service.Daemon``)
feeds systemd's watchdog from it and shows ``progress.text()`` as STATUS=.

One night's trouble stays that night's: an error while looking at or processing a night (a directory
it may not read, an I/O error) marks that night *stuck* — recorded in its ledger record (``status``
shows it), logged once as ``night_stuck``, retried with a growing back-off — and the other nights go
on. An error outside any night (the data root unreadable) is logged once and stamps no heartbeat, so
a worker that makes no progress at all stops the watchdog pings (``worker_stalled``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astep_cal.engine.masters_cache import MastersCache
from astep_cal.engine.pipeline import NightRun, finish_night_close
from astep_cal.engine.rules import clear_failures, night_has_work
from astep_cal.formats.cameras import discover_units, units_of_dates
from astep_cal.formats.raw_night import directories_stamp
from astep_cal.frontends.control import RETRY_REQUEST
from astep_cal.frontends.status import night_row, night_rows
from astep_cal.frontends.watcher import MIN_WAIT_S, NightEvents, idle_wait_s, night_readiness
from astep_cal.state import entries
from astep_cal.state.recovery import open_ledger
from astep_cal.support.config import Settings
from astep_cal.support.memory import release_free_memory
from astep_cal.support.storage import StorageUnavailable, root_present


def _iso(mtime_ns: int) -> str:
    """A file time as ISO 8601 UTC (any time a file system holds: year 30000 included)."""
    try:
        return dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{mtime_ns} ns after 1970"


@dataclass
class Progress:
    """What the worker is doing, for STATUS= and ``astep-cal status`` (written by the worker only)."""

    night: str | None = None  # the night in progress, and how far it is
    done: int = 0
    total: int = 0
    last_night: str | None = None  # the last night finished, and how many are done
    nights_done: int = 0
    calibrated: int = 0  # the night in progress, as its ledger totals say
    solved: int = 0
    failed: int = 0
    waiting: str | None = None  # why the worker waits for the storage (disk full, root gone)
    stuck: dict[str, str] = field(default_factory=dict)  # night -> why it cannot be worked on
    error: str | None = None  # an error outside any night, while it lasts
    heartbeat: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        if self.waiting:
            return f"waiting for storage — {self.waiting}"
        if self.error:
            return f"no progress — {self.error}"
        if self.night:
            return (f"{self.night}: calibrated {self.calibrated}/{self.total}, solved {self.solved}, "
                    f"{self.failed} failed")
        last = f", last {self.last_night}" if self.last_night else ""
        stuck = dict(self.stuck)  # a copy: the worker thread changes it
        if stuck:
            night, reason = min(stuck.items())
            return f"stuck — {len(stuck)} night(s) cannot be worked on ({night}: {reason}); " \
                   f"{self.nights_done} nights done{last}"
        return f"idle — {self.nights_done} nights done{last}"


@dataclass
class Stuck:
    """A night the worker could not work on, and when to try it again."""

    reason: str
    tries: int
    retry_at: float  # monotonic


class NightWorker:
    """The worker thread's state and loop. ``settings`` is replaced whole by the main thread on a
    reload (one assignment: the worker sees the old settings or the new, never a mix)."""

    def __init__(self, settings: Settings, root: Path, events: NightEvents, stop: threading.Event, log: Any):
        self.settings, self.root, self.events, self.stop, self.log = settings, root, events, stop, log
        self.rescan_all = threading.Event()
        self.rescan_all.set()  # catch up on every night at start
        self.progress = Progress()
        self.pending: dict[str, float] = {}  # night -> when to look at it next (monotonic)
        self.closes: dict[str, float] = {}  # night -> when to finish its deferred close (monotonic)
        self.masters = MastersCache()  # the last night's masters, for its next run (a late frame)
        self.finished: dict[str, tuple] = {}  # night -> its directories' stamp when last found finished
        self._last_reconcile = -1e18
        self._storage_night: str | None = None  # the night a write failed on, while waiting for space
        self._ready_reason: dict[str, str] = {}  # night -> why it was found complete (night_ready)
        self._deferred_rest: dict[str, float] = {}  # night -> no idle retry of its deferred solves before (monotonic)
        self.stuck: dict[str, Stuck] = {}  # nights that could not be worked on (permissions, I/O)
        self._future_seen: set[tuple[str, int]] = set()  # files dated in the future, logged once each
        self.ledger = open_ledger(settings.ledger_path(root), root, log)
        self.progress.nights_done = sum(1 for r in night_rows(self.ledger, settings) if r["state"] == "done")
        self.thread = threading.Thread(target=self.run, name="worker", daemon=True)

    def request_rescan(self) -> None:
        """A full rescan at the next turn of the loop (SIGHUP, the data root back)."""
        self.rescan_all.set()
        self.events.wakeup.set()

    def run(self) -> None:
        """The thread's loop: the next ready night with work, processed; it never dies on an error.

        The heartbeat is stamped by every turn that ends normally (idle or a night done) and by the
        frames of a night, never by a turn that failed outside a night: a worker that fails at every
        turn makes no progress, and the watchdog must say so."""
        while not self.stop.is_set():
            try:
                night = self._next_night()
                if night is None and not self.stop.is_set() and not self.closes:  # idle: closes done first
                    night = self._deferred_night()  # (a retry pass may take minutes; a close is a night's end)
                    if night is not None:
                        before = self.ledger.totals(night).get("solve_deferred", 0)
                        self._guarded(night, self._process, night, True)
                        if self.ledger.totals(night).get("solve_deferred", 0) >= before:  # no progress: not again soon
                            self._deferred_rest[night] = time.monotonic() + self.settings.daemon.reconcile_interval_s
                        continue
                if night is None:
                    if self._storage_night is None:
                        self._storage_back()  # the data root is back and nothing failed on a write
                    self._finish_closes(time.monotonic())
                    self._turn_ok()
                    self.events.wakeup.wait(idle_wait_s([*self.pending.values(), *self.closes.values()],
                                                        time.monotonic()))
                    self.events.wakeup.clear()
                    continue
                self._guarded(night, self._process, night)
                self._storage_back()
                self._turn_ok()
            except StorageUnavailable as error:
                self._storage_wait(error)
            except Exception as error:  # never let the worker die silently
                self._worker_error(error)
                self.stop.wait(10)
        # Stopping: a deferred close is left pending (in the ledger): the next start finishes it, and a
        # stop stays quick (matplotlib and the light curves could take longer than systemd waits).

    def _finish_closes(self, now: float) -> None:
        """The deferred closes (light curves, summary PNG) of nights without a new frame for ``close_delay_s``."""
        for night in [n for n, when in self.closes.items() if when <= now]:
            del self.closes[night]
            try:
                self._guarded(night, finish_night_close, self.root, night, self.ledger, self.settings, self.log)
            except StorageUnavailable:  # still pending (and in the ledger): done once the storage is back,
                self.closes[night] = now  # not left to a restart (a reconcile trusts the night's stamp)
                raise

    def _turn_ok(self) -> None:
        if self.progress.error is not None:
            self.log.info("worker_error_cleared", error=self.progress.error)
            self.progress.error = None
        self.progress.heartbeat = time.monotonic()

    def _worker_error(self, error: Exception) -> None:
        """An error outside any night: logged (with its traceback) once while it lasts, no heartbeat."""
        text = f"{type(error).__name__}: {error}"
        if text != self.progress.error:
            self.log.exception("worker_error", error=text)
        self.progress.error = text

    def _guarded(self, night: str, action: Any, *args: Any) -> Any:
        """``action(*args)`` for one night: an error is that night's (it is marked stuck, None is
        returned), the storage's trouble (disk full, root gone) goes up to be waited out."""
        try:
            return action(*args)
        except StorageUnavailable:
            raise
        except Exception as error:
            self.progress.night = None
            self._night_stuck(night, error)
            return None

    def _night_stuck(self, night: str, error: Exception) -> None:
        """Record the night as stuck, with a back-off that doubles at each failed try (up to
        ``stuck_retry_max_s``); log it once per reason, with the traceback when it is not an I/O error."""
        reason = f"{type(error).__name__}: {error}"
        previous = self.stuck.get(night)
        tries = previous.tries + 1 if previous else 1
        daemon = self.settings.daemon
        delay = min(daemon.stuck_retry_s * 2 ** min(tries - 1, 30), daemon.stuck_retry_max_s)
        self.stuck[night] = Stuck(reason, tries, time.monotonic() + delay)
        self.pending[night] = time.monotonic() + delay
        self.progress.stuck[night] = reason
        if previous is None or previous.reason != reason:
            log = self.log.warning if isinstance(error, OSError) else self.log.exception
            log("night_stuck", night=night, reason=reason, retry_in_s=round(delay, 1))
        record = {"reason": reason, "tries": tries, "retry_after": round(time.time() + delay, 3),
                  "since": self._stuck_since(night)}
        try:
            self.ledger.night(night)[entries.STUCK] = record
            self.ledger.release(night)
        except StorageUnavailable:
            raise
        except Exception as failure:  # the ledger itself cannot be written: it stays in memory and STATUS
            self.log.warning("night_stuck_not_recorded", night=night, error=f"{type(failure).__name__}: {failure}")

    def _stuck_since(self, night: str) -> float:
        record = self.ledger.peek(night).get(entries.STUCK) if night in self.ledger.dates() else None
        since = record.get("since") if isinstance(record, dict) else None
        return since if isinstance(since, (int, float)) else round(time.time(), 3)

    def _log_future(self, night: str, future: tuple[tuple[Path, int], ...]) -> None:
        """``file_in_future`` once per file version: its date is left out of the night's settling."""
        for path, mtime_ns in future:
            if (str(path), mtime_ns) not in self._future_seen:
                if len(self._future_seen) >= 10_000:  # bounded for a long-lived daemon
                    self._future_seen.clear()
                self._future_seen.add((str(path), mtime_ns))
                self.log.warning("file_in_future", night=night, path=str(path), mtime=_iso(mtime_ns))

    def _unstuck(self, night: str) -> None:
        if self.stuck.pop(night, None) is not None:
            self.progress.stuck.pop(night, None)
            self.log.info("night_unstuck", night=night)

    def _storage_wait(self, error: StorageUnavailable) -> None:
        """Disk full or data root gone: say so once, keep the heartbeat (waiting is not hanging), retry."""
        if self.progress.waiting is None:
            self.log.error("storage_unavailable", error=str(error))
        self.progress.waiting = str(error)
        self.progress.heartbeat = time.monotonic()
        self.stop.wait(self.settings.daemon.storage_retry_s)

    def _storage_back(self) -> None:
        if self.progress.waiting is not None:
            self.log.info("storage_available")
            self.progress.waiting = None
        self._storage_night = None

    def _collect_candidates(self) -> bool:
        """Merge file events and (when due) a reconcile into ``pending``; True on a reconcile.

        A full rescan (start, SIGHUP, the data root back) checks every night; a periodic reconcile
        skips the nights still as they were when last found finished (:func:`directories_stamp`), so
        its cost follows the nights that changed, not the size of the archive.
        """
        now = time.monotonic()
        for night in units_of_dates(self.root, list(self.events.take()), self.settings.cameras):
            self.pending[night] = now  # an event names a date: each of its cameras is looked at
        full = self.rescan_all.is_set()
        if not full and now - self._last_reconcile < self.settings.daemon.reconcile_interval_s:
            return False
        self.rescan_all.clear()
        self._last_reconcile = now
        self._apply_retry_request()
        nights, _ = discover_units(self.root, self.settings.cameras)
        for night in nights:
            if self._guarded(night, self._has_work, night, not full):
                self.pending.setdefault(night, now)
        self.log.info("rescan", pending=len(self.pending), full=full, nights=len(nights),
                      duration_s=round(time.monotonic() - now, 3))
        return True

    def _night_has_work(self, night: str, solves: bool = True) -> bool:  # a close it has scheduled is not work
        return night_has_work(self.root, night, self.ledger, self.settings, retry_blocked=True,
                              close_pending=night not in self.closes, solves=solves)

    def _has_work(self, night: str, trust_stamp: bool) -> bool:
        stamp = directories_stamp(self.root, night)
        totals = self.ledger.totals(night)
        retry_due = totals["next_retry"] is not None and totals["next_retry"] <= time.time()
        if trust_stamp and self.finished.get(night) == stamp and not retry_due and not totals["blocked"]:
            return False
        if self._night_has_work(night):
            self.finished.pop(night, None)
            return True
        self.finished[night] = stamp
        return False

    def _apply_retry_request(self) -> None:
        request = self.settings.ledger_path(self.root).parent / RETRY_REQUEST
        if not request.exists():
            return
        nights = request.read_text().split() or None
        cleared = clear_failures(self.ledger, nights)
        self.ledger.release_all()  # saved; the nights it opened are not kept in memory
        request.unlink(missing_ok=True)
        self.log.info("retry_requested", frames=cleared, nights=nights or "all")

    def _next_night(self) -> str | None:
        if not root_present(self.root):
            raise StorageUnavailable(f"the data root {self.root} is not there (unmounted?)")
        self._collect_candidates()
        now = time.monotonic()
        solves_only: list[str] = []
        for night in sorted(self.pending):
            if self.pending[night] > now:
                continue
            work = self._guarded(night, self._ready_with_work, night, now)
            if work == "frames":
                break
            if work == "solves":
                solves_only.append(night)
        else:
            night = solves_only.pop(0) if solves_only else None
        for later in solves_only:
            self.pending[later] = now  # looked at again after the night chosen
        if night is not None:
            self.log.info("night_ready", night=night, reason=self._ready_reason.pop(night, ""))
        return night

    def _deferred_night(self) -> str | None:
        """When idle: the oldest night with solves deferred by its budget (``solve_budget``), to try again.
        Each such pass is bounded by the same budget, so a night arriving meanwhile waits at most that."""
        if not self.settings.astrometry.enabled:
            return None
        now = time.monotonic()
        for night in self.ledger.dates():
            if self.ledger.totals(night).get("solve_deferred", 0) and self._deferred_rest.get(night, 0) <= now:
                self.log.info("deferred_solves_retried", night=night,
                              frames=self.ledger.totals(night)["solve_deferred"])
                return night
        return None

    def _ready_with_work(self, night: str, now: float) -> str | None:
        """The night's work when it is complete: ``"frames"`` (frames to calibrate, outputs to write) or
        ``"solves"`` (only retries of failed solves, due after their back-off); None: no work, or not complete
        (then it is looked at again later). A night with frames goes before an older night with only solves:
        a long night's first failed solves are due again by its end, and their retries (up to a night's solve
        budget) must not hold the night after it (issue 23)."""
        readiness = night_readiness(self.root, night, self.settings.daemon)
        self._log_future(night, readiness.future)
        if not readiness.ready:
            self.pending[night] = now + min(max(readiness.wait_s, MIN_WAIT_S), 60.0)
            return None
        del self.pending[night]
        if self._night_has_work(night):
            self._ready_reason[night] = readiness.reason
            return "frames" if self._night_has_work(night, solves=False) else "solves"
        self._unstuck(night)
        return None

    def _process(self, night: str, retry_deferred: bool = False) -> None:
        progress = self.progress
        progress.night, progress.done, progress.total = night, 0, 0
        progress.calibrated = progress.solved = progress.failed = 0

        def on_frame(_night: str, done: int, total: int) -> None:
            row = night_row(night, self.ledger.totals(night), self.settings)
            progress.done, progress.total = done, row["frames"]
            progress.calibrated, progress.solved, progress.failed = row["calibrated"], row["solved"], row["failed"]
            progress.heartbeat = time.monotonic()

        delay = self.settings.daemon.close_delay_s
        if self.masters.date != night:  # another night: its masters are not kept beside this one's
            self.masters.clear()
        run = NightRun(self.root, night, self.settings, self.ledger, force=False, progress=on_frame,
                       should_stop=self.stop.is_set, retry_deferred=retry_deferred, defer_close=delay > 0,
                       masters_cache=self.masters)
        try:
            run.run()
        except StorageUnavailable:
            self._storage_night = night  # its retry tells when the storage is back
            self.pending[night] = time.monotonic() + self.settings.daemon.storage_retry_s
            progress.night = None
            raise
        self._unstuck(night)
        if run.close_pending:
            self.closes[night] = time.monotonic() + delay  # debounced: each new frame puts it off again
        if not self.stop.is_set():
            progress.nights_done = sum(1 for row in night_rows(self.ledger, self.settings) if row["state"] == "done")
            progress.last_night = night
        progress.night = None
        progress.heartbeat = time.monotonic()
        del run
        release_free_memory()
