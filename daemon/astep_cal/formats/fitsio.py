"""FITS I/O at the edge of the pipeline: atomic FITS writes, whole-image and band reads.

The file-level pieces (atomic writes, fingerprints, storage errors) live in ``storage``.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from astropy.io import fits

from astep_cal.support.storage import atomic_write

CARD_LENGTH = 80
_VALUE_END = 30  # "KEYWORD = " and a value field of at least 20 characters


def card_entry(key: str, value: Any, comment: str) -> tuple[Any, str]:
    """``(value, comment)`` for a header card, the comment left out when it does not fit beside the value.

    astropy would cut such a comment itself and print ``VerifyWarning: Card is too long, comment will be
    truncated`` on the console for every file written (a long plate-solve failure reason, a long raw file
    name): noise in an operator's terminal and journal. The value is what matters; every keyword's
    meaning is documented (docs/data-products.md). A string too long for one card is continued (CONTINUE
    cards), and astropy then places the comment on the last one itself.
    """
    image = fits.Card(key, value).image
    if len(image) > CARD_LENGTH:
        return value, comment
    used = max(len(image.rstrip()), _VALUE_END)
    return (value, comment) if not comment or used + 3 + len(comment) <= CARD_LENGTH else (value, "")


def set_card(header: fits.Header, key: str, value: Any, comment: str = "") -> None:
    """``header[key] = (value, comment)``, without a comment that does not fit (:func:`card_entry`)."""
    header[key] = card_entry(key, value, comment)


def atomic_write_hdul(path: Path, hdul: fits.HDUList, make_parents: bool = True) -> None:
    """Write an HDUList atomically (checksums included), straight into the temporary file; one with
    tile-compressed HDUs through :func:`write_compressed_concurrently`."""
    if any(isinstance(hdu, fits.CompImageHDU) for hdu in hdul):
        atomic_write(path, lambda handle: write_compressed_concurrently(handle, hdul), make_parents)
    else:
        atomic_write(path, lambda handle: hdul.writeto(handle, checksum=True), make_parents)


COMPRESSION_THREADS = 2  # the machine's second core is idle while a frame is written (the solve is ~5 %)


def write_compressed_concurrently(handle: BinaryIO, hdul: fits.HDUList) -> None:
    """The same bytes as ``hdul.writeto(handle, checksum=True)`` (but for the time in each CHECKSUM's
    comment), the extensions compressed side by side on ``COMPRESSION_THREADS`` threads.

    astropy's compressor (quantisation and RICE, in C) lets go of the GIL, so ``SCI`` and ``ERR`` are
    compressed at once on the two cores (measured in docs/compression.md). Each extension is serialised
    on its own behind a throwaway empty primary HDU that is then cut off: a FITS extension's bytes and
    checksums do not depend on the HDUs before it.
    """
    primary, extensions = hdul[0], list(hdul[1:])
    with ThreadPoolExecutor(max_workers=COMPRESSION_THREADS, thread_name_prefix="compress") as pool:
        parts = list(pool.map(_extension_bytes, extensions))
    fits.HDUList([primary]).writeto(handle, checksum=True)
    for part in parts:
        handle.write(part)


def _extension_bytes(hdu: fits.hdu.base.ExtensionHDU) -> bytes:
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer, checksum=True)
    return buffer.getvalue()[_empty_primary_bytes():]


@functools.cache
def _empty_primary_bytes() -> int:
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU()]).writeto(buffer, checksum=True)
    return len(buffer.getvalue())


def read_image(path: Path, hdu: int = 0) -> tuple[np.ndarray, fits.Header]:
    """The image of HDU ``hdu`` as float32 (BZERO/BSCALE applied, decompressed) and its header.

    For an fpack file the image header is the compressed HDU's; the primary header's cards that the
    image header lacks (acquisition keywords are often written there) are added to it.
    """
    with fits.open(path, memmap=False) as hdul:
        header = hdul[hdu].header.copy()
        if hdu:
            for card in hdul[0].header.cards:
                if card.keyword not in header and card.keyword not in ("SIMPLE", "EXTEND", "NAXIS", "BITPIX"):
                    header.append(card)
        data = np.asarray(hdul[hdu].data, dtype=np.float32)
    return data, header


def iter_row_bands(paths: list[Path], rows: int, band_height: int,
                   hdus: list[int] | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(row slice, stack)`` with ``stack[i]`` the rows of ``paths[i]``, as float32.

    Reading bands through ``HDU.section`` keeps memory at ``len(paths) * band_height * width``
    values instead of whole frames: this is what bounds the master-combine step by ``--mem-limit``.
    The files are opened once and kept open for the whole iteration; ``hdus`` gives the image HDU of
    each file (1 for fpack-compressed files, whose ``section`` decompresses only the tiles it needs).
    """
    indexes = hdus or [0] * len(paths)
    handles = [fits.open(path, memmap=False, lazy_load_hdus=True) for path in paths]
    try:
        for start in range(0, rows, band_height):
            band = slice(start, min(start + band_height, rows))
            stack = np.stack([np.asarray(h[i].section[band, :], dtype=np.float32)
                              for h, i in zip(handles, indexes)])
            yield band, stack
    finally:
        for handle in handles:
            handle.close()
