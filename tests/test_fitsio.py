"""Atomic writes and band reads."""

import numpy as np
import pytest
from astropy.io import fits

from astep_cal.formats.fitsio import atomic_write_hdul, iter_row_bands
from astep_cal.support.storage import TEMP_MARKER, remove_stale_temporaries


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


def test_a_fits_write_fails_cleanly_and_a_full_disk_is_told_apart(tmp_path, monkeypatch):
    """CAL files are written straight into the temporary file. A failed write leaves nothing behind;
    ENOSPC, even when the writer re-raises it without errno (astropy adds a free-space message), is
    StorageUnavailable; another error on a disk with room stays what it is."""
    import errno

    from astep_cal.formats.fitsio import atomic_write_hdul
    from astep_cal.support import storage

    hdul = fits.HDUList([fits.PrimaryHDU(np.zeros((64, 64), np.float32))])

    def failing(error):
        def write(handle):
            handle.write(b"partial")
            try:
                raise error
            except OSError as original:
                raise OSError("Not enough space on disk: " + str(original))  # errno lost, as astropy does
        return write

    with pytest.raises(storage.StorageUnavailable):
        storage.atomic_write(tmp_path / "a.fits", failing(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match="Not enough space") as raised:
        storage.atomic_write(tmp_path / "b.fits", failing(OSError("262144 requested and 202336 written")))
    assert not isinstance(raised.value, storage.StorageUnavailable)  # the disk has room: not a full disk
    monkeypatch.setattr(storage, "FULL_BELOW_BYTES", 1 << 62)  # now nothing counts as free
    with pytest.raises(storage.StorageUnavailable):
        storage.atomic_write(tmp_path / "c.fits", failing(OSError("262144 requested and 202336 written")))
    assert list(tmp_path.iterdir()) == []
    atomic_write_hdul(tmp_path / "d.fits", hdul)
    assert fits.getdata(tmp_path / "d.fits").shape == (64, 64)


@pytest.mark.parametrize("form", ["plain", "fpack", "gzip"])
def test_a_window_read_alone_is_the_window_of_the_whole_image(tmp_path, form):
    """``read_window`` (the night's detector reads its pairs so) gives the same values as cutting the whole
    image, BZERO applied, for a plain, a tile-compressed and a gzip-compressed raw frame."""
    import gzip
    import shutil

    from astep_cal.formats.fitsio import read_image, read_window

    data = np.random.default_rng(3).integers(30000, 65535, (300, 200)).astype(np.uint16)
    path, hdu = tmp_path / "raw.fits", 0
    if form == "fpack":
        path, hdu = tmp_path / "raw.fits.fz", 1
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(path)
    else:
        fits.PrimaryHDU(data).writeto(path)
    if form == "gzip":
        with open(path, "rb") as plain, gzip.open(tmp_path / "raw.fits.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
        path = tmp_path / "raw.fits.gz"
    window = (slice(50, 250), slice(20, 180))
    found = read_window(path, hdu, window)
    assert found.dtype == np.float32 and np.array_equal(found, read_image(path, hdu)[0][window])
    assert np.array_equal(found, data[window].astype(np.float32))
