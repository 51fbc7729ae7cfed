"""Typed settings, read from a TOML file (``etc/astep-cal.toml`` documents every key).

Every setting has a default so the service runs with no file at all. Unknown keys and values of the
wrong type are refused with a :class:`ConfigError` naming the key: a typo in a config file at a polar
station must not silently fall back to a default nobody chose.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astep_cal.support.settings import (  # noqa: F401 (the types, re-exported: callers import them from here)
    AstrometrySettings,
    CalibrationSettings,
    ConfigError,
    CosmicSettings,
    DaemonSettings,
    HeaderSettings,
    HealthSettings,
    LoggingSettings,
    OutputSettings,
    PhotometrySettings,
    QualitySettings,
    Settings,
    Target,
)

_SECTIONS = {
    "calibration": CalibrationSettings,
    "cosmics": CosmicSettings,
    "astrometry": AstrometrySettings,
    "quality": QualitySettings,
    "output": OutputSettings,
    "photometry": PhotometrySettings,
    "headers": HeaderSettings,
    "health": HealthSettings,
    "daemon": DaemonSettings,
    "logging": LoggingSettings,
}


def _cameras(value: Any) -> list[str]:
    """``cameras``: a list of directory suffixes, or ``"auto"`` (kept as ``["auto"]``)."""
    if value == "auto":
        return ["auto"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'cameras: expected a list of camera suffixes or "auto", got {value!r}')
    return value


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of its default (ints are accepted for floats)."""
    if isinstance(default, tuple):
        return _coerce_list(name, value, "" if name.startswith("headers.") or name == "cameras" else 0.0)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # TOML has nan and inf: no setting means either
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{name}: expected {type(default).__name__}, got {value!r}")
    return value


def _coerce_list(name: str, value: Any, item_default: Any = 0.0) -> tuple:
    """The list settings: ``targets`` (tables name/ra/dec), the radius factors (numbers) and the header
    keyword lists (strings: ``item_default``)."""
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    if name.endswith("targets"):
        optional = {"t0", "period", "duration_h"}
        for item in value:
            if not isinstance(item, dict) or not {"name", "ra", "dec"} <= set(item) <= {"name", "ra", "dec"} | optional:
                raise ConfigError(f"{name}: each target is {{ name = ..., ra = ..., dec = ... }} (and optionally "
                                  f"t0, period, duration_h), got {item!r}")
        return tuple(Target(**{key: _coerce(f"{name}.{key}", v, "" if key == "name" else 0.0)
                               for key, v in item.items()}) for item in value)
    return tuple(_coerce(f"{name}[]", item, item_default) for item in value)


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown setting {prefix}{key}")
        kwargs[key] = _coerce(prefix + key, value, getattr(defaults, key))
    return cls(**kwargs)


@dataclass(frozen=True)
class _TopLevel:
    """The top-level keys of the file (the sections are separate dataclasses)."""

    data_root: str = ""
    ledger: str = ""
    mem_limit_gb: float = 2.0
    cameras: tuple[str, ...] = ("CAMS",)


def settings_from_dict(data: dict[str, Any]) -> Settings:
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table")
            sections[key] = _build(_SECTIONS[key], value, f"{key}.")
        elif key == "cameras":
            top[key] = _cameras(value)
        else:
            top[key] = value
    base = _build(_TopLevel, top, "")
    settings = Settings(**dataclasses.asdict(base), **sections)
    validate(settings)
    return settings


YEAR_S = 366 * 86400.0
# Every number's range (low, high, low excluded?): a value outside is refused, whatever the relations
# checked after. The high bounds keep durations within what a wait accepts (threading refuses a
# timeout of 1e300 s with OverflowError, from the worker thread) and counts within what makes sense.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "mem_limit_gb": (0.1, 65536.0, True),
    "calibration.default_gain": (0, 1e4, True), "calibration.default_read_noise": (0, 1e5, False),
    "calibration.saturation_adu": (0, 1e9, True), "calibration.combine_sigma": (0, 1e3, True),
    "calibration.flat_max_age_days": (0, 3660, False), "calibration.hot_pixel_rate": (0, 1e9, False),
    "calibration.hot_pixel_sigma": (0, 1e6, True), "calibration.dead_flat_level": (0, 1, False),
    "calibration.low_flat_level": (0, 1, False), "calibration.flat_min_level_adu": (0, 1e9, False),
    "calibration.flat_max_level_adu": (0, 1e9, True), "calibration.dark_temp_tolerance_c": (0, 1e3, True),
    "cosmics.sigclip": (0, 1e3, True), "cosmics.sigfrac": (0, 1e3, True), "cosmics.objlim": (0, 1e3, True),
    "cosmics.niter": (1, 100, False),
    "astrometry.scale_low_deg": (0, 360, True), "astrometry.scale_high_deg": (0, 360, True),
    "astrometry.search_radius_deg": (0, 180, True), "astrometry.downsample": (0, 64, False),
    "astrometry.cpulimit_s": (0, YEAR_S, True), "astrometry.timeout_s": (0, YEAR_S, True),
    "astrometry.max_tries": (1, 1000, False), "astrometry.retry_backoff_s": (0, YEAR_S, False),
    "quality.pixel_scale_arcsec": (0, 3600, True), "quality.detect_sigma": (0, 1e3, True),
    "quality.fwhm_stars": (1, 10_000, False),
    "output.quantize_level": (0, 1e6, True),
    "photometry.bin_minutes": (0, 1440, True), "photometry.max_sources": (1, 10_000_000, False),
    "daemon.settle_seconds": (0, YEAR_S, False), "daemon.no_flat_wait_s": (0, YEAR_S, False),
    "daemon.reconcile_interval_s": (0, YEAR_S, True), "daemon.poll_interval_s": (0, YEAR_S, True),
    "daemon.stall_timeout_s": (0, YEAR_S, True), "daemon.stop_grace_s": (0, YEAR_S, False),
    "daemon.storage_retry_s": (0, YEAR_S, True), "daemon.stuck_retry_s": (0, YEAR_S, True),
    "daemon.stuck_retry_max_s": (0, YEAR_S, True), "daemon.close_delay_s": (0, 86400, False),
}


def _numbers(settings: Settings) -> dict[str, Any]:
    """Every number of the settings by its dotted name (lists and targets included)."""
    found: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value):
            for item in dataclasses.fields(value):
                walk(f"{prefix}{item.name}" if not prefix else f"{prefix}.{item.name}", getattr(value, item.name))
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[prefix] = value

    walk("", settings)
    return found


def _check_ranges(settings: Settings) -> None:
    for name, value in _numbers(settings).items():
        if not math.isfinite(value):  # an override (--mem-limit nan) did not come through _coerce
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        if name in _RANGES:
            low, high, open_low = _RANGES[name]
            if value > high or value < low or (open_low and value == low):
                raise ConfigError(f"{name}: {value!r} is out of range ({'>' if open_low else '>='} {low:g}, "
                                  f"<= {high:g})")


def validate(settings: Settings) -> None:
    """Refuse values that are well-typed but meaningless: non-finite numbers, numbers out of their
    range (:data:`_RANGES`), and inconsistent pairs."""
    _check_ranges(settings)
    _validate_cameras(settings.cameras)
    a = settings.astrometry
    if not 0 < a.scale_low_deg <= a.scale_high_deg:
        raise ConfigError("astrometry.scale_low_deg must be > 0 and <= scale_high_deg")
    if min(a.frame_budget_s, a.night_budget_s, a.hint_radius_deg, a.hint_scale_tolerance, a.wait_fraction) <= 0:
        raise ConfigError("astrometry frame_budget_s, night_budget_s, wait_fraction, hint_radius_deg and "
                          "hint_scale_tolerance must be positive")
    if a.timeout_s <= 0 or a.cpulimit_s <= 0 or a.max_tries < 1 or a.downsample < 0:
        raise ConfigError("astrometry timeout_s, cpulimit_s and max_tries must be positive, downsample 0 "
                          "(automatic) or more")
    d = settings.daemon
    if min(d.settle_seconds, d.no_flat_wait_s, d.stop_grace_s) < 0 or min(
            d.reconcile_interval_s, d.poll_interval_s, d.stall_timeout_s, d.storage_retry_s, d.stuck_retry_s) <= 0 \
            or d.stuck_retry_max_s < d.stuck_retry_s:
        raise ConfigError("daemon intervals must be positive")
    c = settings.calibration
    if not 0 <= c.flat_min_level_adu < c.flat_max_level_adu or c.dark_temp_tolerance_c <= 0:
        raise ConfigError("calibration: need 0 <= flat_min_level_adu < flat_max_level_adu and "
                          "dark_temp_tolerance_c > 0")
    if c.trim < 0 or c.default_gain <= 0 or c.default_read_noise <= 0:
        raise ConfigError("calibration: trim must be 0 or more, default_gain and default_read_noise positive")
    q = settings.quality
    if q.pixel_scale_arcsec <= 0 or q.detect_sigma <= 0 or q.fwhm_stars < 1:
        raise ConfigError("quality pixel_scale_arcsec, detect_sigma and fwhm_stars must be positive")
    _validate_photometry(settings.photometry)
    o = settings.output
    if o.quantize_level <= 0 or o.err_quantize_level <= 0 or o.tile_rows < 1:
        raise ConfigError("output.quantize_level and err_quantize_level must be positive, tile_rows >= 1")
    h = settings.headers
    keys = [k for f in dataclasses.fields(h) for k in getattr(h, f.name)]
    if any(not k.strip() for k in keys) or any(len([p for p in k.split("/") if p.strip()]) != 2 for k in h.pointing):
        raise ConfigError("headers: keywords must not be empty; pointing entries are \"RAKEY/DECKEY\"")
    h = settings.health
    if not 0 < h.throughput_percentile <= 100 or h.baseline_nights < 1 or h.min_baseline_nights < 1 \
            or h.query_timeout_s <= 0 or min(h.throughput_drop_pct, h.hot_pixel_rise_pct, h.fwhm_drift_pct,
                                             h.read_noise_jump_pct, h.bias_jump_adu) <= 0:
        raise ConfigError("health: throughput_percentile in (0, 100], baseline nights, query_timeout_s and "
                          "the alert thresholds must be positive")
    if settings.cosmics.niter < 1:
        raise ConfigError("cosmics.niter must be at least 1")
    if settings.logging.format not in {"auto", "console", "json", "journal"}:
        raise ConfigError("logging.format must be auto, console, json or journal")
    if settings.logging.level not in {"debug", "info", "warning", "error"}:
        raise ConfigError("logging.level must be debug, info, warning or error")


def _validate_cameras(cameras: tuple[str, ...]) -> None:
    """Suffixes become directory names and night keys (``DATE-CAMR``): capitals and digits only, unique."""
    if cameras == ("auto",):
        return
    if not cameras or len(set(cameras)) != len(cameras) or not all(re.fullmatch(r"[A-Z0-9]+", c) for c in cameras):
        raise ConfigError('cameras: a list of unique directory suffixes of capitals and digits ("CAMB", "CAMR"), '
                          f'or "auto"; got {list(cameras)!r}')


def _validate_photometry(p: PhotometrySettings) -> None:
    if not p.aperture_factors or min(p.aperture_factors) <= 0 or p.bin_minutes <= 0 or p.max_sources < 1:
        raise ConfigError("photometry: aperture_factors must be positive (at least one), bin_minutes and "
                          "max_sources positive")
    if len(p.annulus_factors) != 2 or not max(p.aperture_factors) < p.annulus_factors[0] < p.annulus_factors[1]:
        raise ConfigError("photometry.annulus_factors: [inner, outer] beyond the largest aperture")
    names = [t.name for t in p.targets]
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise ConfigError("photometry.targets: names must be unique and not empty")
    if any(t.period < 0 or t.duration_h < 0 or (t.period > 0) != (t.duration_h > 0) for t in p.targets):
        raise ConfigError("photometry.targets: an ephemeris needs both period (days) and duration_h (hours) > 0")
    if any(not (0 <= t.ra < 360 and -90 <= t.dec <= 90) for t in p.targets):
        raise ConfigError("photometry.targets: ra in [0, 360), dec in [-90, 90] (degrees)")


def load_settings(path: Path | None) -> Settings:
    """Read settings from ``path`` (``None``: all defaults)."""
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {path}: {error}") from None
    return settings_from_dict(data)


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy with top-level values replaced (command-line options win over the file), validated
    like the file (``--mem-limit nan`` is refused as ``mem_limit_gb = nan`` would be)."""
    changed = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})
    validate(changed)
    return changed
