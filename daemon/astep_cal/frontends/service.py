"""The long-running service: ``astep-cal run``.

Threads:
- the **main thread** owns signals, systemd notifications (READY, STATUS, WATCHDOG, RELOADING,
  STOPPING) and health: it never does pipeline work, so it always answers;
- the **worker thread** (``worker.NightWorker``) processes one night at a time, oldest first, through
  the same engine as ``astep-cal once`` (``pipeline.NightRun``); it is the only thread that writes the
  ledger;
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
from pathlib import Path
from typing import Any

from systemd import daemon as sd

from astep_cal import __version__
from astep_cal.engine.solve_process import terminate_running_children
from astep_cal.frontends.control import ACTIVITY_FILE, write_activity
from astep_cal.frontends.watcher import NightEvents, start_observer
from astep_cal.frontends.worker import NightWorker
from astep_cal.state.ledger import RootLock
from astep_cal.support.config import Settings, load_settings
from astep_cal.support.faults import checkpoint
from astep_cal.support.logs import configure, get_logger
from astep_cal.support.storage import StorageUnavailable, root_present

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


class Daemon:
    """The main thread: signals, systemd notifications, health, the data root's presence, and the
    observer. It never does pipeline work, so it always answers; the work is the ``NightWorker``'s."""

    def __init__(self, settings: Settings, root: Path, config_path: Path | None):
        self.settings, self.root, self.config_path = settings, root, config_path
        self.log = get_logger()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.events = NightEvents(root)
        self.worker = NightWorker(settings, root, self.events, self.stop, self.log)
        self.activity_path = settings.ledger_path(root).parent / ACTIVITY_FILE
        self.observer: Any = None  # started by run(), restarted when the data root comes back
        self.root_identity = root_identity(root)
        self._stalled = False

    def _install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())

    def run(self) -> int:
        self._install_signals()
        self.observer = start_observer(self.root, self.events, self.settings.daemon)
        self.worker.thread.start()
        self.log.info("daemon_started", root=str(self.root), pid=os.getpid(), version=__version__)
        notify("READY=1")
        status = ""
        ping_every = watchdog_interval_s()
        last_ping = 0.0
        while not self.stop.wait(MAIN_TICK_S):
            if self.reload_requested.is_set():
                self._reload()
            self._watch_root()
            text = self.worker.progress.text()
            if text != status:
                notify(f"STATUS={text}")
                status = text if self._write_activity(text) else ""
            healthy = self._healthy()
            if ping_every and healthy and time.monotonic() - last_ping >= ping_every:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
        self._shutdown()
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
        self.worker.request_rescan()

    def _healthy(self) -> bool:
        stale = time.monotonic() - self.worker.progress.heartbeat
        alive = self.worker.thread.is_alive()
        healthy = alive and stale <= self.settings.daemon.stall_timeout_s
        if not healthy and not self._stalled:  # log the transition, not every tick
            self.log.error("worker_stalled", seconds_since_progress=round(stale, 1), alive=alive)
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
                self.worker.settings = self.settings
            self.log.info("config_reloaded", path=str(self.config_path))
        except Exception as error:  # a bad edit keeps the old settings running
            self.log.error("config_reload_failed", error=str(error))
        self.worker.request_rescan()
        notify("READY=1")

    def _shutdown(self) -> None:
        notify("STOPPING=1")
        self.log.info("daemon_stopping")
        self.events.wakeup.set()
        terminate_running_children()  # solve-field and a reference query alike
        self.worker.thread.join(self.settings.daemon.stop_grace_s)
        self.observer.stop()
        if self.worker.thread.is_alive():
            self.log.warning("worker_abandoned", grace_s=self.settings.daemon.stop_grace_s)
        self.activity_path.unlink(missing_ok=True)
        self.log.info("daemon_stopped")


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
