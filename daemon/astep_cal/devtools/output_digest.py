"""A run's outputs as a normalised manifest, and the differences between two manifests.

Used by :mod:`astep_cal.devtools.compare_outputs` to show that the three front-ends, and two versions
of the code, produce the same CAL files, masters, summaries and ledger records. "The same" has to
leave out what differs between two correct runs — the time of writing, how long a step took — and
nothing else, so each normalisation below names what it drops and why (found by looking at the
files every front-end writes):

- FITS headers: ``CHECKSUM`` (its value covers the header, whose comments hold the write time) and
  the comments of ``CHECKSUM``/``DATASUM`` ("updated 2026-…T…"); a ``DATE`` card (the file's write
  date; astep-cal writes none today, astropy or solve-field could). Timestamps inside ``HISTORY`` /
  ``COMMENT`` text are replaced by ``<time>`` (none are written today). ``ASTCRAWF`` (raw size:mtime)
  is kept: the fixed night sets its raw files' mtimes, so it is reproducible.
- Ledger (schema 1 or 2) and ``summary.json``: ``updated``, ``generated`` (write times),
  ``duration_s`` (run time), ``retry_after`` (a wall-clock time), ``mtime_ns`` and the index rows'
  ``file`` (size and mtime of a night file: storage, not results). The ledger is compared record by
  record — index totals, then each night's inventory, masters, problems and frames — not file by file,
  so a schema-1 ledger (one file) compares with a schema-2 one (index + night files) field by field.
- Pixels are compared exactly (sha256 of the array bytes, dtype and shape); a few statistics ride
  along so a difference shows its size.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from astropy.io import fits

VOLATILE_KEYS = frozenset({"updated", "generated", "duration_s", "retry_after", "mtime_ns"})
DROPPED_CARDS = frozenset({"CHECKSUM", "DATE"})
UNCOMMENTED_CARDS = frozenset({"DATASUM"})
TEXT_CARDS = ("HISTORY", "COMMENT")
CONTROL_FILES = frozenset({"lock", "daemon.json", "retry-request"})  # the daemon's, not results
STATE_DIR = ".astep-cal"
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?")


# ------------------------------------------------------------------------------------- FITS files

def _stats(data: np.ndarray) -> str:
    """A short description of an array, so a pixel difference shows how large it is (for a table,
    e.g. a ``CAT`` catalogue, its number of rows)."""
    if data.dtype.names:
        return f"rows={data.size} columns={len(data.dtype.names)}"
    if data.dtype.kind in "fc":
        finite = data[np.isfinite(data)]
        if not finite.size:
            return f"finite=0/{data.size}"
        return (f"finite={finite.size}/{data.size} mean={finite.mean():.7g} min={finite.min():.7g} "
                f"max={finite.max():.7g}")
    return f"nonzero={int(np.count_nonzero(data))}/{data.size} sum={int(data.sum(dtype=np.int64))}"


def array_digest(data: np.ndarray | None) -> dict[str, Any]:
    """sha256 of the pixel bytes with dtype and shape (equal bytes of another shape are not equal)."""
    if data is None:
        return {"sha256": None}
    array = np.ascontiguousarray(data)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return {"sha256": digest.hexdigest(), "dtype": array.dtype.str, "shape": list(array.shape),
            "stats": _stats(array)}


def _json_value(value: Any) -> Any:
    """Card values as JSON can hold them (astropy's Undefined and complex numbers as text)."""
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def normalise_header(header: fits.Header) -> dict[str, Any]:
    """``{KEY: [value, comment]}``; text cards as ``{HISTORY: [texts]}``; times and checksums out."""
    cards: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if key in DROPPED_CARDS:
            continue
        if key in TEXT_CARDS or key == "":
            cards.setdefault(key or "BLANK", []).append(_TIMESTAMP.sub("<time>", str(card.value)))
            continue
        comment = "" if key in UNCOMMENTED_CARDS else card.comment
        cards[key] = [_json_value(card.value), comment]
    return cards


def fits_digest(path: Path) -> dict[str, Any]:
    """Every HDU of a FITS file: pixel digest, normalised header and position, keyed by EXTNAME (a
    second HDU of the same name as ``NAME#2``): a MASK that moved behind a new ERR extension is still
    compared with the MASK, and the move shows as its ``index``."""
    hdus: dict[str, Any] = {}
    with fits.open(path, memmap=False) as hdul:
        for index, hdu in enumerate(hdul):
            same_name = sum(k.split("#")[0] == hdu.name for k in hdus)
            key = f"{hdu.name}#{same_name + 1}" if same_name else hdu.name
            hdus[key] = {"index": index, "data": array_digest(hdu.data), "header": normalise_header(hdu.header)}
    return {"hdus": hdus}


# ------------------------------------------------------------------------------- JSON documents

def strip_volatile(value: Any) -> Any:
    """``value`` without the keys of :data:`VOLATILE_KEYS`, at any depth."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def normalise_ledger(state: Path) -> dict[str, Any]:
    """The ledger as records: ``index`` (schema, software, per-night totals) and ``nights`` (each night's
    record with its frames), whether it is stored as schema 1 (one file) or schema 2 (index + nights/)."""
    index_path = state / "ledger.json"
    if not index_path.exists():
        return {}
    index = _read_json(index_path)
    nights_dir = state / "nights"
    if index.get("schema", 1) >= 2:
        nights = {p.stem: _read_json(p) for p in sorted(nights_dir.glob("*.json"))}
        totals = {date: row.get("totals", row) for date, row in index.get("nights", {}).items()}
    else:
        nights, totals = index.get("nights", {}), {}
    head = {k: v for k, v in index.items() if k != "nights"}
    return strip_volatile({"index": {**head, "totals": totals}, "nights": nights})


# ----------------------------------------------------------------------------------- the manifest

def _is_output(relative: Path) -> bool:
    """CAL files, masters and summaries (under ``*_CAL/``); the raw directories are inputs."""
    return any(part.endswith("_CAL") for part in relative.parts[:-1])


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _output_entry(path: Path) -> dict[str, Any]:
    if path.name.endswith((".fits", ".fits.fz", ".fits.gz")):
        return fits_digest(path)
    if path.suffix == ".json":
        return {"json": strip_volatile(_read_json(path))}
    if path.suffix == ".png":  # a plot of the summary: its numbers are compared in summary.json
        return {"png": "present"}
    return {"sha256": _file_sha256(path)}


def build_manifest(root: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The normalised outputs of a processed data root: ``files`` (every file under ``*_CAL/``),
    ``ledger`` (records), ``inputs`` (sha256 of every raw file: they must stay untouched), ``meta``
    (what ran; never compared)."""
    files, inputs = {}, {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if relative.parts[0] == STATE_DIR:
            continue
        if _is_output(relative):
            files[str(relative)] = _output_entry(path)
        else:
            inputs[str(relative)] = _file_sha256(path)
    return {"meta": meta or {}, "files": files, "ledger": normalise_ledger(root / STATE_DIR), "inputs": inputs}


# ------------------------------------------------------------------------------------ differences

def _walk(a: Any, b: Any, path: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...], Any, Any]]:
    """``(kind, path, a, b)`` for each place the documents differ; a subtree on one side only (a whole
    file, HDU or night) is one difference, not one per leaf. Lists are compared whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if key not in b:
                yield "only in A", (*path, key), a[key], None
            elif key not in a:
                yield "only in B", (*path, key), None, b[key]
            else:
                yield from _walk(a[key], b[key], (*path, key))
    elif a != b:
        yield "differs", path, a, b


def _describe(path: tuple[str, ...]) -> str:
    """A key path said the way a reader looks for it: which file, HDU, card; which ledger field."""
    section, rest = path[0], path[1:]
    if section == "files" and len(rest) >= 3 and rest[1] == "hdus":
        where = f"{rest[0]} HDU {rest[2]}"
        if len(rest) > 4:
            return f"{where} {'card' if rest[3] == 'header' else 'pixels'} {'/'.join(rest[4:])}"
        if rest[3:] == ("index",):
            return f"{where} position"
        return f"{where} {'/'.join(rest[3:])}".rstrip()
    if section == "files":
        return f"{rest[0]} {'/'.join(rest[1:])}".rstrip()
    return f"{section} {'/'.join(rest)}".rstrip()


def diff_manifests(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """One line per difference between two manifests (``meta`` aside); empty when they agree."""
    strip = lambda m: {k: v for k, v in m.items() if k != "meta"}  # noqa: E731
    lines = []
    for kind, path, left, right in _walk(strip(a), strip(b), ()):
        if kind == "differs":
            lines.append(f"differs:   {_describe(path)}: A={_short(left)}  B={_short(right)}")
        else:
            lines.append(f"{kind}: {_describe(path)} = {_short(left if right is None else right)}")
    return lines


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def group_differences(lines: list[str]) -> dict[str, list[str]]:
    """Differences by file (or ledger night), so a report reads one product at a time."""
    groups: dict[str, list[str]] = {}
    for line in lines:
        body = line.split(":", 1)[1].strip()
        head = body.split(" ", 1)[0] if not body.startswith(("ledger", "inputs")) else " ".join(body.split("/")[:2])
        groups.setdefault(head, []).append(line)
    return groups


def save_manifest(manifest: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))


def load_manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
