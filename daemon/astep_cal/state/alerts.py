"""The instrument's health alerts: a night's figures against the last nights', and their acknowledgements.

Decided from the ledger's per-night totals only (``night_totals(...)["health"]``), never from the frames,
so judging a night costs the same on a 500-night root as on a 5-night one. The kinds:

``throughput``   the clear-sky zero point fell by more than ``throughput_drop_pct`` against the median of
                 the last ``baseline_nights`` (frost or ice on the mirror or the camera window);
``flat``         the master flat shows a new structure (a dust or ice "donut") or a large-scale change
                 against the previous night's own flat (no baseline: the flat comparison is night to night);
``hot_pixels``   the hot-pixel count exceeds the first ``min_baseline_nights`` nights' (median) by
                 ``hot_pixel_rise_pct``: a slow growth does not drag its own baseline along;
``fwhm``         the median FWHM moved by more than ``fwhm_drift_pct`` from the baseline (focus);
``ellipticity``  the median ellipticity rose by more than ``ellipticity_rise`` (guiding);
``read_noise``   the read noise (ADU, from the night's biases or equal darks) moved by more than
                 ``read_noise_jump_pct`` from the baseline (the camera's electronics);
``bias``         the bias level (the night's master bias) moved by more than ``bias_jump_adu`` ADU.

A baseline leaves out nights that raised that alert (an unacknowledged condition keeps alerting until
someone acts) and nights before its last acknowledgement: ``astep-cal ack KIND`` records, in the state
directory (``health_acks.json``, written atomically), the last night known when it was given, and the
baseline of that kind restarts from the next night.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any

from astep_cal.support.config import HealthSettings
from astep_cal.support.storage import atomic_write_bytes

KINDS = ("throughput", "flat", "hot_pixels", "fwhm", "ellipticity", "read_noise", "bias")
ACKS_FILE = "health_acks.json"

History = list[tuple[str, dict[str, Any]]]  # (night, its health totals), oldest first


def _baseline(kind: str, history: History, acks: dict[str, Any], key: str) -> list[tuple[str, float]]:
    """The nights a kind's baseline may use: after its acknowledgement, not alerting it, with ``key``."""
    after = acks.get(kind, {}).get("after_night", "")
    return [(night, figures[key]) for night, figures in history
            if night > after and kind not in figures.get("alerts", []) and figures.get(key) is not None]


def _throughput(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> dict | None:
    recent = _baseline("throughput", history, acks, "throughput")[-h.baseline_nights:]
    if figures.get("throughput") is None or len(recent) < h.min_baseline_nights:
        return None
    reference = statistics.median(v for _, v in recent)
    drop_pct = (1.0 - 10 ** (-0.4 * (reference - figures["throughput"]))) * 100.0
    if drop_pct <= h.throughput_drop_pct:
        return None
    return {"throughput": figures["throughput"], "baseline": round(reference, 4), "drop_pct": round(drop_pct, 2),
            "baseline_nights": len(recent)}


def _flat(figures: dict[str, Any], h: HealthSettings) -> dict | None:
    flat = figures.get("flat_change") or {}
    structures = [s for s in flat.get("structures", []) if s.get("area_px", 0) >= h.flat_structure_min_px
                  and abs(s.get("depth", 0.0)) >= h.flat_structure_threshold]
    large = flat.get("large_scale_std") or 0.0
    if not structures and large <= h.flat_large_scale_max:
        return None
    return {"against": flat.get("against"), "n_structures": len(structures), "structures": structures[:3],
            "large_scale_std": large}


def _hot_pixels(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> dict | None:
    first = _baseline("hot_pixels", history, acks, "n_hot")[:h.min_baseline_nights]
    if figures.get("n_hot") is None or len(first) < h.min_baseline_nights:
        return None
    reference = statistics.median(v for _, v in first)
    rise_pct = (figures["n_hot"] / reference - 1.0) * 100.0 if reference > 0 else 0.0
    if rise_pct <= h.hot_pixel_rise_pct:
        return None
    return {"n_hot": figures["n_hot"], "baseline": reference, "rise_pct": round(rise_pct, 1)}


def _recent_median(kind: str, key: str, figures: dict[str, Any], history: History, acks: dict[str, Any],
                   h: HealthSettings) -> float | None:
    """The median of ``key`` over the last ``baseline_nights`` nights of ``kind``'s baseline; None when
    tonight has no value or the baseline is still too short to judge."""
    recent = _baseline(kind, history, acks, key)[-h.baseline_nights:]
    if figures.get(key) is None or len(recent) < h.min_baseline_nights:
        return None
    return statistics.median(v for _, v in recent)


def _fwhm(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> dict | None:
    reference = _recent_median("fwhm", "fwhm_arcsec", figures, history, acks, h)
    if reference is None:
        return None
    drift_pct = (figures["fwhm_arcsec"] / reference - 1.0) * 100.0
    if abs(drift_pct) <= h.fwhm_drift_pct:
        return None
    return {"fwhm_arcsec": figures["fwhm_arcsec"], "baseline": reference, "drift_pct": round(drift_pct, 1)}


def _ellipticity(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> dict | None:
    reference = _recent_median("ellipticity", "ellipticity", figures, history, acks, h)
    if reference is None:
        return None
    rise = figures["ellipticity"] - reference
    if rise <= h.ellipticity_rise:
        return None
    return {"ellipticity": figures["ellipticity"], "baseline": reference, "rise": round(rise, 3)}


def _read_noise(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> dict | None:
    reference = _recent_median("read_noise", "read_noise_adu", figures, history, acks, h)
    if reference is None or reference <= 0:
        return None
    jump_pct = (figures["read_noise_adu"] / reference - 1.0) * 100.0
    if abs(jump_pct) <= h.read_noise_jump_pct:
        return None
    return {"read_noise_adu": figures["read_noise_adu"], "baseline": round(reference, 3), "jump_pct": round(jump_pct, 1)}


def _bias(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> dict | None:
    reference = _recent_median("bias", "bias_adu", figures, history, acks, h)
    if reference is None:
        return None
    jump = figures["bias_adu"] - reference
    if abs(jump) <= h.bias_jump_adu:
        return None
    return {"bias_adu": figures["bias_adu"], "baseline": round(reference, 2), "jump_adu": round(jump, 2)}


def evaluate(figures: dict[str, Any], history: History, acks: dict[str, Any], h: HealthSettings) -> list[dict]:
    """The alerts a night raises: ``[{"kind": ..., figures...}]`` (``history``: earlier nights only)."""
    found = {"throughput": _throughput(figures, history, acks, h), "flat": _flat(figures, h),
             "hot_pixels": _hot_pixels(figures, history, acks, h), "fwhm": _fwhm(figures, history, acks, h),
             "ellipticity": _ellipticity(figures, history, acks, h),
             "read_noise": _read_noise(figures, history, acks, h), "bias": _bias(figures, history, acks, h)}
    return [{"kind": kind, **details} for kind, details in found.items() if details is not None]


def alert_line(night: str, alert: dict[str, Any]) -> str:
    """One alert as ``status`` and ``report`` show it."""
    figures = ", ".join(f"{k} {v}" for k, v in alert.items() if k != "kind" and not isinstance(v, (list, dict)))
    return f"ALERT {night} {alert['kind']}: {figures}"


# --- acknowledgements -----------------------------------------------------------------------------

def acks_path(state_dir: Path) -> Path:
    return state_dir / ACKS_FILE


def read_acks(state_dir: Path) -> dict[str, Any]:
    """``{kind: {"after_night": date, "at": iso time}}``; {} when none was ever given (or unreadable)."""
    try:
        data = json.loads(acks_path(state_dir).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    # a hand-edited or planted file: only well-formed entries count
    return {kind: ack for kind, ack in data.items()
            if isinstance(ack, dict) and isinstance(ack.get("after_night", ""), str)}


def acknowledge(state_dir: Path, kind: str, after_night: str) -> dict[str, Any]:
    """Record that ``kind`` was acknowledged: its baseline restarts from the night after ``after_night``."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}: one of {', '.join(KINDS)}")
    acks = read_acks(state_dir)
    acks[kind] = {"after_night": after_night, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(acks_path(state_dir), json.dumps(acks, indent=1, sort_keys=True).encode())
    return acks[kind]


# --- what the ledger's index keeps of a night's health ------------------------------------------

TOTAL_KEYS = ("throughput", "zp_median", "n_zp", "sky_mag_arcsec2", "moon_alt_max_deg", "fwhm_arcsec",
              "ellipticity", "bias_adu", "read_noise_adu", "read_noise_e", "n_hot", "dark_e_per_s", "gain",
              "ccd_temp_c")


def compact(health: dict[str, Any] | None) -> dict[str, Any] | None:
    """A night's health as its index row keeps it: the scalar figures, the flat change in two numbers,
    the alerts' kinds and lines (a few hundred bytes: ``trends`` on 500 nights reads the index alone)."""
    if not health or "status" in health:
        return None
    flat = health.get("flat_change") or {}
    found = health.get("alerts", [])
    kinds = [a["kind"] if isinstance(a, dict) else a for a in found]
    return {**{k: health.get(k) for k in TOTAL_KEYS},
            "flat_structures": flat.get("n_structures"), "flat_large_scale_std": flat.get("large_scale_std"),
            "flat_against": flat.get("against"), "alerts": kinds,
            "alert_details": [a for a in found if isinstance(a, dict)]}
