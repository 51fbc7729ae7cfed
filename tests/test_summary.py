"""The operator view: summary.json + summary.png per night, `astep-cal report`, `astep-cal status --json`.

Real nights processed by the real command; failures are real ones (a solve-field that is not there,
a night without flats, a summary path that cannot be written).
"""

from __future__ import annotations

import copy
import io
import json
import shutil

import pytest
from conftest import mtimes, read_ledger, run_cli, small_spec
from PIL import Image

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cal_dir
from astep_cal.formats.summary import FRAME_COLUMNS, METRICS, SCHEMA_VERSION, build_summary, frame_rows, render_png
from astep_cal.support.config import Settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SENDABLE_BYTES = 300 * 1024
NO_SOLVE_7_2 = "[astrometry]\nenabled = false\n[quality]\npixel_scale_arcsec = 7.2\n"


def cli_main(*args) -> int:
    from astep_cal.frontends import cli

    return cli.main([str(a) for a in args])


def _config(tmp_path, text: str = NO_SOLVE_7_2):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _summary_files(root, date):
    directory = cal_dir(root, date)
    return directory / "summary.json", directory / "summary.png"


def check_schema(document: dict) -> None:
    """Every key a reader of summary.json relies on, with its type."""
    assert document["schema"] == SCHEMA_VERSION
    assert {"night", "software", "generated", "state", "attention", "counts", "medians", "masters", "failures",
            "problems", "frames"} <= set(document)
    assert set(document["counts"]) == {"frames", "calibrated", "solved", "failed", "blocked", "retries_pending",
                                       "problems"}
    assert all(isinstance(v, int) for v in document["counts"].values())
    assert set(document["medians"]) == set(METRICS)
    masters = document["masters"]
    assert {"bias", "darks", "flat", "bad_pixels"} <= set(masters)
    assert masters["flat"]["origin"] in ("own", "borrowed", "none")
    for failure in document["failures"]:
        assert {"stage", "status", "error", "n_frames", "retries_pending", "frames"} <= set(failure)
        assert failure["n_frames"] == len(failure["frames"])
    assert document["frames"]["columns"] == list(FRAME_COLUMNS)
    assert all(len(row) == len(FRAME_COLUMNS) for row in document["frames"]["rows"])


def test_summary_written_updated_for_late_frames_and_not_rewritten(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec())
    date, config = truth.spec.date, _config(tmp_path)
    late = truth.science_files[-1]
    parked = tmp_path / late.name
    shutil.move(late, parked)
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0
    written = [e for e in events if e["event"] == "summary_written"]
    assert len(written) == 1 and written[0]["png_kb"] > 0
    json_path, png_path = _summary_files(tmp_path, date)
    document = json.loads(json_path.read_text())
    check_schema(document)
    assert document["counts"]["frames"] == 2 and document["counts"]["calibrated"] == 2
    assert document["state"] == "done" and document["attention"] is False
    assert document["masters"]["flat"] == {"origin": "own", "night": date, "n_inputs": truth.spec.n_flats,
                                           "file": f"{date}/{date}-CAMS_CAL/masters/master_flat.fits"}
    assert document["masters"]["darks"]["60"]["n_inputs"] == truth.spec.n_darks
    rows = frame_rows(document)
    assert [r["frame"] for r in rows] == [p.name for p in truth.science_files[:2]]
    for row in rows:
        assert row["fwhm_arcsec"] == pytest.approx(truth.spec.fwhm_arcsec, rel=0.10)
        assert row["n_stars"] > 50 and row["sky_noise_e"] > 0 and row["astrometry"] == "off"
        assert row["time"].startswith(date)
    assert document["medians"]["fwhm_arcsec"] == pytest.approx(truth.spec.fwhm_arcsec, rel=0.10)

    shutil.move(parked, late)  # the late frame arrives: the summary follows
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0 and [e["event"] for e in events].count("summary_written") == 1
    assert json.loads(json_path.read_text())["counts"]["frames"] == 3

    before = mtimes(tmp_path)  # nothing new: nothing rewritten
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 0 and not [e for e in events if e["event"] == "summary_written"]
    assert mtimes(tmp_path) == before


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A processed 512² night (no solve), shared by the read-only tests below."""
    from astep_cal.frontends import cli

    root = tmp_path_factory.mktemp("summary")
    truth = make_night(root, small_spec())
    config = _config(root)
    assert cli.main(["once", str(root), "--config", str(config)]) == 0
    return root, truth, config


def test_png_is_a_small_png_and_sendable_with_the_json(night):
    root, truth, _ = night
    json_path, png_path = _summary_files(root, truth.spec.date)
    payload = png_path.read_bytes()
    assert payload.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(payload)) as image:
        assert image.format == "PNG" and 500 <= image.width <= 1200 and 300 <= image.height <= 900
    total = len(payload) + json_path.stat().st_size
    print(f"summary.png {len(payload) / 1024:.1f} KB, summary.json {json_path.stat().st_size / 1024:.1f} KB")
    assert total < SENDABLE_BYTES


def test_a_long_night_stays_sendable(night):
    """1000 frames (the recorded frames of the test night, repeated over 12 hours): still < 300 KB."""
    root, truth, _ = night
    ledger = read_ledger(root)
    recorded = ledger["nights"][truth.spec.date]
    long_night = copy.deepcopy(recorded)
    entries = list(recorded["frames"].values())
    long_night["frames"] = {}
    for i in range(1000):
        entry = copy.deepcopy(entries[i % len(entries)])
        hour, minute, second = 20 + (i * 45) // 3600, (i * 45) // 60 % 60, (i * 45) % 60
        stamp = f"2026-07-0{1 + hour // 24}T{hour % 24:02d}:{minute:02d}:{second:02d}"
        entry["calibrate"]["date_obs"] = stamp
        if i % 97 == 0:
            entry["astrometry"] = {"status": "failed", "tries": 1, "error": "field not solved (scale 0.9-1.1 deg)"}
        long_night["frames"][f"{stamp.replace('T', '_').replace(':', '.')}_SCIENCE.fits"] = entry
    document = build_summary(truth.spec.date, long_night, Settings())
    check_schema(document)
    payload = json.dumps(document, separators=(",", ":")).encode()
    png = render_png(document, None)
    print(f"1000 frames: summary.json {len(payload) / 1024:.1f} KB, summary.png {len(png) / 1024:.1f} KB")
    assert len(document["failures"]) == 1 and document["failures"][0]["n_frames"] == 11
    assert png.startswith(PNG_SIGNATURE) and len(payload) + len(png) < SENDABLE_BYTES


def test_report_prints_the_night(night, capsys):
    root, truth, config = night
    code, out, _ = run_cli(capsys, "report", truth.spec.date, root, "--config", config)
    assert code == 0
    assert f"Night {truth.spec.date}: done" in out
    assert all(p.name in out for p in truth.science_files)
    assert "FWHM" in out and "flat own" in out
    code, out, _ = run_cli(capsys, "report", truth.spec.date, root, "--config", config, "--json")
    document = json.loads(out)
    check_schema(document)
    # the file sent north can be read the same way, without the data
    json_path, _ = _summary_files(root, truth.spec.date)
    code, from_file, _ = run_cli(capsys, "report", json_path)
    assert code == 0 and from_file.splitlines()[:4] == run_cli(capsys, "report", truth.spec.date, root,
                                                                  "--config", config)[1].splitlines()[:4]


def test_report_of_unknown_night_or_bad_date_is_a_usage_error(night, capsys, tmp_path):
    root, _, config = night
    code, out, _ = run_cli(capsys, "report", "2026-01-01", root, "--config", config)
    assert code == 2 and out == ""
    assert run_cli(capsys, "report", "yesterday", root)[0] == 2
    other = tmp_path / "other.json"
    other.write_text('{"schema": 1, "night": "2026-07-01"}')
    capsys.readouterr()
    assert cli_main("report", other) == 2
    assert "not an astep-cal summary" in capsys.readouterr().err


def test_status_json_for_monitoring(night, capsys):
    root, truth, config = night
    code, out, _ = run_cli(capsys, "status", root, "--config", config, "--json")
    status = json.loads(out)
    assert code == 0 and status["attention"] is False and status["daemon"] is None
    (row,) = status["nights"]
    assert row["night"] == truth.spec.date and row["state"] == "done"
    assert row["frames"] == row["calibrated"] == truth.spec.n_science
    assert row["retries_pending"] == 0
    assert row["fwhm_arcsec"] == pytest.approx(truth.spec.fwhm_arcsec, rel=0.10)
    code, out, _ = run_cli(capsys, "status", root, "--config", config)
    assert code == 0 and "retries" in out.splitlines()[0] and "fwhm" in out.splitlines()[0]
    # with the default settings the frames are not solved yet: that needs attention
    code, out, _ = run_cli(capsys, "status", root, "--json")
    assert code == 1 and json.loads(out)["nights"][0]["state"] == "incomplete"


def test_status_root_from_config(night, capsys, tmp_path):
    root, truth, _ = night
    config = _config(tmp_path, f'data_root = "{root}"\n' + NO_SOLVE_7_2)
    code, out, _ = run_cli(capsys, "status", "--config", config)
    assert code == 0 and truth.spec.date in out
    assert run_cli(capsys, "status")[0] == 2  # neither ROOT nor data_root


def test_failed_solves_are_reported_with_retries_pending(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec())
    config = _config(tmp_path, '[astrometry]\nsolve_field = "/nonexistent/solve-field"\n'
                               '[quality]\npixel_scale_arcsec = 7.2\n')
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", config)
    assert code == 1 and any(e["event"] == "summary_written" for e in events)
    json_path, png_path = _summary_files(tmp_path, truth.spec.date)
    document = json.loads(json_path.read_text())
    check_schema(document)
    assert document["state"] == "attention" and document["counts"]["retries_pending"] == truth.spec.n_science
    (failure,) = document["failures"]
    assert failure["stage"] == "astrometry" and "solve-field not found" in failure["error"]
    assert failure["n_frames"] == failure["retries_pending"] == truth.spec.n_science
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)
    code, out, _ = run_cli(capsys, "status", tmp_path, "--config", config, "--json")
    assert code == 1 and json.loads(out)["nights"][0]["retries_pending"] == truth.spec.n_science
    code, out, _ = run_cli(capsys, "report", truth.spec.date, tmp_path, "--config", config)
    assert code == 1 and "solve-field not found" in out and "to be retried" in out


def test_blocked_night_summarised(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec(n_flats=0, n_flat_darks=0))
    code, _, _ = run_cli(capsys, "once", tmp_path, "--config", _config(tmp_path))
    assert code == 1
    document = json.loads(_summary_files(tmp_path, truth.spec.date)[0].read_text())
    assert document["state"] == "blocked" and document["masters"]["flat"]["origin"] == "none"
    (failure,) = document["failures"]
    assert failure["status"] == "blocked" and failure["n_frames"] == truth.spec.n_science
    assert "no master flat" in failure["error"]


def test_summary_failure_never_breaks_the_night(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec())
    json_path, _ = _summary_files(tmp_path, truth.spec.date)
    json_path.mkdir(parents=True)  # a directory where summary.json should go: the write must fail
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", _config(tmp_path))
    assert code == 0
    failed = [e for e in events if e["event"] == "summary_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error"
    assert sum(e["event"] == "frame_calibrated" for e in events) == truth.spec.n_science


def test_solved_night_summary_has_wcs_residuals_and_true_fwhm(solved_night):
    """The session's 1024² night, solved by the real solve-field with the default configuration."""
    root, truth, _, completed = solved_night
    assert completed.returncode == 0, completed.stderr[-2000:]
    json_path, png_path = _summary_files(root, truth.spec.date)
    document = json.loads(json_path.read_text())
    check_schema(document)
    assert document["state"] == "done" and document["counts"]["solved"] == truth.spec.n_science
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)
    for row in frame_rows(document):
        assert row["astrometry"] == "solved" and row["wcs_matched"] > 10
        assert 0 < row["wcs_residual_arcsec"] < 0.5 * truth.spec.pixel_scale_arcsec
        assert row["fwhm_arcsec"] == pytest.approx(truth.spec.fwhm_arcsec, rel=0.10)  # solved scale
    assert '"summary_written"' in completed.stderr
