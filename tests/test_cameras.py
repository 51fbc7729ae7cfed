"""Issue 23, camera channels: an ASTEP+ night (``DATE-CAMB`` and ``DATE-CAMR``, each with its sky flats) is
two units of work — each camera's masters, frames, outputs, ledger record, status row and summary — through
the real ``once`` (with real solve-field: each colour's light curve of the frames' target, and the blue/red
transit depth ratio) and the real daemon (each camera waits for its own sets). The old code found no
``-CAMS`` directory: the night ended ``science_dir_missing``, 0 frames."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest
from conftest import daemon_config, parse_events, read_ledger, run_cli_subprocess

from astep_cal.devtools.depth_ratio_check import CONFIG, DATE, SPEC, make_astep_plus
from astep_cal.formats import names
from astep_cal.formats.cameras import discover_units, night_units, output_units
from astep_cal.state.ledger_schema import is_night_key

DEPTHS = {"CAMB": 0.015, "CAMR": 0.010}  # a chromatic eclipse (a blended binary): blue/red = 1.5
# The check's night (devtools/depth_ratio_check.py): 2 x 14 frames 512², ASTEP's header keywords (the target
# from SCINAME + SCIDCRD, no configuration), each camera its own noise and its own sensor.
ASTEP_PLUS = CONFIG


@pytest.fixture(scope="module")
def once_night(tmp_path_factory):
    root = tmp_path_factory.mktemp("astep_plus")
    truths = make_astep_plus(root, DEPTHS)
    config = root / "astep_plus.toml"
    config.write_text(ASTEP_PLUS)
    started = time.monotonic()
    completed = run_cli_subprocess("once", root, "--config", config)
    print(f"once on the ASTEP+ night: {time.monotonic() - started:.1f} s")
    return root, truths, config, completed


def test_both_cameras_are_processed_each_with_its_masters_and_outputs(once_night):
    root, truths, _, completed = once_night
    assert completed.returncode == 0, completed.stderr[-2000:]
    events = parse_events(completed.stderr)
    assert not [e for e in events if e["event"] in ("science_dir_missing", "frame_failed", "photometry_failed")]
    ledger = read_ledger(root)
    assert sorted(ledger["nights"]) == [f"{DATE}-CAMB", f"{DATE}-CAMR"]  # no plain-date (CAMS) night
    for camera, truth in truths.items():
        unit = names.night_unit(DATE, camera)
        night = ledger["nights"][unit]
        assert set(night["frames"]) == {p.name for p in truth.science_files}
        assert all(e["calibrate"]["status"] == "ok" and e["astrometry"]["status"] == "solved"
                   for e in night["frames"].values())
        masters = names.masters_dir(root, unit)
        assert night["masters"]["flat"]["night"] == unit and not night["masters"]["flat"].get("borrowed")
        assert (masters / names.MASTER_FLAT).is_file() and (masters / names.dark_file_name(60.0)).is_file()
        cal = names.cal_dir(root, unit)
        assert cal == root / DATE / f"{DATE}-{camera}_CAL"
        assert all((cal / names.cal_name(p.name)).is_file() for p in truth.science_files)
        assert (cal / "summary.json").is_file() and (cal / "lightcurve_SYN-1.csv").is_file()
    assert not (root / DATE / f"{DATE}-CAMS_CAL").exists()
    # each camera calibrated with its own masters: the flats differ (two sensors)
    blue, red = (read_ledger(root)["nights"][names.night_unit(DATE, c)]["masters"]["flat"]["file"] for c in DEPTHS)
    assert blue != red and "CAMB_CAL" in blue and "CAMR_CAL" in red


def test_the_depth_ratio_is_written_beside_both_light_curves(once_night):
    root, _, _, completed = once_night
    written = [e for e in parse_events(completed.stderr) if e["event"] == "depth_ratio_written"]
    assert len(written) == 1 and written[0]["night"] == f"{DATE}-CAMR"  # the camera closed last has both
    products = [json.loads((names.cal_dir(root, names.night_unit(DATE, c)) / "depth_ratio_SYN-1.json").read_text())
                for c in DEPTHS]
    assert products[0] == products[1]
    ratio = products[0]
    truth = DEPTHS["CAMB"] / DEPTHS["CAMR"]
    print(f"depth ratio blue/red {ratio['ratio']:.3f} +- {ratio['error']:.3f} (truth {truth}); blue "
          f"{ratio['blue']['depth'] * 100:.3f} +- {ratio['blue']['error'] * 100:.3f} %, red "
          f"{ratio['red']['depth'] * 100:.3f} +- {ratio['red']['error'] * 100:.3f} %")
    assert ratio["status"] == "ok" and ratio["method"] == "fit" and ratio["format"] == "astep-cal depth ratio 1"
    assert abs(ratio["ratio"] - truth) < 3 * ratio["error"] and ratio["error"] < 0.2
    assert (ratio["ratio"] - 1) > 3 * ratio["error"]  # chromatic: not a planet, told on site
    for colour, camera in (("blue", "CAMB"), ("red", "CAMR")):
        assert ratio[colour]["light_curve"] == f"{DATE}-{camera}_CAL/lightcurve_SYN-1.csv"
        assert ratio[colour]["depth"] == pytest.approx(DEPTHS[camera], abs=3 * ratio[colour]["error"])
    summary = json.loads((names.cal_dir(root, f"{DATE}-CAMR") / "summary.json").read_text())
    assert summary["depth_ratios"]["SYN-1"]["ratio"] == ratio["ratio"]


def test_status_and_report_show_both_cameras(once_night):
    root, _, config, _ = once_night
    status = run_cli_subprocess("status", root, "--config", config)
    rows = [line.split()[0] for line in status.stdout.splitlines()[1:] if line.strip()]
    assert rows == [f"{DATE}-CAMB", f"{DATE}-CAMR"], status.stdout
    assert all("done" in line for line in status.stdout.splitlines()[1:3])
    report = run_cli_subprocess("report", DATE, root, "--config", config)
    assert report.returncode == 0, report.stderr
    assert f"Night {DATE}-CAMB: done" in report.stdout and f"Night {DATE}-CAMR: done" in report.stdout
    assert "depth ratio blue/red" in report.stdout and "depth_ratio_SYN-1.json" in report.stdout
    one = run_cli_subprocess("report", f"{DATE}-CAMB", root, "--config", config, "--json")
    assert json.loads(one.stdout)["night"] == f"{DATE}-CAMB"


def test_the_daemon_processes_each_camera_when_its_own_sets_are_there(tmp_path, daemons):
    """The red camera's sky flats arrive late: the blue camera is processed meanwhile, the red one waits
    for its flats (no_flat_wait_s), then is processed with its own."""
    root = tmp_path / "root"
    small = dataclasses.replace(SPEC, shape=(256, 256), pixel_scale_arcsec=14.4, n_science=2, transit=None)
    make_astep_plus(root, DEPTHS, small)
    red_flats = root / DATE / f"{DATE}-CAMR_SKYFLAT"
    held = tmp_path / "held"
    red_flats.rename(held)
    daemon = daemons(root, ASTEP_PLUS.replace('[logging]', daemon_config(settle=1.0).split('[logging]')[0]
                                              + '[logging]'))
    daemon.wait_message("READY=1", timeout=60)
    done = lambda unit: any(e["event"] == "night_done" and e.get("night") == unit for e in daemon.events())  # noqa: E731
    daemon.wait_for(lambda: done(f"{DATE}-CAMB"), 120, "the blue camera processed")
    time.sleep(3)  # settled long ago: the red camera waits for its sky flats, not for the settling
    assert not done(f"{DATE}-CAMR")
    held.rename(red_flats)
    daemon.wait_for(lambda: done(f"{DATE}-CAMR"), 120, "the red camera processed")
    daemon.stop()
    ledger = read_ledger(root)
    assert sorted(ledger["nights"]) == [f"{DATE}-CAMB", f"{DATE}-CAMR"]
    for unit in ledger["nights"]:
        night = ledger["nights"][unit]
        assert len(night["frames"]) == 2 and night["masters"]["flat"]["night"] == unit
        assert (names.cal_dir(root, unit) / "summary.json").is_file()
    assert not any(e["event"] == "science_dir_missing" for e in daemon.events())
    # the ledger lost: rebuilt from both cameras' CAL files and masters, nothing redone
    shutil.rmtree(root / ".astep-cal")
    config = tmp_path / "once.toml"
    config.write_text(ASTEP_PLUS + '[astrometry]\nenabled = false\n')
    completed = run_cli_subprocess("once", root, "--config", config)
    events = [e["event"] for e in parse_events(completed.stderr)]
    assert completed.returncode == 0 and "ledger_rebuilt" in events and "frame_calibrated" not in events
    assert read_ledger(root)["nights"].keys() == ledger["nights"].keys()


def test_night_keys_and_discovery(tmp_path):
    assert is_night_key(f"{DATE}-CAMR") and is_night_key(DATE)
    for bad in (f"{DATE}-CAMS", f"{DATE}-camr", f"{DATE}-../../x", f"{DATE}-CAM/R", "2026-02-30-CAMB", f"{DATE}-"):
        assert not is_night_key(bad), bad
    for sub in ("CAMB", "CAMB_SKYFLAT", "CAMR", "CAMR_CAL", "CAMX_SKYFLAT"):
        (tmp_path / DATE / f"{DATE}-{sub}").mkdir(parents=True)
    (tmp_path / "2026-07-02" / "2026-07-02-CAMS").mkdir(parents=True)
    assert night_units(tmp_path, DATE, ("CAMB", "CAMR")) == [f"{DATE}-CAMB", f"{DATE}-CAMR"]
    assert night_units(tmp_path, DATE, ("auto",)) == [f"{DATE}-CAMB", f"{DATE}-CAMR"]  # CAMX: sky flats only
    assert night_units(tmp_path, DATE, ("CAMS",)) == [DATE]  # reported science_dir_missing, as before
    assert night_units(tmp_path, "2026-07-02", ("CAMB", "CAMR")) == ["2026-07-02-CAMB"]  # missing, reported
    assert discover_units(tmp_path, ("auto",))[0] == [f"{DATE}-CAMB", f"{DATE}-CAMR", "2026-07-02"]
    assert output_units(tmp_path, DATE) == [f"{DATE}-CAMR"]
