"""A night's health (imperative shell): its figures from the frames' records and the masters, its flat
against the previous night's own, the alerts against the last nights, the Prometheus file.

Called by ``pipeline.close_night`` (``once``, the daemon and ``reprocess`` alike) when the night's
summary is remade, before the ledger is saved: the figures go into ``night["health"]`` (the summary
shows them, with the trend of the last 7 nights) and, compacted, into the ledger's index row
(``night_totals``), which is all ``trends``, ``status`` and the next nights' alerts read. Runs in the
stage runner: a failure is logged (``health_failed``) and recorded, never raised.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from astep_cal.engine.night_masters import find_borrowed_flat
from astep_cal.engine.prometheus import write_textfile
from astep_cal.engine.stages import StageEvents, run_stage
from astep_cal.formats import names, products
from astep_cal.formats.names import split_unit
from astep_cal.formats.raw_night import NightInventory
from astep_cal.science.flat_change import clear_sky_throughput, compare_flats
from astep_cal.state import alerts, entries
from astep_cal.state.ledger import Ledger, median_fwhm
from astep_cal.support.config import Settings

NIGHT_HEALTH_STEP = StageEvents(done=None, failed="health_failed", isolate=True, failed_level="warning")
TREND_NIGHTS = 7


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def frame_figures(night: dict[str, Any], percentile: float) -> dict[str, Any]:
    """The night's figures from its frames' records: clear-sky throughput, zero points, sky, Moon, seeing."""
    frames = night.get("frames", {})
    health = [f["health"] for f in frames.values() if f.get("health", {}).get("status") == "ok"
              and f["health"].get("zp") is not None]
    zps = [h["zp"] for h in health]
    throughput = clear_sky_throughput(zps, percentile)
    quality = [entries.calibration(f).get("quality", {}) for f in frames.values()]
    return {
        "throughput": None if throughput is None else round(throughput, 4),
        "zp_median": _median(zps), "n_zp": len(zps),
        "zp_frame_scatter": _median([h.get("zp_scatter") for h in health]),
        "sky_mag_arcsec2": _median([h.get("sky_mag_arcsec2") for h in health]),
        "moon_alt_max_deg": max((h["moon_alt_deg"] for h in health if "moon_alt_deg" in h), default=None),
        "moon_illumination": _median([h.get("moon_illumination") for h in health]),
        "fwhm_arcsec": median_fwhm(frames),
        "ellipticity": _median([q.get("ellipticity") for q in quality]),
    }


def detector_figures(night: dict[str, Any], inventory: NightInventory) -> dict[str, Any]:
    """Bias level, read noise, hot pixels, dark current (from the masters' record and its detector
    measurement), gain and CCD temperature."""
    masters = entries.masters_record(night)
    mask, bias, measured = masters.get("mask") or {}, masters.get("bias") or {}, masters.get("detector") or {}
    temps = [f.ccd_temp for f in inventory.science if f.ccd_temp is not None]
    gains = [entries.calibration(f).get("gain") for f in night.get("frames", {}).values()]
    return {"bias_adu": bias.get("bias_adu"), "read_noise_adu": measured.get("read_noise_adu"),
            "read_noise_e": measured.get("read_noise_e"), "n_hot": mask.get("n_hot"),
            "dark_e_per_s": mask.get("dark_e_per_s"), "gain": _median(gains), "ccd_temp_c": _median(temps)}


def flat_figures(root: Path, date: str, night: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """The night's own master flat against the previous night's own (None: borrowed flat, or no earlier
    one). Kept from the last closing when neither flat changed (the comparison reads two masters)."""
    flat = entries.masters_record(night).get("flat") or {}
    if not flat or flat.get("borrowed") or flat.get("night") != date:
        return None
    previous = find_borrowed_flat(root, date, settings.calibration.flat_max_age_days)
    if previous is None:
        return None
    key = [previous[0], flat.get("inputs", [])]
    known = (night.get("health") or {}).get("flat_change")
    thumbnail = names.cal_dir(root, date) / names.FLAT_RATIO
    if known and known.get("key") == key and thumbnail.is_file():
        return known
    h = settings.health
    change = compare_flats(products.read_master(root / flat["file"])[0], products.read_master(previous[1])[0],
                           threshold=h.flat_structure_threshold, min_pixels=h.flat_structure_min_px)
    products.write_flat_ratio(thumbnail, change.thumbnail, previous[0])  # summary.png draws it
    return {"against": previous[0], "key": key, **change.record()}


def history(ledger: Ledger, date: str) -> alerts.History:
    """The same camera's earlier nights' health totals (the index rows: no night file is read)."""
    rows = []
    day, camera = split_unit(date)
    for other in ledger.dates():
        if split_unit(other)[1] == camera and split_unit(other)[0] < day:
            figures = ledger.totals(other).get("health")
            if figures:
                rows.append((other, figures))
    return rows


def trend(past: alerts.History, date: str, figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The last ``TREND_NIGHTS`` nights (this one included) for the summary: a few hundred bytes."""
    keys = ("throughput", "n_hot", "fwhm_arcsec", "ellipticity", "sky_mag_arcsec2")
    rows = [(d, f) for d, f in past[-(TREND_NIGHTS - 1):]] + [(date, alerts.compact(figures))]
    return [{"night": d, **{k: f.get(k) for k in keys}, "alerts": f.get("alerts", [])} for d, f in rows]


def night_health(root: Path, inventory: NightInventory, night: dict[str, Any], ledger: Ledger,
                 settings: Settings, log: Any) -> None:
    """Measure the night's health, raise its alerts (each new one logged once), record it all."""
    h = settings.health
    if not h.enabled or not night.get("frames"):
        return
    date = inventory.date
    with run_stage("health", log, NIGHT_HEALTH_STEP, root=root, fields={"stage": "night health"}) as step:
        figures = {**frame_figures(night, h.throughput_percentile), **detector_figures(night, inventory),
                   "flat_change": flat_figures(root, date, night, settings)}
        past = history(ledger, date)
        found = alerts.evaluate(figures, past, alerts.read_acks(settings.ledger_path(root).parent), h)
        known = {a["kind"] for a in (night.get("health") or {}).get("alerts", [])}
        for alert in found:
            if alert["kind"] not in known:
                log.warning("health_alert", **alert)
        figures["alerts"] = found
        figures["trend"] = trend(past, date, {**figures, "alerts": [a["kind"] for a in found]})
        night["health"] = figures
        log.info("night_health", throughput=figures["throughput"], n_zp=figures["n_zp"], n_hot=figures["n_hot"],
                 fwhm_arcsec=figures["fwhm_arcsec"], alerts=[a["kind"] for a in found])
        failed = write_textfile(Path(h.prometheus_textfile), date, alerts.compact(figures)) \
            if h.prometheus_textfile else None
        if failed:  # the monitoring's file, not the night's health: recorded and logged, never fatal
            figures["prometheus_error"] = failed
            log.warning("prometheus_failed", error=failed)
    if step.get("status") == "failed":
        night["health"] = {"status": "failed", "error": step["error"]}
