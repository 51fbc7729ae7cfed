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
    targets = night_targets(frames, settings, log)
    for target in targets:
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
    ratios = night_depth_ratios(cal_dir, date, records, targets, log)
    return {"frames": len(frames), "targets": records, **({"depth_ratios": ratios} if ratios else {})}


def night_depth_ratios(cal_dir: Path, night: str, records: dict[str, Any], targets: list[Target],
                       log: Any) -> dict[str, Any]:
    """ASTEP+: for each target whose light curve this camera wrote and the night's other colour has too
    (blue ``CAMB``, red ``CAMR``), the blue/red transit depth ratio (``science.depth_ratio``), written
    beside both light curves (``formats.depth_ratio_products``) and logged (``depth_ratio_written``).

    Whichever camera closes last finds both curves; a camera closed again (late frames) writes it anew."""
    from astep_cal.formats import depth_ratio_products as products_
    from astep_cal.science.depth_ratio import Curve, depth_ratio
    from astep_cal.science.lightcurve import BAD_POINT

    date, camera = names.split_unit(night)
    if camera not in (names.BLUE_CAMERA, names.RED_CAMERA):
        return {}
    root = cal_dir.parent.parent
    dirs = {colour: names.cal_dir(root, names.night_unit(date, c))
            for colour, c in (("blue", names.BLUE_CAMERA), ("red", names.RED_CAMERA))}
    ratios = {}
    for target in targets:
        record = records.get(target.name, {})
        paths = {colour: directory / record.get("csv", "") for colour, directory in dirs.items()}
        if record.get("status") != "ok" or not all(p.is_file() for p in paths.values()):
            continue
        try:
            curves = {c: Curve(*products_.read_light_curve(p, BAD_POINT)) for c, p in paths.items()}
        except (OSError, ValueError) as error:
            log.warning("depth_ratio_failed", target=target.name, error=f"{type(error).__name__}: {error}")
            continue
        ephemeris = (target.t0, target.period, target.duration_h) if target.period > 0 else None
        result = depth_ratio(curves["blue"], curves["red"], ephemeris)
        ratio = products_.ratio_record(result, date, target.name,
                                       {c: str(p.relative_to(root / date)) for c, p in paths.items()})
        ratio["file"] = products_.write_ratio(list(dirs.values()), ratio)
        log.info("depth_ratio_written", target=target.name, status=ratio["status"], ratio=ratio["ratio"],
                 error=ratio["error"], blue_depth=ratio["blue"].get("depth"), red_depth=ratio["red"].get("depth"),
                 method=ratio["method"], file=ratio["file"])
        ratios[target.name] = ratio
    return ratios
