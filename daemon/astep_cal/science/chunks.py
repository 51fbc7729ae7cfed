"""Per-pixel passes a chunk of rows at a time.

A whole-frame numpy expression on a 4096² float32 frame makes every operation read and write 64 MB
of memory, and each temporary is another full frame. The same expression applied to 64 rows at a time
keeps its temporaries (1 MB) in the CPU cache and reads each input once: 2-3x faster on the 2-core
observatory machine, and no full-frame temporary (``calibrate``, ``quality``).
"""

from __future__ import annotations

from collections.abc import Iterator

CHUNK_ROWS = 64  # rows per step: a step's temporaries stay in the CPU cache


def row_chunks(rows: int, chunk: int = CHUNK_ROWS) -> Iterator[slice]:
    """Consecutive row slices of ``chunk`` rows covering ``rows``."""
    for start in range(0, rows, chunk):
        yield slice(start, min(start + chunk, rows))
