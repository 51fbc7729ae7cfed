"""Small files that ask for a lot of memory (issue 24 #1): refused or bounded before any decoder runs.

Each bomb is inspected in a fresh process (the inventory's own ``inspect_frame``, as the daemon and
``once`` call it) and the process's peak RSS (``ru_maxrss``) is compared with its peak before."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import REPO, no_solve_config, read_ledger, run_cli, small_spec

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cams_dir

DATE = "2026-07-01"
MB = 1 << 20


def _header(naxis1: int = 512, naxis2: int = 512, cards: int = 0) -> bytes:
    header = fits.Header([("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", naxis1), ("NAXIS2", naxis2),
                          ("IMAGETYP", "Light Frame"), ("EXPTIME", 60.0)])
    text = header.tostring().encode()
    text = text[:text.rindex(b"END" + b" " * 77)]  # without its END card...
    text += b"".join(f"C{index:07d}= {1:20d}".ljust(80).encode() for index in range(cards))  # ...many cards
    text += b"END".ljust(80)
    return text + b" " * (-len(text) % 2880)


def _gzip_stream(prefix: bytes, zeros: int) -> bytes:
    """gzip of ``prefix`` then ``zeros`` zero bytes, compressed in steps (never held whole)."""
    out = io.BytesIO()
    packer = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    out.write(packer.compress(prefix))
    block = bytes(MB)
    for _ in range(zeros // MB):
        out.write(packer.compress(block))
    out.write(packer.flush())
    return out.getvalue()


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.fits", "w", force_zip64=True) as member:
            block = bytes(MB)
            for _ in range(150):
                member.write(block)
    return path


def _huge_fz(path: Path) -> Path:
    """A real tile-compressed file whose image header then claims 100000 x 100000 pixels."""
    hdu = fits.CompImageHDU(np.zeros((64, 64), np.int16), compression_type="RICE_1")
    hdu.header["IMAGETYP"] = "Light Frame"
    hdu.header["EXPTIME"] = 60.0
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    payload = path.read_bytes()
    for key in (b"ZNAXIS1 =", b"ZNAXIS2 ="):
        at = payload.index(key)
        payload = payload[:at] + key + f"{100000:>21d}".encode() + payload[at + 30:]
    path.write_bytes(payload)
    return path


BOMBS = {
    "zip under a .fits name (150 MB inside)": ("2026-07-01_20.10.00_SCIENCE.fits", "file_unreadable",
                                               lambda p: _zip_bomb(p)),
    "gzip of a 512² frame inflating to 200 MB": ("2026-07-01_20.11.00_SCIENCE.fits.gz", "file_too_large",
                                 lambda p: p.write_bytes(_gzip_stream(_header(), 200 * MB)) and p),
    "gzip header of 300000 cards": ("2026-07-01_20.13.00_SCIENCE.fits.gz", "header_too_large",
                                    lambda p: p.write_bytes(gzip.compress(_header(cards=300_000), 9)) and p),
    "fpack file claiming 100000x100000": ("2026-07-01_20.14.00_SCIENCE.fits.fz", "frame_too_large",
                                          lambda p: _huge_fz(p)),
}

_PROBE = """
import json, resource, sys
from pathlib import Path
from astep_cal.formats.raw_night import inspect_frame, Problem
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = inspect_frame(Path(sys.argv[1]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"event": result.event if isinstance(result, Problem) else None, "growth_kb": after - before}))
"""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bombs")
    made = {}
    for kind, (name, _, make) in BOMBS.items():
        made[kind] = make(directory / name)
    return made


@pytest.mark.parametrize("kind", BOMBS)
def test_a_small_file_cannot_take_the_memory(bombs, kind):
    path = bombs[kind]
    assert path.stat().st_size < 2 * MB  # small on disk
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["growth_kb"] < 40 * 1024, measured  # peak RSS grew less than 40 MB
    expected = BOMBS[kind][1]
    if expected is not None:
        assert measured["event"] == expected, measured


def test_bombs_in_a_night_are_recorded_as_problems_once_and_the_night_goes_on(bombs, tmp_path, capsys):
    root = tmp_path / "data"
    make_night(root, small_spec(n_science=1))
    for kind, path in bombs.items():
        if BOMBS[kind][1] is not None:
            (cams_dir(root, DATE) / path.name).write_bytes(path.read_bytes())
    code, _, events = run_cli(capsys, "once", root, "--config", no_solve_config(tmp_path))
    assert code == 1  # problems need attention
    assert sum(e["event"] == "frame_calibrated" for e in events) == 1
    problems = {Path(p["path"]).name: p["event"] for p in read_ledger(root)["nights"][DATE]["problems"]}
    for kind, (name, event, _) in BOMBS.items():
        if event is not None:
            assert problems.get(name) == event, (kind, problems)
    logged = [e for e in events if e["event"] in ("file_unreadable", "file_too_large", "header_too_large",
                                                  "frame_too_large")]
    assert len(logged) == len(problems) == 4


def _with_card(key: str, value: str) -> bytes:
    """A whole 512² raw frame whose ``key`` card holds ``value`` as written (unparsed)."""
    header = bytearray(_header())
    at = header.index(f"{key:<8}=".encode())
    header[at:at + 80] = f"{key:<8}= {value}".ljust(80).encode()
    return bytes(header) + bytes(-(-512 * 512 * 2 // 2880) * 2880)


FOUND_BY_FUZZ = {  # make fuzz found these: a traceback out of the inventory, and a hang in astropy
    "unparsable IMAGETYP card": ("IMAGETYP", "'Light Frame", "file_unreadable"),
    "NAXIS = 2**70": ("NAXIS", str(2 ** 70), "file_unreadable"),
    "BITPIX = 7": ("BITPIX", "7", "file_unreadable"),
}


@pytest.mark.parametrize("kind", FOUND_BY_FUZZ)
def test_headers_found_by_the_fuzzer_are_problems(tmp_path, kind):
    key, value, event = FOUND_BY_FUZZ[kind]
    path = tmp_path / "2026-07-01_20.00.00_SCIENCE.fits"
    path.write_bytes(_with_card(key, value))
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["event"] == event
