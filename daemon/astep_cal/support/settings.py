"""The typed settings: one frozen dataclass per section of the configuration file, every field with
its default (``etc/astep-cal.toml`` and docs/pages/configuration.md document each key). Parsing and validation
live in ``config``; these are the types every layer takes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
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

    compress: bool = True  # tile-compressed CAL files (RICE + subtractive dithering; docs/pages/compression.md)
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
    """The instrument's health (docs/pages/health.md): zero points, flat changes, detector, alerts.

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
    read_noise_jump_pct: float = 10.0  # alert when the night's read noise (ADU) moves this far from the baseline
    bias_jump_adu: float = 10.0  # alert when the night's bias level moves this many ADU from the baseline
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
    close_delay_s: float = 30.0  # light curves and summary PNG once no frame came for this long (0: every run)


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
    # The camera directories of a night (DATE-<SUFFIX>), each its own unit of work (formats/cameras.py):
    # ("CAMS",) for ASTEP 400, ("CAMB", "CAMR") for ASTEP+, ("auto",) for every DATE-<SUFFIX> directory
    cameras: tuple[str, ...] = ("CAMS",)
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
