"""Watching the data root: file events mark nights as touched; readiness decides when to process them.

The watchdog observer (inotify, or polling on network file systems) only records *which night* an
event concerns and *when*: a dict keyed by date, so a storm of thousands of events costs a few bytes.
Whether a night is ready is decided from the file system itself (:func:`night_readiness`), never from
the events, and a periodic full reconcile catches anything the events missed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from astep_cal.formats.names import cams_dir, skyflat_dir, split_unit, unit_date
from astep_cal.formats.raw_night import Problem, inspect_frame, is_fits_name, is_temporary, valid_date
from astep_cal.support.config import DaemonSettings

# inotify reports reads too (watchdog >= 4): a night being read by its own inventory would otherwise
# be "touched" again by every look at it, and looked at again, for ever.
READ_ONLY_EVENTS = (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE)


class NightEvents(FileSystemEventHandler):
    """Remembers the last event time per night date (the worker looks at each of its cameras, ``cameras``);
    thread-safe, bounded by the number of nights."""

    def __init__(self, root: Path):
        self.root = root
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self.wakeup = threading.Event()

    def night_of(self, path: str) -> str | None:
        try:
            first = Path(path).relative_to(self.root).parts[0]
        except (ValueError, IndexError):
            return None
        return first if valid_date(first) else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in READ_ONLY_EVENTS:
            return  # the pipeline reading a night's files must not make the night look touched
        for path in (event.src_path, getattr(event, "dest_path", "")):
            night = self.night_of(path) if path else None
            if night:
                with self._lock:
                    self._touched[night] = time.monotonic()
                self.wakeup.set()

    def take(self) -> dict[str, float]:
        """The nights touched since the last call (and forget them)."""
        with self._lock:
            touched, self._touched = self._touched, {}
        return touched


def start_observer(root: Path, handler: NightEvents, settings: DaemonSettings):
    """Start a watchdog observer on the data root (recursive)."""
    observer = PollingObserver(timeout=settings.poll_interval_s) if settings.use_polling else Observer()
    observer.schedule(handler, str(root), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


INCOMPLETE_PATIENCE = 4  # settle periods a truncated file may hold a night back
FUTURE_TOLERANCE_S = 300.0  # clocks disagree by this much (camera PC vs. server): beyond, "in the future"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # why not (or "marker", "settled", "settled, no sky flats")
    wait_s: float = 0.0  # when known, how long until it might be ready
    future: tuple[tuple[Path, int], ...] = ()  # (path, mtime_ns) dated after now: left out of the settling


def _raw_dirs(night_dir: Path, date: str) -> list[Path]:
    return [d for d in (cams_dir(night_dir.parent, date), skyflat_dir(night_dir.parent, date)) if d.is_dir()]


def _night_files(night_dir: Path, date: str) -> list[Path]:
    return [p for directory in _raw_dirs(night_dir, date) for p in directory.iterdir() if p.is_file()]


IDLE_TICK_S = 2.0  # how often an idle worker re-checks pending nights (and stamps its heartbeat)
MIN_WAIT_S = 0.05  # the shortest wait of an idle worker for a night (or a deferred close) coming due


def idle_wait_s(due: list[float], now: float) -> float:
    """An idle worker's sleep: until the first night or close comes due, at most :data:`IDLE_TICK_S`
    (a file event wakes it sooner); a whole tick past a night's settling cost late frames up to 2 s."""
    return min([IDLE_TICK_S, *(max(MIN_WAIT_S, when - now) for when in due)])


def night_readiness(root: Path, date: str, settings: DaemonSettings, now: float | None = None) -> Readiness:
    """Is the night's raw data complete? Decided from the file system (stat and FITS headers) only.

    ``date`` is a night key: each camera of a night waits for its own science and sky-flat sets (the
    marker file in the night directory says the whole night, every camera, is complete)."""
    now = time.time() if now is None else now
    night_dir = root / unit_date(date)
    if (night_dir / settings.marker_file).exists():
        return Readiness(True, "marker")
    if not cams_dir(root, date).is_dir():
        return Readiness(False, f"no -{split_unit(date)[1]} directory yet")
    files = _night_files(night_dir, date)
    if any(is_temporary(p.name) for p in files):
        return Readiness(False, "transfer in progress", settings.settle_seconds)
    # The raw directories' own mtimes too: a file arriving with an old mtime (rsync -a, cp -p keep the
    # camera's) changes only the directory it lands in.
    # A file dated in the future (a wrong clock, touch -d) says nothing about when it arrived: left out,
    # else it would hold its night in "settling" until that date. Its arrival changed its directory's
    # mtime, set by this machine's clock, which still counts.
    stamps = {p: p.stat().st_mtime_ns for p in [*files, night_dir, *_raw_dirs(night_dir, date)]}
    future = tuple((p, ns) for p, ns in stamps.items() if ns / 1e9 > now + FUTURE_TOLERANCE_S)
    present = [ns / 1e9 for ns in stamps.values() if ns / 1e9 <= now + FUTURE_TOLERANCE_S]
    quiet = now - max(present) if present else float("inf")
    if quiet < settings.settle_seconds:
        return Readiness(False, "settling", settings.settle_seconds - quiet, future)
    fits_files = [p for p in files if is_fits_name(p.name)]
    if quiet < INCOMPLETE_PATIENCE * settings.settle_seconds:
        # A short file that stopped changing may be a stalled transfer: give it more time, but not
        # for ever — after that it is a bad file, reported by the inventory, and the night goes on.
        for path in fits_files:
            result = inspect_frame(path)
            if isinstance(result, Problem) and result.event in ("file_truncated", "file_empty"):
                return Readiness(False, f"{path.name} incomplete", settings.settle_seconds, future)
    if not any("SKYFLAT" in p.name.upper() for p in fits_files):
        if quiet < settings.no_flat_wait_s:
            return Readiness(False, "waiting for sky flats", settings.no_flat_wait_s - quiet, future)
        return Readiness(True, "settled, no sky flats", future=future)
    return Readiness(True, "settled", future=future)
