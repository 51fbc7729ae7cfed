"""What astep-cal writes: master frames and calibrated frames, their headers and where they live.

Kept apart from the science (``masters``, ``calibrate``) and from the orchestration (``pipeline``) so
that the file formats are described in one place. Every write is atomic (``fitsio``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
from astropy.io import fits

from . import __version__
from .calibrate import CalibratedFrame
from .fitsio import atomic_write_hdul
from .masters import MaskBit
from .night import fits_stem

_SCALING_KEYS = ("BZERO", "BSCALE", "BLANK", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM")


def dark_file_name(exptime: float) -> str:
    return f"master_dark_{exptime:g}s.fits"


MASTER_BIAS = "master_bias.fits"
MASTER_FLAT = "master_flat.fits"
PIXEL_MASK = "bad_pixel_mask.fits"


def cal_name(raw_name: str) -> str:
    """``2026-07-01_20.00.00_SCIENCE.fits`` -> ``2026-07-01_20.00.00_SCIENCE_CAL.fits``.

    Compressed raw frames (``.fits.gz``, ``.fits.fz``) give the same, uncompressed, CAL name.
    """
    return f"{fits_stem(raw_name)}_CAL.fits"


_HEADER_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


def header_name(name: str) -> str:
    """A file name as a FITS header value, which must be printable ASCII: any other character (and
    ``%``) is percent-encoded as UTF-8 (RFC 3986), so the exact name comes back with
    :func:`name_from_header` (ledger recovery maps CAL files back to their raw frames by it)."""
    return quote(name, safe=_HEADER_SAFE, errors="surrogateescape")


def name_from_header(value: str) -> str:
    return unquote(value, errors="surrogateescape")


def write_master(path: Path, data: np.ndarray, kind: str, night: str, cards: dict[str, object],
                 inputs: list[str]) -> None:
    """A master frame with what made it: type, night, number and names of inputs, software version."""
    header = fits.Header()
    header["ASTCTYPE"] = (kind, "astep-cal master frame type")
    header["ASTCNITE"] = (night, "night the master was made from")
    header["NCOMBINE"] = (len(inputs), "number of frames combined")
    header["ASTCVER"] = (__version__, "astep-cal version")
    for key, value in cards.items():
        header[key] = value
    for name in inputs:
        header.add_history(f"input {header_name(name)}")
    atomic_write_hdul(path, fits.HDUList([fits.PrimaryHDU(data, header)]), make_parents=False)


def read_master(path: Path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path, memmap=False) as hdul:
        return np.array(hdul[0].data), hdul[0].header.copy()


def _mask_hdu(mask: np.ndarray) -> fits.ImageHDU:
    hdu = fits.ImageHDU(mask, name="MASK")
    for bit in MaskBit:
        hdu.header[f"MASKB{bit.value}"] = (bit.name, f"bit value {bit.value}")
    hdu.header["COMMENT"] = "Non-zero pixels are masked; see MASKBn for the meaning of each bit."
    return hdu


def calibrated_hdul(raw_header: fits.Header, frame: CalibratedFrame, provenance: dict[str, tuple]) -> fits.HDUList:
    """The CAL file: float32 electrons with the raw header kept, provenance cards, and a MASK HDU."""
    header = raw_header.copy()
    for key in _SCALING_KEYS:
        header.remove(key, ignore_missing=True, remove_all=True)
    header["BUNIT"] = ("electron", "calibrated data unit")
    header["ASTCVER"] = (__version__, "astep-cal version")
    header["NCOSMIC"] = (frame.n_cosmic, "pixels replaced as cosmic-ray hits")
    header["NSATUR"] = (frame.n_saturated, "saturated pixels")
    header["SKYLEVEL"] = (round(frame.sky_e, 2), "[e-] median sky level")
    for key, (value, comment) in provenance.items():
        header[key] = (value, comment)
    header["ASTCWCS"] = ("pending", "astrometry status: pending, solved, failed")
    return fits.HDUList([fits.PrimaryHDU(frame.data, header), _mask_hdu(frame.mask)])


def write_calibrated(path: Path, hdul: fits.HDUList) -> None:
    atomic_write_hdul(path, hdul, make_parents=False)
