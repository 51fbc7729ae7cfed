"""The long-running service: ``astep-cal run``.

Threads:
- the **main thread** owns signals, systemd notifications (READY, STATUS, WATCHDOG, RELOADING,
  STOPPING) and health: it never does pipeline work, so it always answers;
- the **worker thread** processes one night at a time, oldest first, through the same engine as
  ``astep-cal once`` (``pipeline.NightRun``); it is the only thread that writes the ledger;
- the **watchdog observer** thread only records which nights were touched (``watcher.NightEvents``).

Health: the worker stamps a heartbeat whenever it makes progress (a frame done, an idle loop). The
main thread sends ``WATCHDOG=1`` only while that heartbeat is fresher than ``stall_timeout_s``; a hung
worker therefore stops the pings and systemd (``WatchdogSec``) restarts the service.

Outside systemd (no ``NOTIFY_SOCKET``) every notification is a silent no-op.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from systemd import daemon as sd

from . import __version__, astrometry
from .config import Settings, load_settings
from .faults import checkpoint
from .control import ACTIVITY_FILE, RETRY_REQUEST, write_activity
from .fitsio import StorageUnavailable, root_present
from .ledger import Ledger, RootLock
from .logs import configure, get_logger
from .night import directories_stamp, discover_nights
from .pipeline import NightRun, clear_failures, night_has_work
from .recovery import open_ledger
from .status import night_row, night_rows
from .watcher import NightEvents, night_readiness, start_observer

IDLE_TICK_S = 2.0  # how often an idle worker re-checks pending nights (and stamps its heartbeat)
MAIN_TICK_S = 1.0


def root_identity(root: Path) -> tuple[int, int] | None:
    """(device, inode) of the data root, None when it is not there (or no longer mounted): a remount
    changes it."""
    try:
        stat = root.stat()
    except OSError:
        return None
    if not root_present(root):
        return None
    return stat.st_dev, stat.st_ino


def notify(message: str) -> None:
    """One sd_notify datagram (systemd-python); nothing happens without NOTIFY_SOCKET."""
    if os.environ.get("NOTIFY_SOCKET"):
        sd.notify(message)


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (from WATCHDOG_USEC), or None when no watchdog is asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


@dataclass
class Progress:
    """What the worker is doing, for STATUS= and ``astep-cal status`` (written by the worker only)."""

    night: str | None = None
    done: int = 0
    total: int = 0
    calibrated: int = 0
    solved: int = 0
    failed: int = 0
    nights_done: int = 0
    last_night: str | None = None
    waiting: str | None = None  # why the worker waits for the storage (disk full, root gone)
    heartbeat: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        if self.waiting:
            return f"waiting for storage — {self.waiting}"
        if self.night:
            return (f"{self.night}: calibrated {self.calibrated}/{self.total}, solved {self.solved}, "
                    f"{self.failed} failed")
        last = f", last {self.last_night}" if self.last_night else ""
        return f"idle — {self.nights_done} nights done{last}"


class Daemon:
    def __init__(self, settings: Settings, root: Path, config_path: Path | None):
        self.settings, self.root, self.config_path = settings, root, config_path
        self.log = get_logger()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.rescan_all = threading.Event()
        self.rescan_all.set()  # catch up on every night at start
        self.progress = Progress()
        self.events = NightEvents(root)
        self.pending: dict[str, float] = {}  # night -> when to look at it next (monotonic)
        self.finished: dict[str, tuple] = {}  # night -> its directories' stamp when last found finished
        self._last_reconcile = -1e18
        self.ledger = open_ledger(settings.ledger_path(root), root, self.log)
        self.worker = threading.Thread(target=self._work, name="worker", daemon=True)
        self.activity_path = settings.ledger_path(root).parent / ACTIVITY_FILE
        self._stalled = False
        self._storage_night: str | None = None  # the night a write failed on, while waiting for space
        self.progress.nights_done = sum(1 for r in night_rows(self.ledger, settings) if r["state"] == "done")

    # --- main thread ------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())

    def run(self) -> int:
        self._install_signals()
        self.observer = start_observer(self.root, self.events, self.settings.daemon)
        self.root_identity = root_identity(self.root)
        self.worker.start()
        self.log.info("daemon_started", root=str(self.root), pid=os.getpid(), version=__version__)
        notify("READY=1")
        status = ""
        ping_every = watchdog_interval_s()
        last_ping = 0.0
        while not self.stop.wait(MAIN_TICK_S):
            if self.reload_requested.is_set():
                self._reload()
            self._watch_root()
            text = self.progress.text()
            if text != status:
                notify(f"STATUS={text}")
                status = text if self._write_activity(text) else ""
            healthy = self._healthy()
            if ping_every and healthy and time.monotonic() - last_ping >= ping_every:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
        self._shutdown(self.observer)
        return 0

    def _write_activity(self, text: str) -> bool:
        """``daemon.json`` for ``astep-cal status``; a full disk must not stop the main thread."""
        try:
            write_activity(self.activity_path, text)
        except (StorageUnavailable, OSError):
            return False
        return True

    def _watch_root(self) -> None:
        """Notice the data root vanishing (unmounted, renamed) and coming back.

        The inotify watches die with the directory they were on, so on its return the observer is
        started anew and a full rescan finds whatever arrived in the meantime.
        """
        identity = root_identity(self.root)
        if identity == self.root_identity:
            return
        self.root_identity = identity
        if identity is None:
            self.log.error("data_root_missing", root=str(self.root))
            return
        self.log.info("data_root_returned", root=str(self.root))
        self.observer.stop()
        self.observer = start_observer(self.root, self.events, self.settings.daemon)
        self.rescan_all.set()
        self.events.wakeup.set()

    def _healthy(self) -> bool:
        stale = time.monotonic() - self.progress.heartbeat
        healthy = self.worker.is_alive() and stale <= self.settings.daemon.stall_timeout_s
        if not healthy and not self._stalled:  # log the transition, not every tick
            self.log.error("worker_stalled", seconds_since_progress=round(stale, 1), alive=self.worker.is_alive())
        elif healthy and self._stalled:
            self.log.info("worker_recovered")
        self._stalled = not healthy
        return healthy

    def _reload(self) -> None:
        self.reload_requested.clear()
        checkpoint("daemon:reload")
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            if self.config_path:
                self.settings = load_settings(self.config_path)
            self.log.info("config_reloaded", path=str(self.config_path))
        except Exception as error:  # a bad edit keeps the old settings running
            self.log.error("config_reload_failed", error=str(error))
        self.rescan_all.set()
        self.events.wakeup.set()
        notify("READY=1")

    def _shutdown(self, observer: Any) -> None:
        notify("STOPPING=1")
        self.log.info("daemon_stopping")
        self.events.wakeup.set()
        astrometry.terminate_running_solves()
        self.worker.join(self.settings.daemon.stop_grace_s)
        observer.stop()
        if self.worker.is_alive():
            self.log.warning("worker_abandoned", grace_s=self.settings.daemon.stop_grace_s)
        self.activity_path.unlink(missing_ok=True)
        self.log.info("daemon_stopped")

    # --- worker thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self.stop.is_set():
            self.progress.heartbeat = time.monotonic()
            try:
                night = self._next_night()
                if night is None:
                    if self._storage_night is None:
                        self._storage_back()  # the data root is back and nothing failed on a write
                    self.events.wakeup.wait(IDLE_TICK_S)
                    self.events.wakeup.clear()
                    continue
                self._process(night)
                self._storage_back()
            except StorageUnavailable as error:
                self._storage_wait(error)
            except Exception as error:  # never let the worker die silently
                self.log.exception("worker_error", error=f"{type(error).__name__}: {error}")
                self.stop.wait(10)

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
        for night in self.events.take():
            self.pending[night] = now
        full = self.rescan_all.is_set()
        if not full and now - self._last_reconcile < self.settings.daemon.reconcile_interval_s:
            return False
        self.rescan_all.clear()
        self._last_reconcile = now
        self._apply_retry_request()
        nights, _ = discover_nights(self.root)
        for night in nights:
            if self._has_work(night, trust_stamp=not full):
                self.pending.setdefault(night, now)
        self.log.info("rescan", pending=len(self.pending), full=full, nights=len(nights),
                      duration_s=round(time.monotonic() - now, 3))
        return True

    def _has_work(self, night: str, trust_stamp: bool) -> bool:
        stamp = directories_stamp(self.root, night)
        totals = self.ledger.totals(night)
        retry_due = totals["next_retry"] is not None and totals["next_retry"] <= time.time()
        if trust_stamp and self.finished.get(night) == stamp and not retry_due and not totals["blocked"]:
            return False
        if night_has_work(self.root, night, self.ledger, self.settings, retry_blocked=True):
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
        self.ledger.save()
        request.unlink(missing_ok=True)
        self.log.info("retry_requested", frames=cleared, nights=nights or "all")

    def _next_night(self) -> str | None:
        if not root_present(self.root):
            raise StorageUnavailable(f"the data root {self.root} is not there (unmounted?)")
        self._collect_candidates()
        now = time.monotonic()
        for night in sorted(self.pending):
            if self.pending[night] > now:
                continue
            readiness = night_readiness(self.root, night, self.settings.daemon)
            if not readiness.ready:
                self.pending[night] = now + min(max(readiness.wait_s, IDLE_TICK_S), 60.0)
                continue
            del self.pending[night]
            if night_has_work(self.root, night, self.ledger, self.settings, retry_blocked=True):
                self.log.info("night_ready", night=night, reason=readiness.reason)
                return night
        return None

    def _process(self, night: str) -> None:
        progress = self.progress
        progress.night, progress.done, progress.total = night, 0, 0
        progress.calibrated = progress.solved = progress.failed = 0

        def on_frame(_night: str, done: int, total: int) -> None:
            row = night_rows_for(self.ledger, self.settings, night)
            progress.done, progress.total = done, row["frames"]
            progress.calibrated, progress.solved, progress.failed = row["calibrated"], row["solved"], row["failed"]
            progress.heartbeat = time.monotonic()

        run = NightRun(self.root, night, self.settings, self.ledger, force=False, progress=on_frame,
                       should_stop=self.stop.is_set)
        try:
            run.run()
        except StorageUnavailable:
            self._storage_night = night  # its retry tells when the storage is back
            self.pending[night] = time.monotonic() + self.settings.daemon.storage_retry_s
            progress.night = None
            raise
        if not self.stop.is_set():
            progress.nights_done = sum(1 for row in night_rows(self.ledger, self.settings) if row["state"] == "done")
            progress.last_night = night
        progress.night = None
        progress.heartbeat = time.monotonic()


def night_rows_for(ledger: Ledger, settings: Settings, night: str) -> dict[str, Any]:
    return night_row(night, ledger.totals(night), settings)


def run_daemon(config_path: Path | None, root_override: str | None) -> int:
    """Entry point of ``astep-cal run``; returns the process exit code."""
    settings = load_settings(config_path)
    configure(settings.logging.format, settings.logging.level)
    root_text = root_override or settings.data_root
    if not root_text:
        raise FileNotFoundError("no data root: set data_root in the config or pass --root")
    root = Path(root_text).resolve()
    if not root_present(root):
        raise FileNotFoundError(f"data root {root} does not exist or is not a directory")
    if root_override:
        settings = Settings(**{**settings.__dict__, "data_root": str(root)})
    with RootLock(settings.ledger_path(root), record_pid=True):
        return Daemon(settings, root, config_path).run()
