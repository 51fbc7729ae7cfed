"""End to end against synthetic truth: the real command, real FITS files, real solve-field."""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits
from conftest import mtimes, no_solve_config, read_ledger, run_cli, small_spec, tree_digest
from structlog.testing import capture_logs

from astep_cal.devtools.evaluate import score_frame
from astep_cal.devtools.synthetic import make_night
from astep_cal.engine.frame_steps import solve_record
from astep_cal.engine.night_masters import build_masters
from astep_cal.engine.pipeline import NightRun
from astep_cal.engine.rules import (
    calibration_fingerprint,
    clear_failures,
    needs_calibration,
    needs_solve,
    night_has_work,
)
from astep_cal.formats.names import cal_dir, cal_name, masters_dir
from astep_cal.formats.products import cal_image_hdu, read_cal_header
from astep_cal.formats.raw_night import take_inventory
from astep_cal.science.masters import MaskBit
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import Settings
from astep_cal.support.logs import get_logger
from astep_cal.support.storage import fingerprint


def _scores(root, truth):
    return [score_frame(cal_dir(root, truth.spec.date) / cal_name(p.name), truth, p.name)
            for p in truth.science_files]


def test_command_succeeds(solved_night):
    _, _, _, completed = solved_night
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr


def test_every_frame_solved_with_accurate_wcs(solved_night):
    root, truth, _, _ = solved_night
    scores = _scores(root, truth)
    assert all(s.solved for s in scores)
    errors = [s.wcs_error_px for s in scores]
    print("WCS error px:", errors, "stars matched:", [(s.stars_matched, s.stars_in_field) for s in scores])
    assert np.median(errors) < 0.5
    assert all(s.stars_matched >= 0.8 * s.stars_in_field for s in scores)


def test_flat_field_residual_below_one_percent(solved_night):
    root, truth, _, _ = solved_night
    residuals = [s.flat_residual for s in _scores(root, truth)]
    print("flat residual:", residuals)
    assert max(residuals) < 0.01


def test_cosmic_rays_removed(solved_night):
    root, truth, _, _ = solved_night
    scores = _scores(root, truth)
    removed = sum(s.cosmic_removed * s.cosmic_pixels for s in scores) / sum(s.cosmic_pixels for s in scores)
    print("cosmic-ray pixels removed:", removed, "of", sum(s.cosmic_pixels for s in scores))
    assert removed >= 0.98


def test_hot_pixels_and_dead_column_masked(solved_night):
    root, truth, _, _ = solved_night
    for score in _scores(root, truth):
        assert score.hot_masked >= 0.99
        assert score.dead_column_masked == 1.0


def test_raw_files_untouched(solved_night):
    root, truth, raw_before, _ = solved_night
    assert tree_digest(root / truth.spec.date / f"{truth.spec.date}-CAMS") == raw_before


def test_cal_file_format_and_provenance(solved_night):
    root, truth, _, _ = solved_night
    path = cal_dir(root, truth.spec.date) / cal_name(truth.science_files[0].name)
    with fits.open(path, checksum=True) as hdul:
        image = hdul[cal_image_hdu(hdul)]
        header, data, mask = image.header, image.data, hdul["MASK"].data
        assert data.dtype.kind == "f" and data.dtype.itemsize == 4 and mask.dtype == np.uint8
        assert header["BUNIT"] == "electron" and header["ASTCWCS"] == "solved"
        assert header["ORIGFILE"] == truth.science_files[0].name  # raw header kept
        assert header["ASTCDSCL"] == 1.0 and header["ASTCFNIT"] == truth.spec.date
        assert header["NCOSMIC"] == int(np.count_nonzero(mask & MaskBit.COSMIC))
        assert "A_ORDER" in header or "CD1_1" in header
        assert hdul["MASK"].header["MASKB4"] == "COSMIC"
    masters = sorted(p.name for p in masters_dir(root, truth.spec.date).iterdir())
    assert masters == ["bad_pixel_mask.fits", "master_dark_5s.fits", "master_dark_60s.fits", "master_flat.fits"]


def test_ledger_records_every_stage(solved_night):
    root, truth, _, _ = solved_night
    ledger = read_ledger(root)
    night = ledger["nights"][truth.spec.date]
    assert night["masters"]["flat"]["night"] == truth.spec.date
    for raw in truth.science_files:
        frame = night["frames"][raw.name]
        assert frame["calibrate"]["status"] == "ok" and frame["astrometry"]["status"] == "solved"
        assert frame["raw"]["size"] == raw.stat().st_size
        assert frame["calibrate"]["duration_s"] > 0 and frame["astrometry"]["hinted"] is True


def test_rerun_does_nothing_and_force_redoes(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec())
    config = no_solve_config(tmp_path)
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0
    assert sum(e["event"] == "frame_calibrated" for e in events) == 3
    before = mtimes(tmp_path)
    code, out, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0 and out == ""
    assert not [e for e in events if e["event"] in ("frame_calibrated", "master_built")]
    assert mtimes(tmp_path) == before
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config, "--force", "--night", truth.spec.date)
    assert sum(e["event"] == "frame_calibrated" for e in events) == 3
    after = mtimes(tmp_path)
    for raw in truth.science_files:
        key = str((cal_dir(tmp_path, truth.spec.date) / cal_name(raw.name)).relative_to(tmp_path))
        assert after[key] != before[key]


def test_late_frame_processed_alone(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec())
    config = no_solve_config(tmp_path)
    late = truth.science_files[-1]
    parked = tmp_path / late.name
    shutil.move(late, parked)
    assert run_cli(capsys, "once", tmp_path, "--config", config)[0] == 0
    before = mtimes(tmp_path)
    shutil.move(parked, late)
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0
    assert [e["frame"] for e in events if e["event"] == "frame_calibrated"] == [late.name]
    assert not [e for e in events if e["event"] == "master_built"]
    after = mtimes(tmp_path)
    unchanged = [k for k in before if k.endswith("_CAL.fits") or "masters" in k]
    assert all(after[k] == before[k] for k in unchanged)


def test_mixed_dark_exptimes_all_used(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec(dark_exptimes=(30.0, 60.0, 90.0)))
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", no_solve_config(tmp_path))
    assert code == 0
    darks = sorted(e["exptime"] for e in events if e["event"] == "master_built" and e["kind"] == "dark")
    assert darks == [5.0, 30.0, 60.0, 90.0]
    header = read_cal_header(cal_dir(tmp_path, truth.spec.date) / cal_name(truth.science_files[0].name))
    assert header["ASTCDARK"] == "master_dark_60s.fits" and header["ASTCDSCL"] == 1.0


@pytest.mark.parametrize("n_bias, dark_exptimes, flat_exptime, origin", [
    (3, (30.0,), 5.0, "master_bias"),
    (0, (20.0, 30.0), 5.0, "two_darks"),
    (0, (30.0,), 30.0, "dark_median"),  # flats (and their darks) also 30 s: one dark exposure time only
])
def test_no_matching_dark_uses_nearest_scaled(tmp_path, capsys, n_bias, dark_exptimes, flat_exptime, origin):
    truth = make_night(tmp_path, small_spec(n_bias=n_bias, dark_exptimes=dark_exptimes, flat_exptime=flat_exptime))
    code, _, _ = run_cli(capsys, "once", tmp_path, "--config", no_solve_config(tmp_path))
    assert code == 0
    name = truth.science_files[0].name
    path = cal_dir(tmp_path, truth.spec.date) / cal_name(name)
    header = read_cal_header(path)
    assert header["ASTCDARK"] == "master_dark_30s.fits"
    assert header["ASTCDSCL"] == pytest.approx(2.0) and header["ASTCBORG"] == origin
    # A wrongly scaled dark leaves an offset of the sky: compare star-free sky with the truth.
    with fits.open(path) as hdul:
        data, mask = hdul[cal_image_hdu(hdul)].data, hdul["MASK"].data
    sky = truth.sky_e(name)
    blank = (mask == 0) & (sky < np.median(sky) + 1)
    offset = float(np.median(data[blank] - sky[blank]))
    print(origin, "sky offset (e-)", offset)
    if origin == "dark_median":
        # With no bias at all the median dark current cannot be told from the bias: the scaled dark
        # misses the median dark current of the extra 30 s (documented), and nothing more.
        missing = truth.spec.dark_e_per_s * (truth.spec.science_exptime - 30.0)
        assert abs(offset - missing) < 1.0
    else:
        assert abs(offset) < 1.0  # e-, on a sky of 1200 e-
    score = score_frame(path, truth, name)
    assert score.hot_masked >= 0.99 and score.dead_column_masked == 1.0


def test_night_without_flats_borrows_earlier_flat(tmp_path, capsys):
    make_night(tmp_path, small_spec(date="2026-07-01", start_time="2026-07-01T20:00:00"))
    late = make_night(tmp_path, small_spec(date="2026-07-03", start_time="2026-07-03T20:00:00", seed=5,
                                           n_flats=0, n_flat_darks=0))
    config = no_solve_config(tmp_path)
    code, out, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0
    assert [e["from_night"] for e in events if e["event"] == "flat_borrowed"] == ["2026-07-01"]
    path = cal_dir(tmp_path, "2026-07-03") / cal_name(late.science_files[0].name)
    assert read_cal_header(path)["ASTCFNIT"] == "2026-07-01"
    score = score_frame(path, late, late.science_files[0].name)
    assert score.flat_residual < 0.01
    code, out, _ = run_cli(capsys, "status", tmp_path, "--config", config)
    assert "from 2026-07-01" in out and code == 0


def test_no_flat_anywhere_blocks_frames_clearly(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec(n_flats=0, n_flat_darks=0))
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", no_solve_config(tmp_path))
    assert code == 1
    blocked = [e for e in events if e["event"] == "frame_blocked"]
    assert len(blocked) == truth.spec.n_science and "no master flat" in blocked[0]["error"]
    assert any(e["event"] == "flat_unavailable" for e in events)
    code, out, _ = run_cli(capsys, "status", tmp_path)
    assert code == 1 and "blocked" in out
    assert not list(cal_dir(tmp_path, truth.spec.date).glob("*_CAL.fits"))


def test_building_the_masters_leaves_the_inventory_as_taken(tmp_path):
    """The masters narrow the frames down on a copy: a dark of another size is left out of them and
    reported with them, while the night's inventory (what the ledger records) is unchanged."""
    truth = make_night(tmp_path, small_spec(n_science=1))
    odd = truth.dark_files[0].with_name(truth.dark_files[0].name.replace("_DARK", "_1_DARK"))
    with fits.open(truth.dark_files[0]) as hdul:
        fits.PrimaryHDU(np.ascontiguousarray(hdul[0].data[:100, :120]), hdul[0].header).writeto(odd)
    inventory = take_inventory(tmp_path, truth.spec.date)
    taken = copy.deepcopy(inventory)
    with capture_logs() as logged:
        masters = build_masters(tmp_path, inventory, Settings(), get_logger())
    assert inventory == taken
    assert [e["path"] for e in logged if e["event"] == "frame_shape_mismatch"] == [str(odd)]  # logged when found
    assert [p["event"] for p in masters.record["problems"]] == ["frame_shape_mismatch"]
    assert len(masters.record["darks"]["60"]["inputs"]) == len(truth.dark_files)


# --- the decision rules, fast (no solve-field, no calibration) -------------------------------------

def _rule_settings(**astrometry) -> Settings:
    settings = Settings()
    return replace(settings, astrometry=replace(settings.astrometry, **astrometry))


def test_needs_calibration_rule(tmp_path):
    truth = make_night(tmp_path, small_spec(n_science=1, n_darks=1, n_flats=0, n_flat_darks=0))
    frame = take_inventory(tmp_path, truth.spec.date).science[0]
    cal_path = tmp_path / "out_CAL.fits"
    settings = Settings()
    done = {"raw": fingerprint(frame.path), "calibrate": {"status": "ok", "config": calibration_fingerprint(settings)}}
    assert needs_calibration({}, frame, cal_path, settings)  # never done
    assert needs_calibration(done, frame, cal_path, settings)  # its CAL file is gone
    cal_path.write_bytes(b"")
    assert not needs_calibration(done, frame, cal_path, settings)
    other = replace(settings, calibration=replace(settings.calibration, combine_sigma=settings.calibration.combine_sigma + 1))
    assert needs_calibration(done, frame, cal_path, other)  # other calibration settings
    assert needs_calibration({**done, "raw": {"size": 1, "mtime_ns": 1}}, frame, cal_path, settings)  # a new file
    failed = {**done, "calibrate": {"status": "failed", "config": calibration_fingerprint(settings)}}
    assert not needs_calibration(failed, frame, cal_path, settings)  # the same bytes fail the same way
    assert needs_calibration({**failed, "raw": {"size": 1, "mtime_ns": 1}}, frame, cal_path, settings)
    assert needs_calibration({**done, "calibrate": {"status": "blocked"}}, frame, cal_path, settings)


def test_needs_solve_rule_backs_off_and_caps():
    settings = _rule_settings(max_tries=3)
    ok = {"calibrate": {"status": "ok"}}
    assert needs_solve(ok, settings)
    assert not needs_solve({"calibrate": {"status": "failed"}}, settings)
    assert not needs_solve({**ok, "astrometry": {"status": "solved"}}, settings)
    assert not needs_solve({**ok, "astrometry": {"status": "failed", "tries": 1, "retry_after": time.time() + 60}},
                           settings)
    assert needs_solve({**ok, "astrometry": {"status": "failed", "tries": 2, "retry_after": time.time() - 1}}, settings)
    assert not needs_solve({**ok, "astrometry": {"status": "failed", "tries": 3}}, settings)
    assert not needs_solve(ok, _rule_settings(enabled=False))
    record = solve_record("RuntimeError: boom", 1, settings)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"
    assert record["retry_after"] >= time.time() + 0.9 * settings.astrometry.retry_backoff_s
    later = solve_record("RuntimeError: boom", 2, settings)
    assert later["retry_after"] - record["retry_after"] >= 0.9 * settings.astrometry.retry_backoff_s  # doubled
    assert "retry_after" not in solve_record("RuntimeError: boom", 3, settings)  # the last try


def test_clear_failures_opens_only_nights_with_failures(tmp_path):
    ledger = Ledger.load(tmp_path / "ledger.json")
    ledger.frame("2026-07-01", "a.fits").update(calibrate={"status": "failed"})
    ledger.frame("2026-07-01", "b.fits").update(calibrate={"status": "ok"}, astrometry={"status": "failed", "tries": 3})
    ledger.frame("2026-07-02", "c.fits").update(calibrate={"status": "ok"}, astrometry={"status": "solved"})
    ledger.frame("2026-07-03", "d.fits").update(calibrate={"status": "failed"})
    ledger.save()
    for date in ledger.dates():
        ledger.release(date)
    assert clear_failures(ledger, ["2026-07-01", "2026-07-02"]) == 2
    assert set(ledger._open) == {"2026-07-01"}  # the other nights' files were not even read
    ledger.save()
    assert ledger.totals("2026-07-01")["cal_failed"] == 0 and ledger.totals("2026-07-03")["cal_failed"] == 1
    assert ledger.peek("2026-07-01")["frames"]["b.fits"] == {"calibrate": {"status": "ok"}}


def test_night_has_work_rule(tmp_path):
    """New, changed or removed raw files, a CAL file or the summary gone, blocked frames on a full
    rescan, other settings for ``once``: work. A finished night and its unusable files: none."""
    root = tmp_path / "data"
    truth = make_night(root, small_spec(n_science=2))
    (truth.night_dir / f"{truth.spec.date}-CAMS" / "2026-07-01_23.00.00_SCIENCE.fits").write_text("junk")
    settings = _rule_settings(enabled=False)
    date = truth.spec.date
    ledger = Ledger.load(root / ".astep-cal" / "ledger.json")
    assert night_has_work(root, date, ledger, settings, retry_blocked=False)  # never looked at
    with capture_logs():
        NightRun(root, date, settings, ledger, force=False).run()
    assert not night_has_work(root, date, ledger, settings, retry_blocked=True, new_settings_count=True)
    other = replace(settings, calibration=replace(settings.calibration, combine_sigma=settings.calibration.combine_sigma + 1))
    assert night_has_work(root, date, ledger, other, retry_blocked=False, new_settings_count=True)
    assert not night_has_work(root, date, ledger, other, retry_blocked=False)  # the daemon: no archive redo
    summary_file = cal_dir(root, date) / "summary.json"
    summary_file.rename(summary_file.with_suffix(".aside"))
    assert night_has_work(root, date, ledger, settings, retry_blocked=False)
    summary_file.with_suffix(".aside").rename(summary_file)
    cal = cal_dir(root, date) / cal_name(truth.science_files[0].name)
    cal.rename(cal.with_suffix(".aside"))
    assert night_has_work(root, date, ledger, settings, retry_blocked=False)
    cal.with_suffix(".aside").rename(cal)
    assert not night_has_work(root, date, ledger, settings, retry_blocked=False)
    raw = truth.science_files[1]
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 1))
    assert night_has_work(root, date, ledger, settings, retry_blocked=False)  # a new version of a raw file
    with capture_logs():
        NightRun(root, date, settings, ledger, force=False).run()
    entry = ledger.night(date)["frames"][truth.science_files[0].name]
    entry["calibrate"]["status"] = "blocked"
    ledger.release(date)
    assert night_has_work(root, date, ledger, settings, retry_blocked=True)
    assert not night_has_work(root, date, ledger, settings, retry_blocked=False)
