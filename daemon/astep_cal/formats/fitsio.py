"""FITS I/O at the edge of the pipeline: atomic FITS writes, whole-image and band reads.

The file-level pieces (atomic writes, fingerprints, storage errors) live in ``storage``.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    meaning is documented (docs/pages/data-products.md). A string too long for one card is continued (CONTINUE
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
    """Write an HDUList atomically (checksums included), straight into the temporary file.

    On one thread: compressing the extensions on two threads at once (astropy's compressor lets go of
    the GIL) gave the same frame other bytes in another process (test_compare_outputs and test_crash
    caught it), most likely cfitsio's dither random table, filled on first use, raced by the threads
    (docs/pages/compression.md)."""
    atomic_write(path, lambda handle: hdul.writeto(handle, checksum=True), make_parents)


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


def read_window(path: Path, hdu: int, window: tuple[slice, slice]) -> np.ndarray:
    """A window of HDU ``hdu``'s image as float32 (BZERO/BSCALE applied), reading only its rows
    (``HDU.section``; for an fpack file only the tiles it covers are decompressed)."""
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        return np.array(hdul[hdu].section[window], dtype=np.float32)


MAX_KEPT_OPEN = 64  # inputs held open through a band iteration; with more, each band opens and closes each


def kept_open_limit() -> int:
    """How many inputs a band iteration may hold open: MAX_KEPT_OPEN, or a quarter of this process's
    open-file limit when that is lower (the daemon's watcher, logs and solve-field need the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_KEPT_OPEN if soft == resource.RLIM_INFINITY else max(1, min(MAX_KEPT_OPEN, soft // 4))


def iter_row_bands(paths: list[Path], rows: int, band_height: int, hdus: list[int] | None = None,
                   keep_open: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(row slice, stack)`` with ``stack[i]`` the rows of ``paths[i]``, as float32.

    Reading bands through ``HDU.section`` keeps memory at ``len(paths) * band_height * width``
    values instead of whole frames: this is what bounds the master-combine step by ``--mem-limit``.
    ``hdus`` gives the image HDU of each file (1 for fpack-compressed files, whose ``section``
    decompresses only the tiles it needs). Up to ``keep_open`` inputs (default :func:`kept_open_limit`)
    are opened once for the whole iteration; a night with more (a thousand darks) would run out of file
    descriptors that way, so then every band opens, reads and closes each input in turn: one open file
    at a time, at the cost of a header parse per input and band (a gzip-compressed input is inflated
    again from its start for every band).
    """
    indexes = hdus or [0] * len(paths)
    limit = kept_open_limit() if keep_open is None else keep_open
    if len(paths) > limit:
        yield from _bands_one_file_at_a_time(paths, indexes, rows, band_height)
        return
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


def _bands_one_file_at_a_time(paths: list[Path], indexes: list[int], rows: int,
                              band_height: int) -> Iterator[tuple[slice, np.ndarray]]:
    for start in range(0, rows, band_height):
        band = slice(start, min(start + band_height, rows))
        stack: np.ndarray | None = None
        for position, (path, index) in enumerate(zip(paths, indexes)):
            with fits.open(path, memmap=False, lazy_load_hdus=True) as handle:
                rows_read = np.asarray(handle[index].section[band, :], dtype=np.float32)
            if stack is None:
                stack = np.empty((len(paths),) + rows_read.shape, dtype=np.float32)
            stack[position] = rows_read
        yield band, stack
