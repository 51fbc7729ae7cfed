"""Bad input: every kind is a clear log event and a visible status, never a traceback; nothing is lost
and the rest of the night is processed.

One data root holds every kind at once (``BAD_INPUTS``: the table docs/pages/operations.md reproduces) and is
processed by the real command in its own process, with the capabilities that let root ignore file
permissions dropped (``setpriv``), so that an unreadable file is really unreadable.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import REPO, daemon_config, no_solve_config, parse_events, read_ledger, run_cli, small_spec, tree_digest

from astep_cal.devtools.synthetic import make_night
from astep_cal.engine.frame_steps import read_whole_frame
from astep_cal.engine.stages import FrameBlocked
from astep_cal.formats.names import cal_dir, cal_name, name_from_header
from astep_cal.formats.products import cal_image_hdu, read_cal_header
from astep_cal.formats.raw_night import inspect_frame

DATE = "2026-07-01"


@dataclass(frozen=True)
class BadInput:
    """One kind of bad input: how to make it, the event expected, and whether its frame is processed."""

    kind: str
    make: Callable[[Path, object], Path]  # (data root, night truth) -> the path the event names
    event: str
    calibrated: bool = False  # a science frame that must still get its CAL file


def _edit_copy(source: Path, target: Path, edit) -> Path:
    with fits.open(source) as hdul:
        data, header = edit(hdul[0].data.copy(), hdul[0].header.copy())
    fits.PrimaryHDU(data, header).writeto(target)
    return target


def _header(key, value):
    def edit(data, header):
        header[key] = value
        return data, header
    return edit


def _without(key):
    def edit(data, header):
        header.remove(key)
        return data, header
    return edit


def _science(truth, i=0) -> Path:
    return truth.science_files[i]


def _cams(root: Path) -> Path:
    return root / DATE / f"{DATE}-CAMS"


def _skyflat(root: Path) -> Path:
    return root / DATE / f"{DATE}-CAMS_SKYFLAT"


def _float_frame(value):
    def edit(data, header):
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
        return np.full(data.shape, value, np.float32), header
    return edit


def _partly_nan(data, header):
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    out = data.astype(np.float32)
    out[100:104, 200:260] = np.nan
    return out, header


def _scaled_flat(factor):
    def edit(data, header):
        bias = 1000.0
        return np.clip(bias + (data.astype(np.float64) - bias) * factor, 0, 65535).astype(np.uint16), header
    return edit


def _gzip_copy(root, truth):
    target = _cams(root) / "2026-07-01_22.10.00_SCIENCE.fits.gz"
    target.write_bytes(gzip.compress(_science(truth, 1).read_bytes(), compresslevel=1))
    return target


def _fpack_copy(root, truth):
    """What ``fpack`` makes: an empty primary HDU, the image and its header in a compressed HDU 1."""
    target = _cams(root) / "2026-07-01_22.11.00_SCIENCE.fits.fz"
    with fits.open(_science(truth, 2)) as hdul:
        header = hdul[0].header.copy()
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(hdul[0].data, header=header,
                                                           compression_type="RICE_1")]).writeto(target)
    return target


def _truncated_gzip(root, truth):
    target = _cams(root) / "2026-07-01_22.12.00_SCIENCE.fits.gz"
    payload = gzip.compress(_science(truth).read_bytes(), compresslevel=1)
    target.write_bytes(payload[: len(payload) // 2])
    return target


def _cube(root, truth):
    target = _cams(root) / "2026-07-01_22.13.00_SCIENCE.fits"
    hdu = fits.PrimaryHDU(np.zeros((2, 64, 64), np.uint16))
    hdu.header["EXPTIME"] = 60.0
    hdu.writeto(target)
    return target


def _unreadable(root, truth):
    target = shutil.copy(_science(truth), _cams(root) / "2026-07-01_22.14.00_SCIENCE.fits")
    os.chmod(target, 0)
    return Path(target)


def _symlink_out(root, truth):
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(_science(truth), outside / "elsewhere_SCIENCE.fits")
    link = _cams(root) / "2026-07-01_22.15.00_SCIENCE.fits"
    link.symlink_to(outside / "elsewhere_SCIENCE.fits")
    return link


def _symlinked_night(root, truth):
    outside = root.parent / "outside-night"
    shutil.copytree(root / DATE, outside / "2026-07-06", symlinks=True, dirs_exist_ok=True)
    link = root / "2026-07-06"
    link.symlink_to(outside / "2026-07-06")
    return link


def _foreign_at_output_name(root, truth):
    target = cal_dir(root, DATE) / cal_name(_science(truth, 0).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(target)  # an old pipeline's product
    return target


def _night_without_flats(root, truth):
    """The night's good science frames and darks again, as 2026-07-03, with no sky-flat directory."""
    cams = root / "2026-07-03" / "2026-07-03-CAMS"
    cams.mkdir(parents=True)
    for path in truth.science_files + truth.dark_files:
        shutil.copy(path, cams / path.name)
    return root / "2026-07-03" / "2026-07-03-CAMS_SKYFLAT"


def _new_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


BAD_INPUTS = [
    BadInput("zero-byte file", lambda r, t: (_cams(r) / "2026-07-01_22.00.00_SCIENCE.fits").write_bytes(b"")
             or _cams(r) / "2026-07-01_22.00.00_SCIENCE.fits", "file_empty"),
    BadInput("truncated FITS", lambda r, t: (_cams(r) / "2026-07-01_22.01.00_SCIENCE.fits").write_bytes(
        _science(t).read_bytes()[:100_000]) and _cams(r) / "2026-07-01_22.01.00_SCIENCE.fits", "file_truncated"),
    BadInput("non-FITS file named .fits", lambda r, t: (_cams(r) / "2026-07-01_22.02.00_SCIENCE.fits").write_text(
        "a text file\n" * 300) and _cams(r) / "2026-07-01_22.02.00_SCIENCE.fits", "file_unreadable"),
    BadInput("gzip-compressed FITS (.fits.gz)", _gzip_copy, "frame_calibrated", calibrated=True),
    BadInput("fpack-compressed FITS (.fits.fz)", _fpack_copy, "frame_calibrated", calibrated=True),
    BadInput("truncated gzip FITS", _truncated_gzip, "file_truncated"),
    BadInput("wrong dimensions", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.03.00_SCIENCE.fits",
             lambda d, h: (np.ascontiguousarray(d[:256, :300]), h)), "frame_failed"),
    BadInput("all-NaN frame", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.04.00_SCIENCE.fits",
             _float_frame(np.nan)), "frame_failed"),
    BadInput("all-zero frame", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.05.00_SCIENCE.fits",
             _float_frame(0.0)), "frame_failed"),
    BadInput("frame with NaN pixels", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.06.00_SCIENCE.fits",
             _partly_nan), "frame_calibrated", calibrated=True),
    BadInput("3-D cube", _cube, "frame_not_image"),
    BadInput("missing EXPTIME", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.07.00_SCIENCE.fits",
             _without("EXPTIME")), "exptime_invalid"),
    BadInput("negative EXPTIME", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.08.00_SCIENCE.fits",
             _header("EXPTIME", -60.0)), "exptime_invalid"),
    BadInput("non-numeric EXPTIME", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.09.00_SCIENCE.fits",
             _header("EXPTIME", "sixty")), "exptime_invalid"),
    BadInput("unparsable DATE-OBS", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.16.00_SCIENCE.fits",
             _header("DATE-OBS", "yesterday evening")), "date_obs_invalid", calibrated=True),
    BadInput("name and header type disagree", lambda r, t: _edit_copy(
        _science(t), _cams(r) / "2026-07-01_22.17.00_SCIENCE.fits",
        lambda d, h: _header("IMAGETYP", "Dark Frame")(*_header("ACQTYPE", "DARK")(d, h))),
        "type_mismatch", calibrated=True),
    BadInput("unknown type word", lambda r, t: _edit_copy(_science(t), _cams(r) / "2026-07-01_22.18.00_FOCUS.fits",
             lambda d, h: (d, (h.remove("IMAGETYP"), h.remove("ACQTYPE"), h)[-1])), "file_type_unknown"),
    BadInput("duplicate frame", lambda r, t: Path(shutil.copy(_science(t), _cams(r) / "2026-07-01_22.19.00_SCIENCE.fits")),
             "frame_duplicate", calibrated=True),
    BadInput("saturated sky flat", lambda r, t: _edit_copy(t.flat_files[0], _skyflat(r) / "2026-07-01_18.00.00_SKYFLAT.fits",
             _scaled_flat(4.0)), "flat_rejected"),
    BadInput("cloud-dimmed sky flat", lambda r, t: _edit_copy(
        t.flat_files[0], _skyflat(r) / "2026-07-01_18.01.00_SKYFLAT.fits", _scaled_flat(0.03)), "flat_rejected"),
    BadInput("dark of a different temperature", lambda r, t: _edit_copy(
        t.dark_files[0], _cams(r) / "2026-07-01_18.30.00_DARK.fits", _header("CCD-TEMP", -30.0)),
        "dark_temperature_mismatch"),
    BadInput("unreadable file (permissions)", _unreadable, "file_unreadable"),
    BadInput("camera's .fit suffix (any case)", lambda r, t: Path(shutil.copy(
        _science(t, 1), _cams(r) / "2026-07-01_22.20.00_SCIENCE.FIT")), "frame_calibrated", calibrated=True),
    BadInput("non-ASCII file name", lambda r, t: Path(shutil.copy(
        _science(t, 2), _cams(r) / "2026-07-01_22.21.00_SCIENCE_Étoile-η.fits")), "frame_calibrated", calibrated=True),
    BadInput("symlink pointing outside the data root", _symlink_out, "symlink_outside_root"),
    BadInput("night directory symlinked from outside the root", _symlinked_night, "symlink_outside_root"),
    BadInput("directory named like an impossible date", lambda r, t: _new_dir(r / "2026-02-30"), "night_dir_invalid"),
    BadInput("foreign file at an output's name in _CAL", _foreign_at_output_name, "foreign_output_kept"),
    BadInput("sky flat in the science directory", lambda r, t: Path(shutil.copy(
        t.flat_files[0], _cams(r) / "2026-07-01_18.02.00_SKYFLAT.fits")), "file_misplaced"),
    BadInput("non-FITS file in a raw directory", lambda r, t: (_cams(r) / "notes.txt").write_text("seeing 1.2")
             and _cams(r) / "notes.txt", "file_ignored"),
    BadInput("empty -CAMS directory", lambda r, t: _new_dir(r / "2026-07-02" / "2026-07-02-CAMS"), "night_empty"),
    BadInput("night without -CAMS_SKYFLAT", lambda r, t: _night_without_flats(r, t), "skyflat_dir_missing"),
    BadInput("night without -CAMS", lambda r, t: _new_dir(r / "2026-07-04" / "2026-07-04-CAMS_SKYFLAT").parent
             / "2026-07-04-CAMS", "science_dir_missing"),
]


NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")  # root reads a chmod-0 file otherwise


def make_bad_root(root: Path):
    """A data root holding every kind of bad input; returns the night's truth and (kind, path) pairs."""
    truth = make_night(root, small_spec())
    expected = [(bad, bad.make(root, truth)) for bad in BAD_INPUTS]
    return truth, expected


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    """A data root with every bad input, processed once by the real command without DAC override."""
    base = tmp_path_factory.mktemp("bad")
    root = base / "data"
    foreign_other = cal_dir(root, DATE) / "old_pipeline_notes.txt"
    truth, expected = make_bad_root(root)
    foreign_other.write_text("kept")
    foreign_bytes = expected[[b.kind for b in BAD_INPUTS].index("foreign file at an output's name in _CAL")][1].read_bytes()
    raw_before = tree_digest(_cams(root))
    config = no_solve_config(base)
    command = [*NO_DAC, sys.executable, "-m", "astep_cal", "once", str(root), "--config", str(config)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    return root, truth, expected, completed, raw_before, foreign_bytes


def test_every_bad_input_has_its_event(bad_root):
    root, truth, expected, completed, _, _ = bad_root
    assert "Traceback" not in completed.stderr + completed.stdout
    events = parse_events(completed.stderr)
    for bad, path in expected:
        name = path.name
        matching = [e for e in events if e["event"] == bad.event
                    and (name in str(e.get("path", "")) or e.get("frame") == name or name in str(e.get("night", "")))]
        assert matching, f"{bad.kind}: no {bad.event} event naming {name}"


def test_usable_frames_are_all_calibrated(bad_root):
    root, truth, expected, completed, _, _ = bad_root
    assert completed.returncode == 1  # problems need attention
    out = cal_dir(root, DATE)
    for raw in truth.science_files:
        assert (out / cal_name(raw.name)).is_file(), raw.name
    for bad, path in expected:
        if bad.calibrated:
            assert (out / cal_name(path.name)).is_file(), bad.kind
    # the night without sky flats borrowed the flat of 2026-07-01 and was calibrated too
    assert len(list(cal_dir(root, "2026-07-03").glob("*_CAL.fits"))) == len(truth.science_files)


def test_compressed_frames_calibrate_like_their_originals(bad_root):
    root, truth, expected, _, _, _ = bad_root
    out = cal_dir(root, DATE)
    for original, copy_name in ((truth.science_files[1], "2026-07-01_22.10.00_SCIENCE.fits.gz"),
                                (truth.science_files[2], "2026-07-01_22.11.00_SCIENCE.fits.fz")):
        a = fits.getdata(out / cal_name(original.name))
        b = fits.getdata(out / cal_name(copy_name))
        np.testing.assert_array_equal(a, b)


def test_non_ascii_name_is_kept_exactly_in_the_provenance(bad_root):
    root, *_ = bad_root
    raw_name = "2026-07-01_22.21.00_SCIENCE_Étoile-η.fits"
    header = read_cal_header(cal_dir(root, DATE) / cal_name(raw_name))
    assert header["ASTCRAW"] == "2026-07-01_22.21.00_SCIENCE_%C3%89toile-%CE%B7.fits"
    assert name_from_header(header["ASTCRAW"]) == raw_name  # what ledger recovery reads back


def test_nan_pixels_are_masked_not_propagated(bad_root):
    root, *_ = bad_root
    with fits.open(cal_dir(root, DATE) / "2026-07-01_22.06.00_SCIENCE_CAL.fits") as hdul:
        assert np.isfinite(hdul[cal_image_hdu(hdul)].data).all()
        assert (hdul["MASK"].data[100:104, 200:260] & 1).all()


def test_nothing_is_lost(bad_root):
    root, truth, expected, _, raw_before, foreign_bytes = bad_root
    assert tree_digest(_cams(root)) == raw_before  # raw files byte-identical (the unreadable one included)
    out = cal_dir(root, DATE)
    assert (out / "old_pipeline_notes.txt").read_text() == "kept"
    kept = list(out.glob(f"{cal_name(truth.science_files[0].name)}.foreign-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == foreign_bytes
    assert "ASTCVER" in read_cal_header(out / cal_name(truth.science_files[0].name))
    assert not (root.parent / "outside" / f"{DATE}-CAMS_CAL").exists()  # nothing written through a link
    assert not any(".astep-tmp-" in p.name for p in root.rglob("*"))


def test_status_shows_the_problems(bad_root, capsys):
    root, *_ = bad_root
    ledger = read_ledger(root)
    problems = {p["event"] for p in ledger["nights"][DATE]["problems"]}
    assert {"file_empty", "file_truncated", "file_unreadable", "exptime_invalid", "flat_rejected",
            "dark_temperature_mismatch", "symlink_outside_root", "file_misplaced"} <= problems
    failed = {name: f["calibrate"]["error"] for name, f in ledger["nights"][DATE]["frames"].items()
              if f.get("calibrate", {}).get("status") == "failed"}
    assert "no signal" in failed["2026-07-01_22.04.00_SCIENCE.fits"]
    assert "masters are" in failed["2026-07-01_22.03.00_SCIENCE.fits"]
    code, out, _ = run_cli(capsys, "status", root)
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(DATE))
    assert "attention" in row and row.split()[-1] == str(len(ledger["nights"][DATE]["problems"]))


def test_docs_list_every_kind():
    page = (REPO / "docs" / "pages" / "operations.md").read_text()
    table = page[page.index("## Bad input"):]
    for bad in BAD_INPUTS:
        assert re.search(rf"^\| {re.escape(bad.kind)} \|.*`{bad.event}`", table, re.M), bad.kind


def test_a_file_growing_while_read_is_left_for_the_next_run(tmp_path):
    truth = make_night(tmp_path, small_spec(n_science=1))
    frame = inspect_frame(truth.science_files[0])
    stop = threading.Event()

    def keep_writing():  # a slow transfer: ~3 MB/s, at most 16 MB, so the disk never fills
        with open(frame.path, "ab") as handle:
            for _ in range(16 * 2 ** 20 // 2880):
                if stop.is_set():
                    return
                handle.write(b"\0" * 2880)
                handle.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        outcomes = []
        for _ in range(200):
            try:
                read_whole_frame(frame)
                outcomes.append("read")
            except FrameBlocked:
                outcomes.append("blocked")
                break
    finally:
        stop.set()
        writer.join()
    assert "blocked" in outcomes


def test_night_without_skyflat_dir_and_nothing_to_borrow(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec(n_flats=0, n_flat_darks=0))
    assert not (tmp_path / truth.spec.date / f"{truth.spec.date}-CAMS_SKYFLAT").exists()
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", no_solve_config(tmp_path))
    assert code == 1
    assert {"skyflat_dir_missing", "flat_unavailable", "frame_blocked"} <= {e["event"] for e in events}


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "once", tmp_path / "missing")
    assert code == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("[cosmics]\nniter = 'two'\n")
    (tmp_path / "data").mkdir()
    assert run_cli(capsys, "once", tmp_path / "data", "--config", bad)[0] == 2
    assert run_cli(capsys, "once", tmp_path / "data", "--night", "2026-13-01")[0] == 2


# --- through the daemon: bad files are handled once, never work left (the stall of issue 12) ------

PROBLEM_EVENTS = {"file_empty", "file_truncated", "file_unreadable", "frame_not_image", "exptime_invalid",
                  "file_type_unknown", "symlink_outside_root", "file_misplaced", "flat_rejected",
                  "dark_temperature_mismatch"}


def test_daemon_handles_every_bad_input_once_and_goes_on(tmp_path, daemons):
    """Every kind of bad input in one night, a good night after it, and a night whose only science
    file is junk: each night is processed once, each problem logged once, the good night done."""
    root = tmp_path / "data"
    _, expected = make_bad_root(root)
    later = make_night(root, small_spec(date="2026-07-10", start_time="2026-07-10T20:00:00", seed=7))
    junk_only = root / "2026-07-11" / "2026-07-11-CAMS"
    junk_only.mkdir(parents=True)
    for dark in later.dark_files:
        shutil.copy(dark, junk_only / dark.name.replace("2026-07-10", "2026-07-11"))
    (junk_only / "2026-07-11_20.00.00_SCIENCE.fits").write_text("not a FITS file\n" * 10)
    config = daemon_config(settle=1.0, extra="no_flat_wait_s = 8.0")  # after 2026-07-01 made its flat
    daemon = daemons(root, config.replace("no_flat_wait_s = 3600\n", ""), prefix=NO_DAC)
    daemon.wait_for(lambda: len(list(cal_dir(root, "2026-07-10").glob("*_CAL.fits"))) == 3, 300,
                    "the good night after the bad one")
    daemon.wait_for(lambda: any(e["event"] == "file_unreadable" and "2026-07-11" in e.get("path", "")
                                for e in daemon.events()), 60, "the junk-only night")
    time.sleep(8)  # several settle periods and idle ticks: nothing may be looked at again
    events = daemon.events()
    ready = Counter(e["night"] for e in events if e["event"] == "night_ready")
    assert ready and max(ready.values()) == 1, ready
    logged = Counter((e["event"], e.get("path")) for e in events if e["event"] in PROBLEM_EVENTS)
    assert logged and max(logged.values()) == 1, [k for k, n in logged.items() if n > 1]
    for bad, path in expected:
        if bad.event in PROBLEM_EVENTS and DATE in str(path):
            assert (bad.event, str(path)) in logged, bad.kind
    assert "Traceback" not in daemon.log_tail()
    daemon.stop()
    code, out, _ = _status(root)
    row = next(line for line in out.splitlines() if line.startswith("2026-07-11"))
    assert row.split()[1] == "0" and row.split()[-1] == "1" and "done" in row  # ends as such: 0 frames, 1 problem


def _status(root: Path) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "astep_cal", "status", str(root)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    return done.returncode, done.stdout, done.stderr
