"""The health figures as a Prometheus text file, for node_exporter's textfile collector (the monitoring
the station already runs). Off by default (``[health] prometheus_textfile = ""``).

The file holds two blocks, each replaced by its own writer: the last solved frame's figures
(``astep_cal_frame_*``, written after each frame's zero point) and the last closed night's
(``astep_cal_health_*``, after each night). Each write is atomic (a temporary file renamed over it:
the collector never reads half a file) and keeps the other block as it was; a lock serialises the
solve thread's writes with the night's in one process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from astep_cal.formats.names import unit_of_cal_file
from astep_cal.state.alerts import KINDS, TOTAL_KEYS
from astep_cal.support.storage import StorageUnavailable, atomic_write_bytes

PREFIX = "astep_cal_health"
FRAME_PREFIX = "astep_cal_frame"
FRAME_KEYS = ("zp", "zp_scatter", "zp_stars", "sky_mag_arcsec2", "moon_alt_deg", "moon_sep_deg")
_LOCK = threading.Lock()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _gauge(name: str, help_text: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]


def render(date: str, figures: dict[str, Any]) -> str:
    """The night block: ``# HELP``/``# TYPE`` and one sample per known figure, and the alert kinds."""
    lines = []
    for key in TOTAL_KEYS + ("flat_structures", "flat_large_scale_std"):
        if _number(figures.get(key)):
            lines += _gauge(f"{PREFIX}_{key}", f"astep-cal night health figure {key} (docs/pages/health.md)",
                            [f'{PREFIX}_{key}{{night="{date}"}} {figures[key]}'])
    lines += _gauge(f"{PREFIX}_alert", "1 when the night raised this kind of alert",
                    [f'{PREFIX}_alert{{night="{date}",kind="{kind}"}} {int(kind in figures.get("alerts", []))}'
                     for kind in KINDS])
    return "\n".join(lines) + "\n"


def render_frame(date: str, frame: str, record: dict[str, Any], now: float | None = None) -> str:
    """The frame block: the last solved frame's zero point, sky and Moon, and when it was written."""
    labels = f'night="{date}",frame="{frame}"'
    lines = []
    for key in FRAME_KEYS:
        if _number(record.get(key)):
            lines += _gauge(f"{FRAME_PREFIX}_{key}", f"astep-cal last frame's health figure {key}",
                            [f"{FRAME_PREFIX}_{key}{{{labels}}} {record[key]}"])
    lines += _gauge(f"{FRAME_PREFIX}_written_timestamp_seconds", "when the last frame's figures were written",
                    [f"{FRAME_PREFIX}_written_timestamp_seconds{{{labels}}} {round(now or time.time(), 1)}"])
    return "\n".join(lines) + "\n"


def _replace_block(path: Path, prefix: str, block: str) -> None:
    """Rewrite ``path`` atomically with ``block`` in place of the lines of ``prefix``'s metrics."""
    mine = (prefix + "_", f"# HELP {prefix}_", f"# TYPE {prefix}_")
    with _LOCK:
        try:
            old = path.read_text().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            old = []
        kept = [line for line in old if line.strip() and not line.startswith(mine)]
        text = "\n".join(kept) + "\n" + block if kept else block
        atomic_write_bytes(path, text.encode(), make_parents=False)


def write_textfile(path: Path, date: str, figures: dict[str, Any]) -> str | None:
    """Replace the night block of ``path`` (its directory must exist: the collector's); the error text
    when it could not be written (the night's health is recorded all the same), else None."""
    try:
        _replace_block(path, PREFIX, render(date, figures))
    except (OSError, StorageUnavailable) as error:  # a full /var is the monitoring's trouble, not the night's
        return f"prometheus textfile {path}: {error}"
    return None


def write_frame(path: Path, cal_path: Path, record: dict[str, Any]) -> str | None:
    """Replace the frame block with a solved frame's health record; the error text when it could not
    be written (the frame is good all the same), else None."""
    try:
        _replace_block(path, FRAME_PREFIX, render_frame(unit_of_cal_file(cal_path), cal_path.name, record))
    except (OSError, StorageUnavailable) as error:  # (StorageUnavailable would stop the data's processing)
        return f"prometheus textfile {path}: {error}"
    return None
