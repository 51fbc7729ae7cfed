"""A solved frame's health figures (imperative shell around ``science.zeropoint``): its zero point from
the catalogue matched to Tycho-2 stars, the sky brightness, the Moon.

The reference stars come from the Astrometry.net index the solve uses, read by ``query-starkd`` (a
subprocess with a timeout, offline) once per pointing per night: the table is cached in the night's
``_CAL`` directory as ``health/ref_<ra>_<dec>.fits`` (pointing rounded to 0.1 deg), so the other frames
of the pointing, and a night closed again, read it back. Runs in the solve's thread after the WCS is in
the catalogue (``frame_steps.solve_frame``), inside the stage runner: a failure is recorded in the
frame's ``health`` record and logged (``health_failed``) by the ledger's thread, never raised.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import signal
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from astep_cal.engine.solve_process import QUERY, kill_group, start_in_own_group, tracked
from astep_cal.formats import names, products
from astep_cal.science import moon, zeropoint
from astep_cal.support.config import HealthSettings
from astep_cal.support.storage import atomic_write_bytes

MATCH_PX = 1.5  # a catalogue star and a Tycho-2 star are the same within this many pixels
POINTING_STEP_DEG = 0.1  # pointings closer than this share one reference table


class ReferenceUnavailable(RuntimeError):
    """query-starkd failed, timed out, or the index is missing."""


REFERENCE_DIR = "health"  # under the night's _CAL directory


def reference_path(cal_dir: Path, ra: float, dec: float) -> Path:
    step = POINTING_STEP_DEG
    return cal_dir / REFERENCE_DIR / f"ref_{round(ra / step) * step:.1f}_{round(dec / step) * step:+.1f}.fits"


def query_reference(ra: float, dec: float, radius_deg: float, settings: HealthSettings) -> bytes:
    """The FITS table (RA, DEC, MAG_VT) of the index's stars around (ra, dec), as bytes."""
    exe = shutil.which(settings.query_starkd)
    if exe is None:
        raise ReferenceUnavailable(f"{settings.query_starkd} not found (Astrometry.net not installed?)")
    if not Path(settings.reference_index).is_file():
        raise ReferenceUnavailable(f"no reference index {settings.reference_index}")
    with tempfile.TemporaryDirectory(prefix="astep-ref-") as tmp:
        out = Path(tmp) / "ref.fits"
        command = [exe, "-T", "-r", f"{ra:.6f}", "-d", f"{dec:.6f}", "-R", f"{radius_deg:.6f}", "-o", str(out),
                   settings.reference_index]
        process = start_in_own_group(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with tracked(process, QUERY):  # a stop of the service ends it at once, as it ends solve-field
            try:
                _, stderr = process.communicate(timeout=settings.query_timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(process, signal.SIGKILL)  # its whole group: no child left holding the pipes
                process.communicate()
                raise ReferenceUnavailable(f"query-starkd timed out after {settings.query_timeout_s:g} s") from None
        if process.returncode is not None and process.returncode < 0:
            raise ReferenceUnavailable(f"query-starkd ended by signal {-process.returncode} (a stop)")
        if process.returncode != 0:
            raise ReferenceUnavailable(f"query-starkd failed: {stderr.decode(errors='replace')[-200:]}")
        if not out.is_file():
            raise ReferenceUnavailable("query-starkd wrote no table")
        return _clean_table(out)


def _clean_table(path: Path) -> bytes:
    """The query's RA, DEC, MAG_VT alone, without its DATE card: the same pointing gives the same file."""
    import io

    with fits.open(path, memmap=False) as hdul:
        data = hdul[1].data if len(hdul) > 1 and hdul[1].data is not None else None
        columns = {k: np.asarray(data[k], float) if data is not None else np.zeros(0) for k in ("RA", "DEC", "MAG_VT")}
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table(columns), name="REFSTARS")]).writeto(buffer)
    return buffer.getvalue()


def reference_stars(cal_dir: Path, ra: float, dec: float, radius_deg: float, settings: HealthSettings) -> Table:
    """The pointing's reference stars (ra, dec, mag), from the night's cache or query-starkd."""
    path = reference_path(cal_dir, ra, dec)
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)  # in the night's _CAL directory, which exists (never its parents)
        centre = (round(ra / POINTING_STEP_DEG) * POINTING_STEP_DEG, round(dec / POINTING_STEP_DEG) * POINTING_STEP_DEG)
        atomic_write_bytes(path, query_reference(centre[0], centre[1], radius_deg + POINTING_STEP_DEG, settings),
                           make_parents=False)
    with fits.open(path, memmap=False) as hdul:
        data = hdul[1].data if len(hdul) > 1 and hdul[1].data is not None else None
        if data is None:
            return Table({"ra": np.zeros(0), "dec": np.zeros(0), "mag": np.zeros(0)})
        return Table({"ra": np.asarray(data["RA"], float), "dec": np.asarray(data["DEC"], float),
                      "mag": np.asarray(data["MAG_VT"], float)})


MOON_STEP_S = 300  # the Moon is computed once per 5 minutes and 0.1 deg of pointing (it moves < 0.1 deg/min)


def _mid_exposure(header: fits.Header, exptime: float) -> str | None:
    """The mid-exposure time rounded to ``MOON_STEP_S`` (frames of a pointing share the Moon's place)."""
    try:
        start = dt.datetime.fromisoformat(str(header["DATE-OBS"]))
    except (KeyError, ValueError):
        return None
    mid = (start + dt.timedelta(seconds=exptime / 2)).replace(tzinfo=None)
    stamp = round((mid - dt.datetime(2000, 1, 1)).total_seconds() / MOON_STEP_S) * MOON_STEP_S
    return (dt.datetime(2000, 1, 1) + dt.timedelta(seconds=stamp)).isoformat()


@functools.lru_cache(maxsize=64)
def _moon(when: str, ra: float, dec: float) -> tuple[tuple[str, Any], ...]:
    """The Moon of ``moon.position``, kept for the other frames of the pointing."""
    return tuple(moon.position(when, ra, dec).items())


def frame_health(cal_path: Path, settings: HealthSettings) -> dict[str, Any]:
    """The health record of one solved frame: zero point (scatter, stars), sky brightness, Moon."""
    table, header = products.read_catalogue(names.cat_path(cal_path))
    exptime = float(header.get("EXPTIME", 0) or 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # datfix's notes on MJD-OBS
        wcs = WCS(header).celestial
    nx, ny = int(header["IMWIDTH"]), int(header["IMHEIGHT"])
    scale = float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
    ra, dec = (float(v) for v in wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0])
    radius = np.hypot(nx, ny) / 2 * scale / 3600.0
    reference = reference_stars(cal_path.parent, ra, dec, radius, settings)
    cat_rows, ref_rows = zeropoint.match_stars(np.asarray(table["ra"], float), np.asarray(table["dec"], float),
                                              np.asarray(reference["ra"]), np.asarray(reference["dec"]),
                                              max(zeropoint.MATCH_ARCSEC_MIN, MATCH_PX * scale))
    k = max(int(c[len("flux_"):]) for c in table.colnames if c.startswith("flux_") and c[5:].isdigit())
    zp = zeropoint.zero_point(np.asarray(reference["mag"])[ref_rows], np.asarray(table[f"flux_{k}"])[cat_rows],
                              np.asarray(table[f"flux_err_{k}"])[cat_rows], np.asarray(table["flags"])[cat_rows],
                              exptime, settings.min_snr)
    record: dict[str, Any] = {**zp.record(), "matched": int(len(cat_rows)), "reference": reference_path(
        cal_path.parent, ra, dec).relative_to(cal_path.parent).as_posix(), "pixel_scale_arcsec": round(scale, 4)}
    sky = zeropoint.sky_brightness(zp.zp, float(header.get("SKYLEVEL", 0) or 0), exptime, scale)
    record["sky_mag_arcsec2"] = None if sky is None else round(sky, 3)
    when = _mid_exposure(header, exptime)
    if when is not None:
        step = POINTING_STEP_DEG
        record.update(_moon(when, round(ra / step) * step, round(dec / step) * step))
    return record
