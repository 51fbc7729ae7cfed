"""Atomic writes and band reads."""

import numpy as np
from astropy.io import fits

from astep_cal.fitsio import atomic_write_hdul, iter_row_bands
from astep_cal.storage import TEMP_MARKER, remove_stale_temporaries


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.fits"
    for value in (1.0, 2.0):
        atomic_write_hdul(path, fits.HDUList([fits.PrimaryHDU(np.full((10, 10), value, np.float32))]))
    assert fits.getdata(path)[0, 0] == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.fits"]


def test_stale_temporaries_are_swept(tmp_path):
    stale = tmp_path / f".out.fits{TEMP_MARKER}abc"
    stale.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists()


def test_row_bands_apply_bzero_and_cover_every_row(tmp_path):
    data = np.arange(37 * 11, dtype=np.uint16).reshape(37, 11) + 40000
    path = tmp_path / "raw.fits"
    fits.PrimaryHDU(data).writeto(path)
    assert fits.getheader(path)["BZERO"] == 32768
    rows = [band for band, _ in iter_row_bands([path, path], 37, 10)]
    assert [(r.start, r.stop) for r in rows] == [(0, 10), (10, 20), (20, 30), (30, 37)]
    stacked = np.concatenate([stack[1] for _, stack in iter_row_bands([path, path], 37, 10)])
    assert np.array_equal(stacked, data.astype(np.float32))
