"""A frame's source catalogue (``<name>_CAT.fits``): measured from the calibrated frame while it is still in
memory, beside the write of its CAL file, and given sky positions once the frame is solved.

The measurement runs on a helper thread while the frame's own thread writes the CAL file
(``frame_steps.calibrate_entry``): the write is mostly astropy's tile compressor, which lets go of the GIL,
so the aperture photometry of the frame's thousands of stars takes the second core meanwhile instead of
following the write on the first (``make bench``: the compressed and plain cadences). Both only read the
calibrated frame, whose arrays are read-only from calibration on (so astropy's writer byteswaps a copy, not
the array the photometry is reading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from astep_cal.formats import keywords as kw
from astep_cal.formats import names, products
from astep_cal.formats.header_profile import FrameHeader, profile_cards
from astep_cal.formats.wcs_cards import clean_wcs_header
from astep_cal.science import catalogue, quality
from astep_cal.science.calibrate import CalibratedFrame
from astep_cal.support.config import Settings
from astep_cal.support.storage import StorageUnavailable

if TYPE_CHECKING:
    from astropy.table import Table


@dataclass(frozen=True)
class Calibrated:
    """What the catalogue step needs of a frame just calibrated, while it is still in memory."""

    frame: CalibratedFrame
    measured: quality.FrameQuality | None
    header: fits.Header
    gain: float
    read_noise_e: float
    described: FrameHeader | None = None


# Header cards of the frame copied into its catalogue (what a light curve needs without the CAL file).
_CATALOGUE_CARDS = ("DATE-OBS", "EXPTIME", "OBJECT", "FILTER")


def measure_frame_catalogue(made: Calibrated, settings: Settings) -> "Table":
    """The frame's catalogue, measured at the quality step's detections (no file is touched: it runs beside
    the CAL file's write)."""
    measured, data = made.measured, made.frame
    found = measured.sources if measured is not None else None
    sources = found.positions()[:settings.photometry.max_sources] if found is not None else np.zeros((0, 2))
    return catalogue.measure_catalogue(
        data.data, data.error if data.error is not None else np.full(data.data.shape, np.inf, np.float32),
        data.mask, sources, measured.fwhm_px if measured else None, settings.photometry.aperture_factors,
        settings.photometry.annulus_factors, made.read_noise_e)


def write_frame_catalogue(made: Calibrated, table: "Table", cal_path: Path, record: dict[str, Any]) -> None:
    """Write the measured catalogue beside the CAL file; its ledger record into ``record``.

    Runs in the stage runner (``CATALOGUE_STEP``, with the measurement's outcome): a catalogue that cannot be
    made is recorded and logged (``catalogue_failed``), never raised — the calibrated frame is good without
    it; storage trouble goes up.
    """
    path = names.cat_path(cal_path)
    products.write_catalogue(path, table, catalogue_cards(made, made.measured, cal_path))
    record.update(file=path.name, n_sources=len(table), fwhm_px=table.meta["FWHMUSED"])


def catalogue_cards(made: Calibrated, measured: quality.FrameQuality | None, cal_path: Path) -> dict[str, tuple]:
    """The CAT header: the frame's time and exposure, noise model, seeing, size and its CAL file."""
    cards = {key: (made.header[key], "from the raw frame") for key in _CATALOGUE_CARDS if key in made.header}
    if made.described is not None:
        cards.update(profile_cards(made.described))
    ny, nx = made.frame.data.shape
    cards.update(CALFILE=(names.header_name(cal_path.name), "the calibrated frame"),
                 IMWIDTH=(nx, "[px] image width"), IMHEIGHT=(ny, "[px] image height"),
                 GAIN=(made.gain, "[e-/ADU] gain applied"), RDNOISE=(made.read_noise_e, "[e-] read noise"),
                 SKYLEVEL=(round(made.frame.sky_e, 2), "[e-] median sky level"),
                 **dict([kw.WCS_STATUS.card("pending")]))
    if measured is not None:
        cards["SKYNOISE"] = (round(measured.sky_noise_e, 2), "[e-] robust rms of the sky per pixel")
        if measured.fwhm_px is not None:
            cards["FWHMPIX"] = (round(measured.fwhm_px, 3), "[px] median stellar FWHM")
    return cards


def sky_catalogue(cal_path: Path, wcs_header: fits.Header) -> str:
    """After a solve: RA/Dec into the frame's catalogue. The outcome for the astrometry record:
    ``ok``, ``missing`` (no catalogue: photometry off when calibrated) or ``failed: why``."""
    path = names.cat_path(cal_path)
    if not path.is_file():
        return "missing"
    try:
        products.add_catalogue_wcs(path, clean_wcs_header(wcs_header))
    except StorageUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - the solve itself is good: recorded, not raised
        return f"failed: {type(error).__name__}: {error}"
    return "ok"
