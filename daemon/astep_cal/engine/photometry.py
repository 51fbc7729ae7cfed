"""The night's photometry step (imperative shell): read the frames' catalogues, make each target's light
curve (``lightcurve``), log what happened, write the products (``lightcurve_products``).

Called once per night closing by ``pipeline.write_night_photometry``, which ``once``, the daemon and
``reprocess`` all reach through ``pipeline.close_night``; a late frame closes the night again, so the
light curves always hold every frame calibrated so far.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astep_cal.formats import names, products
from astep_cal.science.targets import frame_targets, merge_targets
from astep_cal.state import entries
from astep_cal.support.config import Settings, Target

if TYPE_CHECKING:
    from astropy.table import Table

    from astep_cal.science.lightcurve import FrameCatalogue


def night_catalogues(cal_dir: Path, night: dict[str, Any], log: Any) -> list[FrameCatalogue]:
    """The catalogues of the night's calibrated frames (named by their raw frame, as in the ledger).

    Only the headers are read here; each table is read when a light curve needs it, one frame at a
    time (a winter night's catalogues held at once would be ~460 MB). A frame whose catalogue step
    failed is left out (a file there is an older one); a frame without a catalogue record (a ledger
    rebuilt from the CAL files) uses the file if there is one. A catalogue that cannot be read is
    logged (``catalogue_unreadable``) and left out.
    """
    from astep_cal.science.lightcurve import FrameCatalogue  # astropy.coordinates (~0.6 s): only with targets

    frames = []
    for name, entry in sorted(night.get("frames", {}).items()):
        if entries.catalogue(entry).get("status", "ok") != "ok" or entries.calibration_status(entry) != "ok":
            continue
        path = names.cat_path(cal_dir / names.cal_name(name))
        if "catalogue" not in entry and not path.is_file():
            continue
        header = _read_or_log(products.read_catalogue_header, path, name, log)
        if header is not None:
            frames.append(FrameCatalogue(name, None, header, load=functools.partial(_read_table, path, name, log)))
    return frames


def _read_table(path: Path, name: str, log: Any) -> Table | None:
    """A catalogue's table, or None when its header was readable but its rows are not (one point lost)."""
    catalogue = _read_or_log(products.read_catalogue, path, name, log)
    return catalogue[0] if catalogue is not None else None


def _read_or_log(read: Callable[[Path], Any], path: Path, name: str, log: Any) -> Any:
    """``read(path)``, or None with ``catalogue_unreadable`` logged: one bad file must not cost the
    night's light curves."""
    try:
        return read(path)
    except Exception as error:  # noqa: BLE001 - any reading error is this file's, not the night's
        log.warning("catalogue_unreadable", frame=name, error=f"{type(error).__name__}: {error}")
        return None


def night_targets(frames: list[FrameCatalogue], settings: Settings, log: Any) -> list[Target]:
    """The configured targets and (``frame_targets``) those the frames' headers name, merged
    (``science.targets``); each target that only the frames gave is logged (``target_from_frames``)."""
    configured = list(settings.photometry.targets)
    if not settings.photometry.frame_targets:
        return configured
    merged = merge_targets(configured, frame_targets(frame.header for frame in frames))
    for target in merged[len(configured):]:
        log.info("target_from_frames", target=target.name, ra=round(target.ra, 6), dec=round(target.dec, 6))
    return merged


def night_light_curves(cal_dir: Path, date: str, night: dict[str, Any], settings: Settings,
                       log: Any) -> dict[str, Any]:
    """Every target's light curve for the night (:func:`night_targets`): files written, events logged; the
    record."""
    from astep_cal.formats.lightcurve_products import write_light_curve
    from astep_cal.science.lightcurve import light_curve

    frames = night_catalogues(cal_dir, night, log)
    records = {}
    for target in night_targets(frames, settings, log):
        curve = light_curve(frames, target, settings.photometry.bin_minutes)
        for level, event, fields in curve.events:
            getattr(log, level)(event, **fields)
        record: dict[str, Any] = {"status": curve.status, **curve.record}
        if curve.status == "ok" and curve.points is not None:
            record.update(write_light_curve(cal_dir, curve.points, target, record, date))
            log.info("lightcurve_written", target=target.name, points=record["n_points"], good=record["n_good"],
                     rms=record["rms"], aperture=record["aperture"], comparisons=record["n_comparisons"],
                     csv_kb=record["csv_kb"], png_kb=record["png_kb"])
        elif curve.status == "not_observed":
            log.debug("lightcurve_not_observed", target=target.name)
        records[target.name] = record
    return {"frames": len(frames), "targets": records}
