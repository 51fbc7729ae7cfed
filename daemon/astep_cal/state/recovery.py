"""Rebuilding the ledger from the outputs when it is lost (deleted, truncated, corrupt).

The ledger is the memory of what was done, but the outputs carry their own provenance: each CAL file
names its raw frame and that frame's fingerprint (``ASTCRAW``, ``ASTCRAWF``), the settings that made
it (``ASTCCONF``), the masters used and the astrometry status; each master names its inputs. So a lost
ledger costs a directory scan and a header read per file, not a night of recomputation: frames whose
raw file is unchanged are recognised as done, and only the rest is redone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astropy.io import fits

from astep_cal.formats import keywords as kw
from astep_cal.formats import names, products
from astep_cal.formats.cameras import output_units
from astep_cal.formats.names import cal_dir, masters_dir
from astep_cal.formats.raw_night import discover_nights
from astep_cal.state.ledger import Ledger

PROVENANCE_NEEDED = tuple(key.name for key in kw.PROVENANCE_NEEDED)


def raw_fingerprint_card(fingerprint: dict[str, int]) -> str:
    """The raw file's fingerprint as one header value: ``size:mtime_ns``."""
    return f"{fingerprint['size']}:{fingerprint['mtime_ns']}"


def _parse_fingerprint(text: str) -> dict[str, int] | None:
    size, _, mtime = str(text).partition(":")
    if not (size.isdigit() and mtime.isdigit()):
        return None
    return {"size": int(size), "mtime_ns": int(mtime)}


def _astrometry_record(header: fits.Header) -> dict[str, Any] | None:
    status = header.get(kw.WCS_STATUS.name)
    if status == "solved":
        record: dict[str, Any] = {"status": "solved", "tries": 1, "n_matched": header.get(kw.WCS_MATCHED.name, 0)}
        if kw.WCS_RESIDUAL.name in header:
            record["residual_arcsec"] = header[kw.WCS_RESIDUAL.name]
        return record
    if status == "failed":  # retried by the next run: the try count is not in the file
        return {"status": "failed", "tries": 1, "error": header.get(kw.WCS_ERROR.name, "unknown")}
    return None  # pending: the next run solves it


_QUALITY_CARDS = {"SKYNOISE": "sky_noise_e", "NSTARS": "n_stars", "FWHMPIX": "fwhm_px", "FWHM": "fwhm_arcsec",
                  "ELLIPTIC": "ellipticity", "MASKFRAC": "masked_fraction"}


def _quality_record(header: fits.Header) -> dict[str, Any]:
    """The frame's quality metrics as the summary reads them, from the cards ``quality`` wrote."""
    return {field: header[card] for card, field in _QUALITY_CARDS.items() if card in header}


def frame_entry(header: fits.Header, date: str, cal_name: str) -> tuple[str, dict[str, Any]] | None:
    """(raw name, ledger entry) from a CAL file's header; None when it lacks the provenance."""
    if any(key not in header for key in PROVENANCE_NEEDED):
        return None
    raw = _parse_fingerprint(header[kw.RAW_FINGERPRINT.name])
    if raw is None:
        return None
    flat_night = header.get(kw.FLAT_NIGHT.name, date)
    calibrate = {
        "status": "ok", "output": cal_name, "config": header[kw.CONFIG.name], "software": header[kw.VERSION.name],
        "flat": {"night": flat_night, "borrowed": flat_night != date},
        "gain": header.get(kw.GAIN.name), "gain_source": header.get(kw.GAIN_SOURCE.name),
        "read_noise_e": header.get(kw.READ_NOISE.name), "read_noise_source": header.get(kw.READ_NOISE_SOURCE.name),
        "n_cosmic": header.get(kw.N_COSMIC.name, 0),
        "n_saturated": header.get(kw.N_SATURATED.name, 0), "sky_e": header.get(kw.SKY_LEVEL.name), "recovered": True,
        "date_obs": header.get("DATE-OBS"), "quality": _quality_record(header),
    }
    entry: dict[str, Any] = {"raw": raw, "calibrate": calibrate}
    astrometry = _astrometry_record(header)
    if astrometry is not None:
        entry["astrometry"] = astrometry
    return names.name_from_header(header[kw.RAW.name]), entry


def _inputs(header: fits.Header) -> list[str]:
    return [names.name_from_header(str(h)[len("input "):]) for h in header.get("HISTORY", [])
            if str(h).startswith("input ")]


def masters_record(root: Path, date: str, flat_night: str | None) -> dict[str, Any] | None:
    """The night's masters record from the files under ``_CAL/masters`` (None when there are none).

    Marked complete only when every file it names is there: otherwise the next run builds anew.
    """
    directory = masters_dir(root, date)
    darks = sorted(directory.glob("master_dark_*.fits")) if directory.is_dir() else []
    if not darks:
        return None
    record: dict[str, Any] = {"darks": {}, "recovered": True}
    for path in darks:
        header = fits.getheader(path)
        record["darks"][f"{float(header['EXPTIME']):g}"] = {"file": path.name, "inputs": _inputs(header)}
        record["shape"] = [header["NAXIS2"], header["NAXIS1"]]
    if (directory / names.MASTER_BIAS).is_file():
        record["bias"] = {"file": names.MASTER_BIAS, "inputs": _inputs(fits.getheader(directory / names.MASTER_BIAS))}
    own_flat = directory / names.MASTER_FLAT
    if own_flat.is_file():
        record["flat"] = {"night": date, "file": str(own_flat.relative_to(root)),
                          "inputs": _inputs(fits.getheader(own_flat))}
    elif flat_night and flat_night != date:
        borrowed = masters_dir(root, flat_night) / names.MASTER_FLAT
        record["flat"] = {"night": flat_night, "file": str(borrowed.relative_to(root)), "borrowed": True}
    if (directory / names.PIXEL_MASK).is_file():
        record["mask"] = {"file": names.PIXEL_MASK}
    record["complete"] = "flat" in record and "mask" in record
    return record


def rebuild_from_outputs(root: Path, ledger: Ledger, only: list[str] | None = None) -> int:
    """Fill ``ledger`` from the CAL files and masters under ``root`` (or of the ``only`` nights whose
    ledger file was lost); returns the frames recovered."""
    recovered = 0
    nights, _ = discover_nights(root)
    for date in [unit for day in nights for unit in output_units(root, day)]:
        if only is not None and date not in only:
            continue
        directory = cal_dir(root, date)
        if not directory.is_dir():
            continue
        flat_night = None
        for path in sorted(directory.glob("*_CAL.fits")):
            try:
                header = products.read_cal_header(path)
            except Exception:  # a damaged output is simply redone
                continue
            found = frame_entry(header, date, path.name)
            if found is None:
                continue
            raw_name, entry = found
            ledger.frame(date, raw_name).update(entry)
            flat_night = entry["calibrate"]["flat"]["night"]
            recovered += 1
        try:
            masters = masters_record(root, date, flat_night)
        except (OSError, KeyError, ValueError):
            masters = None
        if masters is not None:
            ledger.night(date)["masters"] = masters
    return recovered


def open_ledger(path: Path, root: Path, log: Any) -> Ledger:
    """Load the ledger for a process that holds the root's lock; a lost one is rebuilt from the outputs.

    A corrupt ledger was already moved aside by :meth:`Ledger.load` (kept for inspection); either way
    the service starts.
    """
    ledger = Ledger.load(path)
    if ledger.recovered_from:
        log.warning("ledger_corrupt", kept_as=str(ledger.recovered_from), reason=ledger.recovery_reason)
    for date, aside in ledger.corrupt_nights:
        log.warning("ledger_corrupt", night=date, kept_as=str(aside), reason=ledger.corrupt_reasons.get(date, ""))
    lost = [date for date, _ in ledger.corrupt_nights]
    if ledger.migrated_from is not None:
        ledger.save()  # schema 1 -> 2, once; the old file is kept beside
        ledger.release_all()
        log.info("ledger_migrated", nights=len(ledger.dates()))
    if ledger.recovered_from is not None:
        ledger.save()  # the index rebuilt from the night files replaces the one kept aside
    if not ledger.dates() or lost:
        frames = rebuild_from_outputs(root, ledger, lost or None)
        if frames:
            log.warning("ledger_rebuilt", frames=frames, nights=len(lost) if lost else len(ledger.dates()))
            ledger.save()
        ledger.release_all()
    return ledger
