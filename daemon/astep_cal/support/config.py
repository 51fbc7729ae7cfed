"""Typed settings, read from a TOML file (``etc/astep-cal.toml`` documents every key).

Every setting has a default so the service runs with no file at all. Unknown keys and values of the
wrong type are refused with a :class:`ConfigError` naming the key: a typo in a config file at a polar
station must not silently fall back to a default nobody chose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has a bad key or value."""


@dataclass(frozen=True)
class CalibrationSettings:
    """How masters are built and science frames calibrated (changing these redoes calibrated frames)."""

    default_gain: float = 2.0  # e-/ADU when a frame has no GAIN keyword and the night's flats gave no measurement
    default_read_noise: float = 9.0  # e- when a frame has no RDNOISE keyword and no biases/darks pair measured it
    saturation_adu: float = 65535.0  # raw level at and above which a pixel is saturated
    combine_sigma: float = 3.0  # sigma-clipping threshold when combining darks, biases and flats
    flat_max_age_days: int = 30  # how far back a night without sky flats may borrow a master flat
    hot_pixel_rate: float = 5.0  # e-/s: dark current above median + this is a hot pixel
    hot_pixel_sigma: float = 8.0  # ... and it must also stand this many robust sigmas above the median
    dead_flat_level: float = 0.2  # flat response below this: dead pixel (bad)
    low_flat_level: float = 0.5  # flat response below this: low-flat pixel (flagged, still divided)
    flat_min_level_adu: float = 2000.0  # a sky flat dimmer than this (dark-subtracted median) is left out
    flat_max_level_adu: float = 50000.0  # ... and one brighter than this (near saturation) too
    dark_temp_tolerance_c: float = 3.0  # darks whose CCD-TEMP is further than this from the science frames'
    trim: int = 0  # px of each edge flagged BORDER in MASK (not cropped) and left out of the detector measurement


@dataclass(frozen=True)
class CosmicSettings:
    """astroscrappy (L.A.Cosmic) parameters; the data given to it are in electrons.

    Chosen by the measured residual against synthetic truth, not by astroscrappy's defaults: with the
    track-edge growth and median repair of ``calibrate``, one iteration removes as many injected
    cosmic-ray pixels as four (99.0-99.4 %), sigclip 5 flags a third fewer clean pixels than 4.5, and
    the step runs 1.5x faster.
    """

    sigclip: float = 5.0
    sigfrac: float = 0.3
    objlim: float = 5.0
    niter: int = 1
    sepmed: bool = True
    cleantype: str = "meanmask"
    fsmode: str = "median"


@dataclass(frozen=True)
class AstrometrySettings:
    """Astrometry.net ``solve-field`` options."""

    enabled: bool = True
    solve_field: str = "solve-field"  # executable name or path
    config_file: str = ""  # solve-field --config (index paths); empty: its default /etc/astrometry.cfg
    scale_low_deg: float = 0.9  # field width limits (the old pipeline's 0.9-1.1 deg)
    scale_high_deg: float = 1.1
    use_header_pointing: bool = True  # pass RA/DEC from the header as a hint when present
    search_radius_deg: float = 2.0  # radius around the header pointing
    downsample: int = 0  # solve-field --downsample; 0: automatic (to ~1024 px wide: 4 for 4096²)
    cpulimit_s: int = 60  # solve-field --cpulimit
    timeout_s: float = 180.0  # wall-clock limit; the whole process group is killed after it
    max_tries: int = 3  # a frame whose solve failed this many times needs an operator
    retry_backoff_s: float = 300.0  # wait before retry n is retry_backoff_s * 2**(n-1)
    frame_budget_s: float = 60.0  # wall time one frame's solving may take in all (list, then image solve)
    night_budget_s: float = 300.0  # failed solving a night may spend in one pass; then its solves are deferred
    wait_fraction: float = 0.1  # once calibrated, a night waits for its solves this fraction of that time at most
    hint_radius_deg: float = 0.25  # search radius around a solution of the same pointing earlier in the night
    hint_scale_tolerance: float = 0.05  # ... and the pixel scale allowed, as a fraction around that solution's


@dataclass(frozen=True)
class OutputSettings:
    """How CAL files are written (changing these does not redo calibrated frames)."""

    compress: bool = True  # tile-compressed CAL files (RICE + subtractive dithering; docs/compression.md)
    quantize_level: float = 16.0  # image quantisation step = the frame's sky noise / quantize_level
    err_quantize_level: float = 64.0  # ERR quantisation step = the same sky noise / err_quantize_level
    tile_rows: int = 64  # rows per compressed tile (whole-row bands; astropy's default is 1 row a tile)


@dataclass(frozen=True)
class QualitySettings:
    """Per-frame quality metrics (``quality.py``); changing them does not redo calibrated frames."""

    pixel_scale_arcsec: float = 0.93  # nominal scale for FWHM in arcsec until a solved WCS gives the real one
    detect_sigma: float = 5.0  # detection threshold, in sky sigmas of the smoothed frame
    fwhm_stars: int = 20  # brightest clean stars fitted for the FWHM (cost ~20 ms each)


@dataclass(frozen=True)
class HeaderSettings:
    """Which raw header keywords say what (``formats/header_profile.py``). Each list is tried in order;
    the keywords configured come first, the built-in ones (ASTEP's, then the generic ones) after them."""

    target_coordinates: tuple[str, ...] = ()  # one card 'RA-DEC' in degrees; built in: SCIDCRD
    target_name: tuple[str, ...] = ()  # the science target's name; built in: SCINAME
    object_name: tuple[str, ...] = ()  # a name that, with the pointing, makes a target; built in: OBJECT
    pointing: tuple[str, ...] = ()  # "RAKEY/DECKEY" pairs; built in: RA/DEC, OBJCTRA/OBJCTDEC
    exposure_start: tuple[str, ...] = ()  # ISO UTC start of the exposure; built in: BEGINOBS, DATE-OBS
    filter: tuple[str, ...] = ()  # built in: INSTFILT, FILTER


@dataclass(frozen=True)
class Target:
    """A star whose light curve is made every night it is observed (coordinates in degrees, ICRS)."""

    name: str
    ra: float
    dec: float
    # Optional ephemeris (BJD_TDB of a mid-transit, period in days, duration in hours): with it, the
    # light curve is normalised and its aperture chosen on the points out of transit exactly.
    t0: float = 0.0
    period: float = 0.0
    duration_h: float = 0.0

    def in_transit(self, bjd: "Any") -> "Any":
        """Whether each time (BJD_TDB) falls in a transit of the ephemeris (all False without one)."""
        import numpy as np

        bjd = np.asarray(bjd, float)
        if self.period <= 0 or self.duration_h <= 0:
            return np.zeros(bjd.shape, bool)
        phase = (bjd - self.t0 + 0.5 * self.period) % self.period - 0.5 * self.period
        return np.abs(phase) < self.duration_h / 48.0


@dataclass(frozen=True)
class PhotometrySettings:
    """Per-frame source catalogues and the nightly light curves (``catalogue.py``, ``lightcurve.py``).

    Changing these does not redo calibrated frames; the light curves are remade when a night is closed.
    """

    enabled: bool = True  # write a catalogue per frame and the light curves of the targets
    aperture_factors: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)  # aperture radii in units of the frame's FWHM
    annulus_factors: tuple[float, ...] = (4.0, 6.0)  # local-background annulus, inner and outer, in FWHM
    bin_minutes: float = 10.0  # the binned light curve of summary.json
    max_sources: int = 4000  # the brightest detections measured per frame (0.2 ms each: < 1 s a frame)
    targets: tuple[Target, ...] = ()  # [{ name = "WASP-19", ra = 148.4167, dec = -45.659 }, ...]
    frame_targets: bool = True  # also follow the science target the frames' headers name (header_profile)


@dataclass(frozen=True)
class HealthSettings:
    """The instrument's health (docs/health.md): zero points, flat changes, detector, alerts.

    Changing these redoes nothing already measured; the alerts use them from the next night closed.
    """

    enabled: bool = True  # per-frame zero point and Moon, per-night figures and alerts
    reference_index: str = "/usr/share/astrometry/index-tycho2-09.littleendian.fits"  # Tycho-2 index read by query-starkd
    query_starkd: str = "query-starkd"  # executable name or path
    query_timeout_s: float = 60.0  # wall-clock limit of one query-starkd run
    min_snr: float = 20.0  # stars below this S/N are left out of the zero point
    throughput_percentile: float = 90.0  # the night's clear-sky zero point: this percentile of its frames'
    baseline_nights: int = 5  # the alerts compare with the median of the last this many nights
    min_baseline_nights: int = 3  # no alert before this many nights are in the baseline
    throughput_drop_pct: float = 4.0  # alert when the clear-sky throughput falls more than this
    flat_structure_threshold: float = 0.015  # a flat-ratio region deviating more than this is a structure
    flat_structure_min_px: int = 100  # ... of at least this many pixels
    flat_large_scale_max: float = 0.01  # alert when the flat ratio's large-scale robust std exceeds this
    hot_pixel_rise_pct: float = 30.0  # alert when hot pixels exceed the first min_baseline_nights nights' count by this much
    fwhm_drift_pct: float = 25.0  # alert when the night's median FWHM moves this far from the baseline
    ellipticity_rise: float = 0.1  # alert when the night's median ellipticity rises this much
    prometheus_textfile: str = ""  # node_exporter textfile collector file (.prom); empty: not written


@dataclass(frozen=True)
class DaemonSettings:
    """How the long-running service (``astep-cal run``) decides a night is ready, and stays healthy."""

    settle_seconds: float = 300.0  # a night is ready when no file was added or changed for this long
    marker_file: str = "NIGHT_COMPLETE"  # ... or at once when this file appears in the night directory
    no_flat_wait_s: float = 21600.0  # a night without sky flats is processed with a borrowed flat after this
    reconcile_interval_s: float = 600.0  # full rescan of the data root, whatever the file events said
    use_polling: bool = False  # PollingObserver instead of inotify (network file systems)
    poll_interval_s: float = 30.0
    stall_timeout_s: float = 900.0  # no worker progress this long: stop the systemd watchdog pings
    stop_grace_s: float = 20.0  # on SIGTERM, how long the current frame may take to finish
    storage_retry_s: float = 60.0  # disk full or data root gone: how often to try again
    stuck_retry_s: float = 60.0  # a night that could not be read (permissions, I/O) is tried again after
    stuck_retry_max_s: float = 3600.0  # ... this, doubled at each failed try, up to this


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "auto"  # auto | console | json | journal
    level: str = "info"  # debug | info | warning | error


@dataclass(frozen=True)
class Settings:
    """All settings. ``data_root`` and ``ledger`` may be overridden on the command line."""

    data_root: str = ""  # the daemon's data root; the batch command takes ROOT as an argument
    ledger: str = ""  # empty: DATA_ROOT/.astep-cal/ledger.json
    mem_limit_gb: float = 2.0  # bound on the process's peak memory
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    cosmics: CosmicSettings = field(default_factory=CosmicSettings)
    astrometry: AstrometrySettings = field(default_factory=AstrometrySettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    photometry: PhotometrySettings = field(default_factory=PhotometrySettings)
    headers: HeaderSettings = field(default_factory=HeaderSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def ledger_path(self, root: Path) -> Path:
        return Path(self.ledger) if self.ledger else root / ".astep-cal" / "ledger.json"

    def fingerprint(self, section: str) -> str:
        """A short hash of one section: a frame is redone when the settings that made it change."""
        values = dataclasses.asdict(getattr(self, section))
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


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


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of its default (ints are accepted for floats)."""
    if isinstance(default, tuple):
        return _coerce_list(name, value, "" if name.startswith("headers.") else 0.0)
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


def settings_from_dict(data: dict[str, Any]) -> Settings:
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table")
            sections[key] = _build(_SECTIONS[key], value, f"{key}.")
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
    "daemon.stuck_retry_max_s": (0, YEAR_S, True),
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
            or h.query_timeout_s <= 0 or min(h.throughput_drop_pct, h.hot_pixel_rise_pct, h.fwhm_drift_pct) <= 0:
        raise ConfigError("health: throughput_percentile in (0, 100], baseline nights, query_timeout_s and "
                          "the alert thresholds must be positive")
    if settings.cosmics.niter < 1:
        raise ConfigError("cosmics.niter must be at least 1")
    if settings.logging.format not in {"auto", "console", "json", "journal"}:
        raise ConfigError("logging.format must be auto, console, json or journal")
    if settings.logging.level not in {"debug", "info", "warning", "error"}:
        raise ConfigError("logging.level must be debug, info, warning or error")


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
