"""What the ledger says, per night, for people: ``astep-cal status`` and the exit code behind it."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .ledger import Ledger
from .summary import median_of, night_frames, retry_pending

_COLUMNS = ("night", "frames", "calibrated", "solved", "failed", "retries", "blocked", "fwhm", "darks", "flat",
            "state")


def night_row(date: str, night: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Counts and state of one night from its ledger record."""
    frames = night.get("frames", {})
    calibrated = sum(1 for f in frames.values() if f.get("calibrate", {}).get("status") == "ok")
    solved = sum(1 for f in frames.values() if f.get("astrometry", {}).get("status") == "solved")
    cal_failed = sum(1 for f in frames.values() if f.get("calibrate", {}).get("status") == "failed")
    solve_failed = sum(1 for f in frames.values() if f.get("astrometry", {}).get("status") == "failed")
    blocked = sum(1 for f in frames.values() if f.get("calibrate", {}).get("status") == "blocked")
    masters = night.get("masters", {})
    flat = masters.get("flat")
    flat_text = "none" if not flat else ("own" if not flat.get("borrowed") else f"from {flat['night']}")
    darks = ",".join(f"{t}s" for t in sorted(masters.get("darks", {}), key=float)) or "none"
    science = night.get("inventory", {}).get("science", len(frames))
    solving = settings.astrometry.enabled
    failed = cal_failed + solve_failed
    problems = len(night.get("problems", []))
    if blocked:
        state = "blocked"
    elif failed:
        state = "attention"
    elif calibrated == science and (solved == calibrated or not solving):
        state = "done"
    else:
        state = "incomplete"
    retries = sum(1 for f in frames.values() if retry_pending(f, settings.astrometry.max_tries))
    fwhm = median_of(night_frames(night), "fwhm_arcsec")
    return {"night": date, "frames": science, "calibrated": calibrated, "solved": solved, "failed": failed,
            "retries_pending": retries, "blocked": blocked, "fwhm_arcsec": fwhm, "darks": darks,
            "flat": flat_text, "state": state, "problems": problems, "attention": state != "done" or problems > 0}


def night_rows(ledger: Ledger, settings: Settings) -> list[dict[str, Any]]:
    return [night_row(date, night, settings) for date, night in sorted(ledger.nights().items())]


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
    return "\n".join(lines)
