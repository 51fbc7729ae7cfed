"""The night's health figures as a Prometheus text file, for node_exporter's textfile collector (the
monitoring the station already runs). Off by default (``[health] prometheus_textfile = ""``).

Written atomically (a temporary file renamed over it: the collector never reads half a file) after each
night is closed; one gauge per figure, labelled with the night, plus the number of alerts per kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astep_cal.state.alerts import KINDS, TOTAL_KEYS
from astep_cal.support.storage import atomic_write_bytes

PREFIX = "astep_cal_health"


def render(date: str, figures: dict[str, Any]) -> str:
    """The text exposition format: ``# HELP``/``# TYPE`` and one sample per known figure."""
    lines = []
    for key in TOTAL_KEYS + ("flat_structures", "flat_large_scale_std"):
        value = figures.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            name = f"{PREFIX}_{key}"
            lines += [f"# HELP {name} astep-cal night health figure {key} (docs/pages/health.md)",
                      f"# TYPE {name} gauge", f'{name}{{night="{date}"}} {value}']
    name = f"{PREFIX}_alert"
    lines += [f"# HELP {name} 1 when the night raised this kind of alert", f"# TYPE {name} gauge"]
    lines += [f'{name}{{night="{date}",kind="{kind}"}} {int(kind in figures.get("alerts", []))}' for kind in KINDS]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, date: str, figures: dict[str, Any]) -> None:
    """Replace ``path`` with the night's figures (its directory must exist: the collector's)."""
    atomic_write_bytes(path, render(date, figures).encode(), make_parents=False)
