"""The stage runner: every per-frame step runs inside :func:`stage`.

It owns timing, the step's outcome in the frame's ledger entry and error isolation (the role of
BANZAI's ``Stage.run``, without dropping the frame): a failing step becomes a recorded failure with its
reason and the night goes on; a frame that lacks a calibration is recorded as blocked; storage trouble
(disk full, the data root gone) is not the frame's fault and goes up, with nothing recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .storage import StorageUnavailable, ensure_root, root_present


class FrameBlocked(Exception):
    """A frame that cannot be calibrated yet because a calibration (dark, flat) is missing."""


@contextlib.contextmanager
def stage(entry: dict[str, Any], name: str, log: Any, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """Run one step for one frame: time it, log it, and turn any exception into a recorded failure.

    The step fills the yielded record; on success ``status`` defaults to ``ok``. A blocked frame has no
    duration so that re-checking it changes nothing in the ledger. Storage trouble (disk full, the
    data root gone) is not the frame's failure: nothing is recorded and :class:`StorageUnavailable`
    goes up to stop the night, which is resumed when the storage is back.
    """
    previous = entry.get(name)
    record: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        yield record
    except FrameBlocked as reason:
        record = {"status": "blocked", "error": str(reason)}
        log.warning("frame_blocked", stage=name, error=str(reason))
    except Exception as error:  # error isolation: one bad frame never stops the night
        if isinstance(error, StorageUnavailable) or (root is not None and not root_present(root)):
            _put_back(entry, name, previous)
            if root is not None:
                ensure_root(root, error)
            raise
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        record["duration_s"] = round(time.perf_counter() - start, 3)
        log.error("frame_failed", stage=name, error=record["error"])
    else:
        record.setdefault("status", "ok")
        record["duration_s"] = round(time.perf_counter() - start, 3)
    entry[name] = record


def _put_back(entry: dict[str, Any], name: str, previous: dict[str, Any] | None) -> None:
    """Leave a stage's record as it was before the step (nothing learnt about the frame)."""
    if previous is None:
        entry.pop(name, None)
    else:
        entry[name] = previous
