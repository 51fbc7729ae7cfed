"""The stage runner: every step of a night runs inside :func:`run_stage` — the masters (bias, darks,
flat, mask), each frame's calibration, quality metrics and plate solve, and the nightly summary.

It owns what BANZAI's ``Stage.run`` owns — timing, the step's log event, error isolation — without
BANZAI's habit of dropping a frame with a log line: one failure convention for every step. A failing
step becomes a record ``{"status": "failed", "error": ..., "duration_s": ...}`` that the caller keeps
in the ledger, and its failure event is logged once, here. Steps whose failure must stop what depends
on them (the masters: no frame can be calibrated without them) are logged and recorded the same way and
then raised. Storage trouble (disk full, the data root gone) is never a step's failure: nothing is
logged or recorded and :class:`~astep_cal.support.storage.StorageUnavailable` goes up, so the night is resumed
when the storage is back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astep_cal.support.storage import StorageUnavailable, ensure_root, root_present


class FrameBlocked(Exception):
    """A frame that cannot be calibrated yet because a calibration (dark, flat) is missing."""


class StageFailed(Exception):
    """A step's failure, already logged and recorded by its runner, raised to what depends on it (the
    masters' steps to the night's frames). Enclosing runners pass it on without logging it again."""


class StepSkipped(Exception):
    """A step that had nothing to make (e.g. every sky flat unusable): not a failure, and not logged
    as one; the step reports why through the problems it returns."""


@dataclass(frozen=True)
class StageEvents:
    """How one kind of step reports itself (the event names are catalogued in docs/pages/log-events.md)."""

    done: str | None  # logged on success with the step's fields, its result record and duration_s;
    #                   None when the caller logs the success itself (it knows more, e.g. a solve's tries)
    failed: str | None  # logged on failure, with the error; None when the caller logs it (see done)
    isolate: bool     # True: a failure is recorded and the caller goes on; False: recorded, then raised
    failed_level: str = "error"
    done_fields: tuple[str, ...] | None = None  # the record's fields the done event shows (None: all)


FRAME_STEP = StageEvents(done=None, failed="frame_failed", isolate=True)
CALIBRATE_STEP = StageEvents(done="frame_calibrated", failed="frame_failed", isolate=True,
                             done_fields=("duration_s", "n_cosmic"))
QUALITY_STEP = StageEvents(done=None, failed="quality_failed", isolate=True, failed_level="warning")
MASTER_STEP = StageEvents(done="master_built", failed="masters_failed", isolate=False)  # one master
# The night's detector (read noise, gain, dark current): without it the configured defaults serve.
DETECTOR_STEP = StageEvents(done="detector_measured", failed="detector_failed", isolate=True, failed_level="warning",
                            done_fields=("read_noise_adu", "read_noise_e", "read_noise_pairs", "gain", "gain_pairs",
                                         "dark_current_adu_s", "duration_s"))
MASTERS_STEP = StageEvents(done=None, failed="masters_failed", isolate=False)  # all of a night's masters
SUMMARY_STEP = StageEvents(done="summary_written", failed="summary_failed", isolate=True)
CATALOGUE_STEP = StageEvents(done=None, failed="catalogue_failed", isolate=True, failed_level="warning")
# The light curves log their own outcome per target (lightcurve_written and the bad cases).
PHOTOMETRY_STEP = StageEvents(done=None, failed="photometry_failed", isolate=True)
# A solve runs in a helper thread; the thread that owns the ledger logs its outcome (frame_solved, or
# frame_failed with the tries) once it is recorded, and not at all when a shutdown ended it.
SOLVE_STEP = StageEvents(done=None, failed=None, isolate=True)
# A frame's health figures run in the solve's thread too: the ledger's thread logs a failure
# (health_failed) when it records the solve.
HEALTH_STEP = StageEvents(done=None, failed=None, isolate=True)


def error_text(error: BaseException) -> str:
    """An error as the ledger and the logs show it: its type and message (a :class:`StageFailed`
    shows the original error's)."""
    return str(error) if isinstance(error, StageFailed) else f"{type(error).__name__}: {error}"


def _is_storage_trouble(error: Exception, root: Path | None) -> bool:
    return isinstance(error, StorageUnavailable) or (root is not None and not root_present(root))


@contextlib.contextmanager
def run_stage(name: str, log: Any, events: StageEvents, *, root: Path | None = None,
              fields: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Run one step: the body fills the yielded record (its result, as the ledger keeps it).

    On exit the record holds ``status`` (``ok``, ``failed``, ``blocked`` or ``skipped``) and, but for a
    blocked or skipped step, ``duration_s``. ``fields`` name what the step works on (``stage``, ``kind``,
    ``exptime``...) in its log events. A blocked frame gets no duration, so re-checking it changes
    nothing in the ledger.
    """
    fields = fields or {}
    record: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        yield record
    except FrameBlocked as reason:
        if not events.isolate:
            raise
        record.clear()
        record.update(status="blocked", error=str(reason))
        log.warning("frame_blocked", stage=name, error=str(reason))
    except StepSkipped as reason:
        record.clear()
        record.update(status="skipped", reason=str(reason))
    except Exception as error:  # error isolation: one bad step never stops the night unasked
        if isinstance(error, StageFailed) and not events.isolate:
            raise  # logged and recorded by the step that failed
        if _is_storage_trouble(error, root):
            if root is not None:
                ensure_root(root, error)
            raise
        record.update(status="failed", error=error_text(error), duration_s=round(time.perf_counter() - start, 3))
        if events.failed is not None:
            getattr(log, events.failed_level)(events.failed, **fields, error=record["error"])
        if not events.isolate:
            raise StageFailed(record["error"]) from error
    else:
        record.setdefault("status", "ok")
        record["duration_s"] = round(time.perf_counter() - start, 3)
        if events.done is not None:
            shown = events.done_fields or tuple(k for k in record if k != "status")
            log.info(events.done, **fields, **{k: record[k] for k in shown if k in record})


@contextlib.contextmanager
def stage(entry: dict[str, Any], name: str, log: Any, root: Path | None = None,
          events: StageEvents = FRAME_STEP) -> Iterator[dict[str, Any]]:
    """A frame's step, its record kept as ``entry[name]`` (the frame's ledger entry).

    Storage trouble leaves the previous record in place (nothing was learnt about the frame).
    """
    previous = entry.get(name)
    try:
        with run_stage(name, log, events, root=root, fields={"stage": name}) as record:
            yield record
    except BaseException:
        _put_back(entry, name, previous)
        raise
    entry[name] = record


def _put_back(entry: dict[str, Any], name: str, previous: dict[str, Any] | None) -> None:
    """Leave a stage's record as it was before the step (nothing learnt about the frame)."""
    if previous is None:
        entry.pop(name, None)
    else:
        entry[name] = previous
