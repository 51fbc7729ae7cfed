"""Limits on a raw file, checked before any decoder sees it.

Astropy opens what it recognises, whatever the name: a zip or bzip2 payload under ``.fits`` is
unpacked whole into memory (246 bytes asked for ~80 MB); a gzip stream is inflated as far as it goes;
a header of 100 000 cards is parsed card by card (a 27 KB ``.gz`` cost 57 MB). The raw files arrive
from the telescope's transfer, but anyone in the transfer group can drop a file there, and one file
must not take the service's memory. So, before astropy:

- the file type is decided from its first bytes: a FITS file (``SIMPLE  =``) or a gzip stream of
  one; anything else under a FITS name is refused (``file_unreadable``) without being decompressed;
- a gzip stream is inflated in bounded steps (``max_length``), never more than
  :data:`MAX_DECOMPRESSED_BYTES` in all (``file_too_large``);
- the headers (the primary one, and the next one of a tile-compressed file) must end within
  :data:`MAX_HEADER_BYTES` (``header_too_large``);
- the image may hold at most :data:`MAX_PIXELS` (``frame_too_large``; checked by the inventory from
  the header, before any pixel is allocated).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 2880
CARD = 80
MAX_HEADER_BYTES = 200 * BLOCK  # 7200 cards; an ASTEP header has ~150, fpack's two ~250
MAX_DECOMPRESSED_BYTES = 1 << 30  # a 4096² frame of 32-bit pixels is 64 MB
MAX_PIXELS = 8192 * 8192  # four times the ASTEP detector
STEP_BYTES = 1 << 20  # read and inflate in steps of this much

_KNOWN = {b"PK\x03\x04": "a zip archive", b"BZh": "a bzip2 stream", b"\xfd7zXZ": "an xz stream",
          b"\x28\xb5\x2f\xfd": "a zstd stream"}


@dataclass(frozen=True)
class Refusal:
    """Why a raw file is not opened (a :class:`~astep_cal.formats.raw_night.Problem` event and reason)."""

    event: str
    reason: str


def _describe(head: bytes) -> str:
    for magic, what in _KNOWN.items():
        if head.startswith(magic):
            return what
    return f"starts with {head[:8]!r}"


def _raw_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(STEP_BYTES):
            yield chunk


class _Inflated:
    """A gzip file's payload in bounded steps; ``total`` and ``complete`` once consumed."""

    def __init__(self, path: Path):
        self.path = path
        self.total = 0
        self.complete = False
        self.too_large = False

    def chunks(self) -> Iterator[bytes]:
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        for compressed in _raw_chunks(self.path):
            data = compressed
            while data:
                out = inflater.decompress(data, STEP_BYTES)
                data = inflater.unconsumed_tail
                self.total += len(out)
                if self.total > MAX_DECOMPRESSED_BYTES:
                    self.too_large = True
                    return
                if out:
                    yield out
                if inflater.eof:
                    break
            if inflater.eof:
                break
        self.complete = inflater.eof


def _header_end(buffer: bytes, start: int) -> int | None:
    """Offset just past the header that begins at ``start`` (its END card's block), None when it does
    not end within :data:`MAX_HEADER_BYTES` of ``buffer``."""
    limit = min(len(buffer), start + MAX_HEADER_BYTES)
    for offset in range(start, limit - CARD + 1, CARD):
        if buffer[offset:offset + 3] == b"END" and buffer[offset + 3:offset + CARD].strip(b" ") == b"":
            return start + (offset - start) // BLOCK * BLOCK + BLOCK
    return None


_BITPIX = {8, 16, 32, 64, -32, -64}
MAX_AXIS = 1 << 31  # FITS axis lengths are 32-bit in practice; astropy loops over NAXIS axes


def _structure_problem(header: bytes) -> str | None:
    """A header whose structural cards no FITS file has: astropy would loop over ``NAXIS = 2**70``
    axes (make fuzz found the daemon stuck there) or size arrays from them."""
    values: dict[str, str] = {}
    for offset in range(0, len(header), CARD):
        key, equals, value = header[offset:offset + CARD].decode("ascii", "replace").partition("=")
        key = key.strip()
        if equals and (key in ("BITPIX", "NAXIS", "ZNAXIS", "ZBITPIX") or key.startswith(("NAXIS", "ZNAXIS"))):
            values.setdefault(key, value.split("/")[0].strip())
    for key, text in values.items():
        try:
            number = int(text)
        except ValueError:
            return f"{key} = {text[:20]!r} is not an integer"
        if key in ("BITPIX", "ZBITPIX") and number not in _BITPIX:
            return f"{key} = {number} is not a FITS pixel type"
        if key in ("NAXIS", "ZNAXIS") and not 0 <= number <= 999:
            return f"{key} = {number} is out of range (0..999)"
        if key not in ("BITPIX", "ZBITPIX", "NAXIS", "ZNAXIS") and not 0 <= number < MAX_AXIS:
            return f"{key} = {number} is out of range"
    return None


def _data_bytes(header: bytes) -> int:
    """Bytes of data (padded) after a header, from its BITPIX and NAXISn (0 when unreadable)."""
    values: dict[str, int] = {}
    for offset in range(0, len(header), CARD):
        key, _, value = header[offset:offset + CARD].decode("ascii", "replace").partition("=")
        key = key.strip()
        if key == "BITPIX" or key.startswith("NAXIS") or key in ("PCOUNT", "GCOUNT"):
            try:
                values[key] = int(value.split("/")[0].strip())
            except ValueError:
                return 0
    naxis = values.get("NAXIS", 0)
    if naxis <= 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= max(values.get(f"NAXIS{axis}", 0), 0)
    size = abs(values.get("BITPIX", 8)) // 8 * values.get("GCOUNT", 1) * (values.get("PCOUNT", 0) + count)
    return -(-size // BLOCK) * BLOCK


def check_headers(prefix: bytes, whole: bool) -> Refusal | None:
    """The primary header, and the extension after it when the primary has no data (fpack), must end
    within the limit. ``prefix`` is the start of the (decompressed) file; ``whole`` when it is all of it."""
    if not prefix.startswith(FITS_MAGIC):
        return Refusal("file_unreadable", f"not a FITS file ({_describe(prefix)}): not opened")
    end = _header_end(prefix, 0)
    if end is not None and (problem := _structure_problem(prefix[:end])) is not None:
        return Refusal("file_unreadable", f"not a FITS header: {problem}")
    if end is None:
        if whole or len(prefix) >= MAX_HEADER_BYTES:
            return Refusal("header_too_large" if len(prefix) >= MAX_HEADER_BYTES else "file_truncated",
                           f"the primary header does not end within {MAX_HEADER_BYTES} bytes"
                           if len(prefix) >= MAX_HEADER_BYTES else "the primary header has no END card")
        return None
    if _data_bytes(prefix[:end]) == 0 and len(prefix) > end:
        extension_end = _header_end(prefix, end)
        if extension_end is None and len(prefix) >= end + MAX_HEADER_BYTES:
            return Refusal("header_too_large", f"the extension header does not end within {MAX_HEADER_BYTES} bytes")
        if extension_end is not None and (problem := _structure_problem(prefix[end:extension_end])) is not None:
            return Refusal("file_unreadable", f"not a FITS extension header: {problem}")
    return None


PREFIX_BYTES = 2 * MAX_HEADER_BYTES + BLOCK  # enough to see both headers of an fpack file


def screen_plain(path: Path) -> Refusal | None:
    """A file read as is: its first bytes must be FITS, its headers short enough."""
    with open(path, "rb") as handle:
        prefix = handle.read(PREFIX_BYTES)
        whole = len(prefix) < PREFIX_BYTES
    return check_headers(prefix, whole)


def declared_bytes(prefix: bytes) -> int | None:
    """The size a single-image FITS file must have from its primary header (None: no END card in the
    prefix, or no data in the primary HDU, as in a tile-compressed file)."""
    end = _header_end(prefix, 0)
    data = _data_bytes(prefix[:end]) if end is not None else 0
    return end + data if end is not None and data else None


SLACK_BYTES = 4 * BLOCK  # what a gzip payload may hold beyond its declared size (padding, a short extension)


def screen_gzip(path: Path) -> tuple[Refusal | None, int]:
    """A gzip file, inflated once in bounded steps: (refusal or None, payload bytes or -1 when the
    stream ends early). Inflating stops as soon as the payload passes :data:`MAX_DECOMPRESSED_BYTES`,
    or the size its primary header declares (plus :data:`SLACK_BYTES`): astropy would read what
    follows as further HDUs."""
    inflated = _Inflated(path)
    prefix = bytearray()
    limit = MAX_DECOMPRESSED_BYTES
    checked = False
    for chunk in inflated.chunks():
        if not checked:
            prefix += chunk[:PREFIX_BYTES - len(prefix)]
            if len(prefix) >= PREFIX_BYTES:
                checked = True
                refusal = check_headers(bytes(prefix), whole=False)
                if refusal is not None:
                    return refusal, -1
                declared = declared_bytes(bytes(prefix))
                limit = min(limit, declared + SLACK_BYTES) if declared else limit
        if inflated.total > limit:
            return Refusal("file_too_large", f"inflates to more than {limit} bytes, its header declares "
                                             f"{limit - SLACK_BYTES}"), -1
    if inflated.too_large:
        return Refusal("file_too_large", f"inflates to more than {MAX_DECOMPRESSED_BYTES} bytes"), -1
    if not checked:
        refusal = check_headers(bytes(prefix), whole=inflated.complete)
        if refusal is not None:
            return refusal, -1
    return None, inflated.total if inflated.complete else -1


def screen_magic(path: Path) -> str:
    """``"gzip"`` or ``"plain"`` from the first bytes (the name does not decide)."""
    with open(path, "rb") as handle:
        return "gzip" if handle.read(2) == GZIP_MAGIC else "plain"
