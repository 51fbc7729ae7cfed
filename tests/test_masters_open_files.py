"""Masters are combined without one open file per input (issue 24 #6): a night with more darks than
the process may open files still builds its master dark, and reading the bands one file at a time gives
the same stacks as holding every input open."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np
from conftest import NO_SOLVE, REPO, make_night, small_spec

from astep_cal.formats.fitsio import iter_row_bands


def _open_files_64() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_a_night_with_more_darks_than_open_files_builds_its_master(tmp_path):
    date = "2026-07-01"
    make_night(tmp_path, small_spec(date=date, shape=(64, 64), dead_column=20, n_science=1, n_darks=100,
                                    n_flats=3, n_flat_darks=1, n_cosmic_rays=2, n_hot_pixels=5))
    config = tmp_path / "c.toml"
    config.write_text(NO_SOLVE + "[photometry]\nenabled = false\n")
    done = subprocess.run([sys.executable, "-m", "astep_cal", "once", str(tmp_path), "--config", str(config)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, preexec_fn=_open_files_64)
    assert "Too many open files" not in done.stderr, done.stderr[-3000:]
    night = json.loads((tmp_path / ".astep-cal" / "nights" / f"{date}.json").read_text())
    darks = night["masters"]["darks"]
    long = darks["60"]  # the 100 darks (the other exposure time is the flats' dark)
    assert len(long["inputs"]) == 100, night["masters"]
    assert (tmp_path / date / f"{date}-CAMS_CAL" / "masters" / long["file"]).is_file()
    assert all(frame["calibrate"]["status"] == "ok" for frame in night["frames"].values())
    assert done.returncode == 0, done.stderr[-3000:]


def test_one_file_at_a_time_reads_the_same_bands(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(3)
    paths = []
    for index in range(5):
        paths.append(tmp_path / f"d{index}.fits")
        fits.PrimaryHDU(rng.integers(0, 60000, (50, 20)).astype(np.uint16)).writeto(paths[-1])
    held = list(iter_row_bands(paths, 50, 16))
    one_by_one = list(iter_row_bands(paths, 50, 16, keep_open=2))
    assert [band for band, _ in held] == [band for band, _ in one_by_one] == \
        [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 50)]
    for (_, a), (_, b) in zip(held, one_by_one):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
