"""What the ledger says, per night, for people: ``astep-cal status`` and the exit code behind it."""

from __future__ import annotations

from typing import Any

from astep_cal.state.ledger import Ledger, night_totals
from astep_cal.support.config import Settings
from astep_cal.support.text import printable

_COLUMNS = ("night", "frames", "calibrated", "solved", "failed", "retries", "blocked", "fwhm", "darks", "flat",
            "state")


def night_row(date: str, totals: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Counts and state of one night from its totals (``ledger.night_totals``, kept in the index)."""
    science, calibrated, solved = totals["science"], totals["calibrated"], totals["solved"]
    blocked = totals["blocked"]
    failed = totals["cal_failed"] + totals["solve_failed"]
    solving = settings.astrometry.enabled
    problems = totals["problems"]
    stuck = totals.get("stuck")  # absent from index rows written before it existed
    if stuck:
        state = "stuck"
    elif blocked:
        state = "blocked"
    elif failed:
        state = "attention"
    elif calibrated == science and (solved == calibrated or not solving):
        state = "done"
    else:
        state = "incomplete"
    max_tries = settings.astrometry.max_tries
    retries = sum(n for tries, n in totals["failed_solve_tries"].items() if int(tries) < max_tries)
    flat = totals["flat"]
    flat_text = "none" if flat is None else ("own" if flat == "own" else f"from {flat}")
    return {"night": date, "frames": science, "calibrated": calibrated, "solved": solved, "failed": failed,
            "retries_pending": retries, "deferred": totals.get("solve_deferred", 0), "blocked": blocked,
            "fwhm_arcsec": totals["fwhm_arcsec"],
            "darks": ",".join(f"{t}s" for t in totals["darks"]) or "none",
            "flat": flat_text, "state": state, "problems": problems, "attention": state != "done" or problems > 0,
            "stuck_reason": stuck}


def night_row_of(date: str, night: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The status row of a night record (computing its totals)."""
    return night_row(date, night_totals(night), settings)


def night_rows(ledger: Ledger, settings: Settings, dates: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows from the index: no night file is opened, whatever the size of the archive."""
    return [night_row(date, ledger.totals(date), settings) for date in (ledger.dates() if dates is None else dates)]


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "retries":
        return str(row["retries_pending"])
    if column == "fwhm":  # median FWHM in arcsec
        return "-" if row["fwhm_arcsec"] is None else f"{row['fwhm_arcsec']:.2f}\""
    return str(row[column])


def render_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table; ``retries`` are failed solves still to be retried, ``fwhm`` the night's
    median FWHM in arcsec; problems (unusable files) are counted in a last column."""
    header = list(_COLUMNS) + ["problems"]
    cells = [[_cell(row, c) for c in header] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines += [f"{row['night']} stuck: {printable(row['stuck_reason'])}" for row in rows if row.get("stuck_reason")]
    return "\n".join(lines)

