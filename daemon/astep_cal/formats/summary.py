"""The nightly summary: what an astronomer in the north needs to decide whether last night was usable.

Only small products leave Concordia by satellite, so a night is summed up in two files written next
to its CAL frames, together well under 300 KB:

* ``summary.json``: counts, the masters used and where they came from, failures with their reasons,
  and the quality metrics of every frame (schema below, ``SCHEMA_VERSION``);
* ``summary.png``: sky, FWHM, star count and WCS residual against time, failures marked, a
  thumbnail of the master flat and of its ratio to the previous night's own flat (summary_png).

Both are built from the ledger alone (the ledger already holds every metric), so the summary, the
``astep-cal report`` text and the status table can never disagree. The pipeline rewrites the two files
only when the summary's content changed, so a run with nothing to do writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astep_cal import __version__
from astep_cal.formats import products, summary_png
from astep_cal.formats.lightcurve_products import summary_section
from astep_cal.formats.names import FLAT_RATIO, SUMMARY_JSON, SUMMARY_PNG, cal_dir
from astep_cal.frontends.status import night_row_of
from astep_cal.state import entries
from astep_cal.support.config import Settings
from astep_cal.support.storage import atomic_write_bytes

SCHEMA_VERSION = 1


FRAME_COLUMNS = ("frame", "time", "calibrate", "astrometry", "sky_e", "sky_noise_e", "n_stars", "fwhm_arcsec",
                 "fwhm_px", "ellipticity", "n_cosmic", "masked_fraction", "wcs_residual_arcsec", "wcs_matched",
                 "zp", "sky_mag_arcsec2")
METRICS = ("sky_e", "sky_noise_e", "n_stars", "fwhm_arcsec", "ellipticity", "n_cosmic", "masked_fraction",
           "wcs_residual_arcsec")


def summary_path(directory: Path) -> Path:
    return directory / SUMMARY_JSON


# --- per-frame metrics from the ledger ------------------------------------------------------------

def frame_time(name: str, entry: dict[str, Any]) -> str | None:
    """ISO time of the exposure: ``DATE-OBS`` as recorded, else the time in the file name."""
    recorded = entries.calibration(entry).get("date_obs")
    if recorded:
        return str(recorded)[:19]  # to the second: the summary has no use for milliseconds
    try:
        return dt.datetime.strptime(name[:19], "%Y-%m-%d_%H.%M.%S").isoformat()
    except ValueError:
        return None


def frame_metrics(name: str, entry: dict[str, Any], solving: bool = True) -> dict[str, Any]:
    """One frame's row of the summary, from its ledger entry (``solving``: astrometry is enabled).

    FWHM in arcsec uses the solved WCS's pixel scale when the frame is solved, else the nominal scale
    recorded at calibration.
    """
    calibrate = entries.calibration(entry)
    solve = entries.solve(entry)
    measured = calibrate.get("quality", {})
    fwhm = measured.get("fwhm_arcsec")
    if measured.get("fwhm_px") is not None and solve.get("pixel_scale_arcsec"):
        fwhm = round(measured["fwhm_px"] * solve["pixel_scale_arcsec"], 3)
    return {
        "frame": name,
        "time": frame_time(name, entry),
        "calibrate": calibrate.get("status", "pending"),
        "astrometry": solve.get("status", _unsolved_state(calibrate.get("status"), solving)),
        "sky_e": calibrate.get("sky_e"),
        "sky_noise_e": measured.get("sky_noise_e"),
        "n_stars": measured.get("n_stars"),
        "fwhm_arcsec": fwhm,
        "fwhm_px": measured.get("fwhm_px"),
        "ellipticity": measured.get("ellipticity"),
        "n_cosmic": calibrate.get("n_cosmic"),
        "masked_fraction": measured.get("masked_fraction"),
        "wcs_residual_arcsec": solve.get("residual_arcsec"),
        "wcs_matched": solve.get("n_matched"),
        "zp": entry.get("health", {}).get("zp"),  # the frame's zero point (docs/pages/health.md)
        "sky_mag_arcsec2": entry.get("health", {}).get("sky_mag_arcsec2"),
    }


def _unsolved_state(calibrated: str | None, solving: bool) -> str:
    if not solving:
        return "off"
    return "pending" if calibrated == "ok" else "none"


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return round(float(statistics.median(values)), 3) if values else None


def night_frames(night: dict[str, Any], solving: bool = True) -> list[dict[str, Any]]:
    """Every frame's metrics row, in time order."""
    rows = [frame_metrics(name, entry, solving) for name, entry in night.get("frames", {}).items()]
    return sorted(rows, key=lambda row: (row["time"] or "", row["frame"]))


def retry_pending(entry: dict[str, Any], max_tries: int) -> bool:
    """A failed solve that a later run will try again (not yet ``max_tries`` tries)."""
    solve = entries.solve(entry)
    return solve.get("status") == "failed" and solve.get("tries", 0) < max_tries


# --- the summary document -------------------------------------------------------------------------

def _masters(record: dict[str, Any]) -> dict[str, Any]:
    flat = record.get("flat")
    if not flat:
        flat_summary: dict[str, Any] = {"origin": "none"}
    else:
        flat_summary = {"origin": "borrowed" if flat.get("borrowed") else "own", "night": flat.get("night"),
                        "file": flat.get("file"), "n_inputs": len(flat.get("inputs", [])) or None}
    darks = {f"{float(t):g}": {"file": d.get("file"), "n_inputs": len(d.get("inputs", []))}
             for t, d in sorted(record.get("darks", {}).items(), key=lambda item: float(item[0]))}
    bias = record.get("bias")
    return {
        "bias": {"file": bias.get("file"), "n_inputs": len(bias.get("inputs", []))} if bias else None,
        "bias_origin": record.get("bias_origin"),
        "darks": darks,
        "flat": flat_summary,
        "bad_pixels": record.get("mask", {}).get("n_bad"),
    }


_DETECTOR_KEYS = ("status", "read_noise_adu", "read_noise_e", "read_noise_from", "read_noise_pairs", "gain",
                  "gain_pairs", "dark_current_adu_s", "dark_current_e_s", "trim", "read_noise_unmeasured",
                  "gain_unmeasured", "mismatches", "error")


def _detector(night: dict[str, Any]) -> dict[str, Any]:
    """The night's measured detector and, per quantity, how many frames took it from each source
    (``header``, ``measured``, ``default``): which noise model the night was calibrated with."""
    measured = entries.masters_record(night).get("detector", {})
    used: dict[str, dict[str, int]] = {"gain": {}, "read_noise": {}}
    for entry in night.get("frames", {}).values():
        record = entries.calibration(entry)
        for quantity in used:
            source = record.get(f"{quantity}_source")
            if record.get("status") == "ok" and source:
                used[quantity][source] = used[quantity].get(source, 0) + 1
    return {**{key: measured[key] for key in _DETECTOR_KEYS if key in measured}, "used": used}


def _failures(night: dict[str, Any], max_tries: int) -> list[dict[str, Any]]:
    """Failed and blocked frames grouped by stage and reason: a night where every solve failed for one
    reason is one entry (with its frames listed), not 800 copies of the same sentence."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name, entry in sorted(night.get("frames", {}).items()):
        for stage in ("calibrate", "astrometry"):
            record = entry.get(stage, {})
            if record.get("status") not in ("failed", "blocked"):
                continue
            key = (stage, record["status"], str(record.get("error")))
            group = groups.setdefault(key, {"stage": stage, "status": record["status"], "error": key[2],
                                            "n_frames": 0, "retries_pending": 0, "frames": []})
            group["n_frames"] += 1
            group["retries_pending"] += stage == "astrometry" and retry_pending(entry, max_tries)
            group["frames"].append(name)
    return sorted(groups.values(), key=lambda g: -g["n_frames"])


def frame_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-frame rows as one table (column names once): 812 frames make ~120 KB instead of ~270 KB."""
    return {"columns": list(FRAME_COLUMNS), "rows": [[row.get(c) for c in FRAME_COLUMNS] for row in rows]}


def frame_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-frame rows of a summary document as dictionaries (the inverse of :func:`frame_table`)."""
    table = document["frames"]
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def build_summary(date: str, night: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The summary document of one night, from its ledger record (pure: no file is read)."""
    row = night_row_of(date, night, settings)
    frames = night_frames(night, settings.astrometry.enabled)
    return {
        "schema": SCHEMA_VERSION,
        "night": date,
        "software": __version__,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "state": row["state"],
        "attention": row["attention"],
        "counts": {key: row[key] for key in ("frames", "calibrated", "solved", "failed", "blocked",
                                             "retries_pending", "problems")},
        "medians": {key: median_of(frames, key) for key in METRICS},
        "masters": {**_masters(entries.masters_record(night)), "detector": _detector(night)},
        "failures": _failures(night, settings.astrometry.max_tries),
        "problems": night.get("problems", []),
        "frames": frame_table(frames),
        "photometry": summary_section(entries.photometry_record(night)),
        "health": night.get("health"),
        **_depth_ratios(entries.photometry_record(night)),
    }


def _depth_ratios(photometry: dict[str, Any] | None) -> dict[str, Any]:
    """``depth_ratios`` (ASTEP+: blue/red transit depth per target, formats/depth_ratio_products.py), only
    on nights that have one: a single-camera night's summary is unchanged."""
    ratios = (photometry or {}).get("depth_ratios")
    return {"depth_ratios": ratios} if ratios else {}


def _without_time(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "generated"}


def _same_content(document: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` already holds ``document`` (the generation time aside)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    fresh = json.loads(json.dumps(document))  # as it would read back (tuples become lists ...)
    return isinstance(old, dict) and _without_time(old) == _without_time(fresh)


REQUIRED_KEYS = ("schema", "night", "state", "attention", "counts", "medians", "masters", "failures", "problems",
                 "frames")


def is_summary(document: Any) -> bool:
    """Whether a JSON document is a summary this version can read (``report`` on a received file)."""
    return (isinstance(document, dict) and all(key in document for key in REQUIRED_KEYS)
            and document["schema"] == SCHEMA_VERSION)


@dataclass
class Written:
    json_path: Path
    png_path: Path
    json_kb: float
    png_kb: float | None  # None: the PNG was left for later (``png=False``)


def write_summary(root: Path, date: str, night: dict[str, Any], settings: Settings, png: bool = True,
                  refresh_png: bool = False) -> Written | None:
    """Write summary.png then summary.json (atomically) unless unchanged; None when nothing was written.

    The PNG goes first: a summary.json on disk describes the PNG beside it, except while the daemon
    defers the picture (``png=False``: the JSON alone, the night's ledger record says the PNG is
    pending). ``refresh_png``: draw the PNG even when summary.json already holds this content (the
    deferred picture, drawn once frames stop arriving).
    """
    directory = cal_dir(root, date)
    document = build_summary(date, night, settings)
    json_path, png_path = directory / SUMMARY_JSON, directory / SUMMARY_PNG
    same = _same_content(document, json_path)
    if same and (not png or (png_path.is_file() and not refresh_png)):
        return None
    picture = None
    if png:
        compared = (night.get("health") or {}).get("flat_change")
        ratio = products.read_flat_ratio(directory / FLAT_RATIO) if compared else None
        picture = render_png(document, summary_png.flat_preview(root, entries.masters_record(night)), ratio)
    payload = json.dumps(document, separators=(",", ":")).encode()
    if picture is not None:
        atomic_write_bytes(png_path, picture, make_parents=False)
    if not same or picture is None:
        atomic_write_bytes(json_path, payload, make_parents=False)
    return Written(json_path, png_path, round(len(payload) / 1024, 1),
                   round(len(picture) / 1024, 1) if picture is not None else None)


# --- the picture (formats/summary_png.py) ---------------------------------------------------------

def render_png(document: dict[str, Any], flat: np.ndarray | None, ratio: tuple[np.ndarray, str] | None = None) -> bytes:
    """The night at a glance, as a small palette PNG: see :func:`summary_png.render`."""
    return summary_png.render(document, frame_rows(document), flat, ratio)
