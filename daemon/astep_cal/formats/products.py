"""What astep-cal writes: master frames and calibrated frames, their headers and where they live.

Kept apart from the science (``masters``, ``calibrate``) and from the orchestration (``pipeline``) so
that the file formats are described in one place. Every write is atomic (``fitsio``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from astep_cal import __version__
from astep_cal.formats import keywords as kw
from astep_cal.formats.fitsio import atomic_write_hdul, set_card
from astep_cal.formats.names import header_name
from astep_cal.formats.raw_headers import image_hdu, pseudo_wcs_keys
from astep_cal.science.calibrate import REPLACED_ERR, CalibratedFrame
from astep_cal.science.masters import MaskBit
from astep_cal.support.config import OutputSettings

if TYPE_CHECKING:  # photutils (quality) is imported where frames are measured, not by every reader
    from astropy.table import Table

    from astep_cal.science.quality import Sources

_SCALING_KEYS = ("BZERO", "BSCALE", "BLANK", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM")


def write_master(path: Path, data: np.ndarray, kind: str, night: str, cards: dict[str, object],
                 inputs: list[str]) -> None:
    """A master frame with what made it: type, night, number and names of inputs, software version."""
    header = fits.Header()
    header[kw.MASTER_TYPE.name] = (kind, kw.MASTER_TYPE.comment)
    header[kw.MASTER_NIGHT.name] = (night, kw.MASTER_NIGHT.comment)
    header["NCOMBINE"] = (len(inputs), "number of frames combined")
    header[kw.VERSION.name] = (__version__, kw.VERSION.comment)
    for key, value in cards.items():
        header[key] = value
    for name in inputs:
        header.add_history(f"input {header_name(name)}")
    atomic_write_hdul(path, fits.HDUList([fits.PrimaryHDU(data, header)]), make_parents=False)


def read_master(path: Path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path, memmap=False) as hdul:
        return np.array(hdul[0].data), hdul[0].header.copy()


def write_flat_ratio(path: Path, thumbnail: np.ndarray, against: str) -> None:
    """The flat-ratio thumbnail (the night's flat over ``against``'s, block-averaged), atomically; its
    folder is made in the existing ``_CAL`` directory (never the parents)."""
    path.parent.mkdir(exist_ok=True)
    hdu = fits.PrimaryHDU(np.asarray(thumbnail, np.float32))
    hdu.header["AGAINST"] = (against, "night of the flat divided by")
    atomic_write_hdul(path, fits.HDUList([hdu]), make_parents=False)


def read_flat_ratio(path: Path) -> tuple[np.ndarray, str] | None:
    """The thumbnail and the night it is against; None when absent or unreadable."""
    try:
        with fits.open(path, memmap=False) as hdul:
            return np.array(hdul[0].data, np.float32), str(hdul[0].header.get("AGAINST", ""))
    except (OSError, ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=64)
def _master_header(path: str, mtime_ns: int) -> fits.Header:
    return fits.getheader(path)


def master_header(path: Path) -> fits.Header | None:
    """A master's header (its ``NCOMBINE``, noise cards), cached per file version: every frame of a
    night asks for the same two; None when the file is not there."""
    try:
        return _master_header(str(path), Path(path).stat().st_mtime_ns)
    except OSError:
        return None


def _mask_hdu(mask: np.ndarray) -> fits.ImageHDU:
    hdu = fits.ImageHDU(mask, name="MASK")
    for bit in MaskBit:
        hdu.header[f"MASKB{bit.value}"] = (bit.name, f"bit value {bit.value}")
    hdu.header["COMMENT"] = "Non-zero pixels are masked; see MASKBn for the meaning of each bit."
    return hdu


def _err_hdu(error: np.ndarray) -> fits.ImageHDU:
    hdu = fits.ImageHDU(error, name="ERR")
    hdu.header["BUNIT"] = ("electron", "1-sigma uncertainty of each pixel")
    hdu.header["ERRREPL"] = (float(REPLACED_ERR), "ERR of BAD, COSMIC and SATURATED pixels")
    return hdu


SOURCES_EXTENSION = "SOURCES"
SOURCES_SINGLE = "SINGLE"  # the SOURCES column marking the single stars the plate solve is given


def sources_hdu(sources: "Sources") -> fits.BinTableHDU:
    """The ``SOURCES`` table: the stars the quality step detected, brightest first, in the FITS pixel
    convention (the centre of the first pixel is 1, 1), which is solve-field's xylist's: the plate
    solve hands it over as it is (``astrometry``)."""
    columns = [
        fits.Column("X", "D", unit="pix", array=np.asarray(sources.x, np.float64) + 1.0),
        fits.Column("Y", "D", unit="pix", array=np.asarray(sources.y, np.float64) + 1.0),
        fits.Column("FLUX", "E", unit="electron", array=np.asarray(sources.flux, np.float32)),
    ]
    if sources.single is not None:  # 1: one star, position refined (what the plate solve is given)
        columns.append(fits.Column(SOURCES_SINGLE, "B", array=np.asarray(sources.single, np.uint8)))
    hdu = fits.BinTableHDU.from_columns(columns, name=SOURCES_EXTENSION)
    hdu.header["COMMENT"] = "Stars detected by astep-cal's quality step, brightest first; X, Y 1-based (FITS)."
    return hdu


def read_sources(path: Path) -> np.ndarray | None:
    """The ``SOURCES`` table of a CAL file (X, Y 1-based, FLUX), or None when it has none."""
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        try:
            return np.array(hdul[SOURCES_EXTENSION].data)
        except KeyError:
            return None


def calibrated_hdul(raw_header: fits.Header, frame: CalibratedFrame, provenance: dict[str, tuple],
                    output: OutputSettings | None = None, sources: "Sources | None" = None) -> fits.HDUList:
    """The CAL file: float32 electrons with the raw header kept, provenance cards, an ``ERR`` HDU
    (float32, electrons, 1 sigma), a ``MASK`` HDU (uint8) and, when given, the ``SOURCES`` table
    (:func:`sources_hdu`).

    With ``output.compress`` (the default) the three images are tile-compressed (FITS tile compression,
    as fpack and BANZAI's ``.fits.fz``) in bands of ``output.tile_rows`` whole rows: an empty primary
    HDU, then ``SCI`` and ``ERR`` in RICE with subtractive dithering, their steps the frame's sky noise
    (:func:`sky_noise`) divided by ``output.quantize_level`` and ``output.err_quantize_level``, and
    ``MASK`` RICE-compressed losslessly. Readers find the image with :func:`cal_image_hdu`.
    """
    header = raw_header.copy()
    for key in (*_SCALING_KEYS, *pseudo_wcs_keys(header)):  # a camera's pixel "WCS" would read as a solution
        header.remove(key, ignore_missing=True, remove_all=True)
    header["BUNIT"] = ("electron", "calibrated data unit")
    header[kw.VERSION.name] = (__version__, kw.VERSION.comment)
    header[kw.N_COSMIC.name] = (frame.n_cosmic, kw.N_COSMIC.comment)
    header[kw.N_SATURATED.name] = (frame.n_saturated, kw.N_SATURATED.comment)
    header[kw.SKY_LEVEL.name] = (round(frame.sky_e, 2), kw.SKY_LEVEL.comment)
    for key, (value, comment) in provenance.items():
        set_card(header, key, value, comment)  # a long raw name leaves no room for a comment
    header[kw.WCS_STATUS.name] = ("pending", kw.WCS_STATUS.comment)
    error = frame.error if frame.error is not None else np.full(frame.data.shape, REPLACED_ERR, np.float32)
    mask_hdu, err_hdu = _mask_hdu(frame.mask), _err_hdu(error)
    tables = [sources_hdu(sources)] if sources is not None else []
    if output is None or not output.compress:
        return fits.HDUList([fits.PrimaryHDU(frame.data, header), err_hdu, mask_hdu, *tables])
    for key in ("SIMPLE", "EXTEND", "EXTNAME"):
        header.remove(key, ignore_missing=True)
    noise = sky_noise(frame.data, frame.mask)
    tiles = dict(compression_type="RICE_1", tile_shape=(min(output.tile_rows, frame.data.shape[0]),
                                                        frame.data.shape[1]))
    return fits.HDUList([
        fits.PrimaryHDU(),
        fits.CompImageHDU(frame.data, header, name="SCI", **tiles, **_lossy(noise, output.quantize_level)),
        fits.CompImageHDU(error, err_hdu.header, name="ERR", **tiles, **_lossy(noise, output.err_quantize_level)),
        fits.CompImageHDU(frame.mask, mask_hdu.header, name="MASK", **tiles),
        *tables,
    ])


_NOISE_SAMPLING = 16  # every 16th row: 1/16 of the pixel pairs (a million at 4096²) is plenty for a median


def sky_noise(data: np.ndarray, mask: np.ndarray) -> float | None:
    """The noise (electrons, 1 sigma) that sets the quantisation steps of a compressed CAL file,
    measured on the image itself: the median absolute deviation of the differences of neighbouring
    unmasked pixels along every 16th row, divided by sqrt(2) (cfitsio's own estimator, once per image
    rather than on every pixel of every tile). Stars and gradients hardly move a median of
    differences: it is the sky noise. None when too few pixels are clean (cfitsio's per-tile
    estimate is then used).

    One step for the whole image (cfitsio's "absolute" quantisation, a negative ``NOISEBIT``) instead
    of cfitsio's estimate of each tile's noise: that estimate was ~70 % of the compressor's CPU
    (docs/pages/compression.md). Measured on the image, not taken from ``ERR``: the image's bytes depend
    on the image alone (test_crash: a run restarted after a kill gave other image bytes when the step
    came from ``ERR``).
    """
    rows, bad = data[::_NOISE_SAMPLING], mask[::_NOISE_SAMPLING] != 0
    differences = np.diff(rows, axis=1)
    clean = ~(bad[:, 1:] | bad[:, :-1]) & np.isfinite(differences)
    values = differences[clean]
    if values.size < 100:
        return None
    deviation = float(np.median(np.abs(values - np.median(values))))
    noise = 1.4826 * deviation / np.sqrt(2.0)
    return noise if noise > 0 else None


def _lossy(noise: float | None, level: float) -> dict[str, object]:
    """RICE with subtractive dithering (``SUBTRACTIVE_DITHER_1``, seed from the data's checksum: the
    same frame always gives the same bytes) at a step of ``noise / level`` (a negative quantize level is
    cfitsio's absolute step), or of each tile's own noise estimate / level without a noise."""
    step = -noise / level if noise else level
    return dict(quantize_level=step, quantize_method=1, dither_seed=-1)


def cal_image_hdu(hdul: fits.HDUList) -> int:
    """Index of a CAL file's science image and header: 0 (plain) or 1 (tile-compressed)."""
    return image_hdu(hdul)


@contextlib.contextmanager
def cal_header_for_update(path: Path) -> Iterator[tuple[fits.HDUList, fits.Header]]:
    """Open a CAL file to change its science header only: yields the HDU list and that header, to
    edit in place and write back (``fitsio.atomic_write_hdul``).

    A tile-compressed file is opened with ``disable_image_compression``: its SCI HDU is then the binary
    table holding the compressed tiles, and the image keywords are in that table's header. Editing
    them there leaves the compressed bytes as they are; through astropy's compressed-image HDU the
    image would be decompressed and quantised a second time (measured: up to one quantisation step of
    change in every pixel at each WCS merge). The compressed image's own checksums (``ZHECKSUM``,
    ``ZDATASUM``) are dropped, as they would no longer match; the file's ``CHECKSUM`` is rewritten.
    """
    with fits.open(path, memmap=False, disable_image_compression=True) as hdul:
        compressed = len(hdul) > 1 and hdul[1].header.get("ZIMAGE", False) is True
        header = hdul[1].header if compressed else hdul[0].header
        if compressed:
            for key in ("ZHECKSUM", "ZDATASUM"):
                header.remove(key, ignore_missing=True)
        yield hdul, header


def read_cal_header(path: Path) -> fits.Header:
    """The science header of a CAL file, plain or tile-compressed (what recovery and the solver read)."""
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        return hdul[cal_image_hdu(hdul)].header.copy()


def write_calibrated(path: Path, hdul: fits.HDUList) -> None:
    atomic_write_hdul(path, hdul, make_parents=False)


# --- the source catalogue beside each CAL file -----------------------------------------------------

def write_catalogue(path: Path, table: "Table", cards: dict[str, tuple]) -> None:
    """``<name>_CAT.fits``: an empty primary HDU and the ``CAT`` binary table, its header holding the
    frame's time, exposure, seeing, image size and aperture radii (all the light curves need)."""
    hdu = fits.BinTableHDU(table, name="CAT")
    for key, value in table.meta.items():
        hdu.header[key] = value
    for key, (value, comment) in cards.items():
        set_card(hdu.header, key, value, comment)  # CALFILE: a long name leaves no room for a comment
    hdu.header["ASTCVER"] = (__version__, "astep-cal version")
    atomic_write_hdul(path, fits.HDUList([fits.PrimaryHDU(), hdu]), make_parents=False)


def read_catalogue(path: Path) -> "tuple[Table, fits.Header]":
    from astropy.table import Table

    with fits.open(path, memmap=False) as hdul:
        return Table(hdul["CAT"].data), hdul["CAT"].header.copy()


def read_catalogue_header(path: Path) -> fits.Header:
    """The ``CAT`` header alone (its ``NAXIS2`` is the number of sources): the rows are not read."""
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        return hdul["CAT"].header.copy()


def add_catalogue_wcs(path: Path, wcs_header: fits.Header) -> int:
    """Give a catalogue its sources' RA/Dec and the frame's WCS (rewritten atomically; a few kB).

    Returns the number of sources placed on the sky.
    """
    from astropy.wcs import WCS

    from astep_cal.science.catalogue import add_sky_positions

    table, header = read_catalogue(path)
    add_sky_positions(table, WCS(wcs_header))
    hdu = fits.BinTableHDU(table, header=header, name="CAT")
    for card in wcs_header.cards:
        hdu.header[card.keyword] = (card.value, card.comment)
    hdu.header[kw.WCS_STATUS.name] = ("solved", kw.WCS_STATUS.comment)
    atomic_write_hdul(path, fits.HDUList([fits.PrimaryHDU(), hdu]), make_parents=False)
    return len(table)
