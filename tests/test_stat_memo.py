"""The inventory of a night re-reads only the raw files that changed (formats.stat_memo): a late frame
in the daemon does not pay for the headers of the whole night."""

import os

import numpy as np
from astropy.io import fits

from astep_cal.formats import raw_night
from astep_cal.formats.stat_memo import StatMemo

DATE = "2026-07-01"


def _frame(path, minute: int) -> None:
    header = fits.Header({"IMAGETYP": "SCIENCE", "EXPTIME": 60.0, "DATE-OBS": f"{DATE}T20:{minute:02d}:00"})
    fits.PrimaryHDU(np.full((20, 30), minute, np.uint16), header).writeto(path)


def _night(root):
    cams = root / DATE / f"{DATE}-CAMS"
    cams.mkdir(parents=True)
    for minute in range(5):
        _frame(cams / f"{DATE}_20.{minute:02d}.00_SCIENCE.fits", minute)
    return cams


def test_unchanged_files_are_not_read_again_changed_ones_are(tmp_path):
    cams = _night(tmp_path)
    first = raw_night.take_inventory(tmp_path, DATE)
    hits = raw_night.inspect_known_frame.hits
    again = raw_night.take_inventory(tmp_path, DATE)
    assert raw_night.inspect_known_frame.hits == hits + 5  # all five from the memo
    assert again.science == first.science and not again.problems
    # a file cut short (rewritten: new size and times) is read again and found truncated
    victim = cams / f"{DATE}_20.02.00_SCIENCE.fits"
    victim.write_bytes(victim.read_bytes()[:3000])
    late = cams / f"{DATE}_20.05.00_SCIENCE.fits"  # and a late frame arrives
    _frame(late, 5)
    hits = raw_night.inspect_known_frame.hits
    third = raw_night.take_inventory(tmp_path, DATE)
    assert raw_night.inspect_known_frame.hits == hits + 4  # the four unchanged ones only
    assert [p.event for p in third.problems] == ["file_truncated"]
    assert sorted(f.name for f in third.science) == sorted(
        [f.name for f in first.science if f.name != victim.name] + [late.name])


def test_a_file_replaced_with_the_same_size_and_mtime_is_read_again(tmp_path):
    """The inode and change time catch a replacement the ledger's size + mtime would not."""
    path = tmp_path / "a.txt"
    path.write_text("one")
    reads = []
    memo = StatMemo(lambda p: reads.append(p) or p.read_text())
    assert memo(path) == "one" and memo(path) == "one" and len(reads) == 1
    stat = path.stat()
    replacement = tmp_path / "b.txt"
    replacement.write_text("two")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, path)
    assert memo(path) == "two" and len(reads) == 2
