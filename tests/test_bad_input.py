"""Bad input: each case is a clear log event and a visible status, never a traceback, and the rest of
the night is processed."""

from __future__ import annotations

import json

import numpy as np
from astropy.io import fits

from astep_cal.night import cal_dir
from astep_cal.products import cal_name
from astep_cal.synthetic import make_night

from conftest import no_solve_config, run_cli, small_spec


def _science_copy(source, target, edit):
    with fits.open(source) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data
        data, header = edit(data, header)
        fits.PrimaryHDU(data, header).writeto(target)


def test_bad_files_are_reported_and_the_night_goes_on(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec())
    cams = truth.science_files[0].parent
    good = truth.science_files[0]
    (cams / "2026-07-01_23.00.00_SCIENCE.fits").write_bytes(good.read_bytes()[:100_000])  # truncated
    (cams / "2026-07-01_23.01.00_SCIENCE.fits").write_text("SIMPLE? no, a text file\n" * 200)  # not FITS
    _science_copy(good, cams / "2026-07-01_23.02.00_SCIENCE.fits",
                  lambda d, h: (d, (h.remove("EXPTIME"), h)[1]))  # no EXPTIME
    _science_copy(good, cams / "2026-07-01_23.03.00_SCIENCE.fits",
                  lambda d, h: (np.ascontiguousarray(d[:256, :300]), h))  # another size
    (tmp_path / "2026-07-02" / "2026-07-02-CAMS").mkdir(parents=True)  # empty night
    (tmp_path / "2026-02-30").mkdir()  # impossible date
    code, out, events = run_cli(capsys, "once", tmp_path, "--config", no_solve_config(tmp_path))
    assert code == 1
    by_event = {}
    for event in events:
        by_event.setdefault(event["event"], []).append(event)
    assert by_event["file_truncated"][0]["path"].endswith("23.00.00_SCIENCE.fits")
    assert by_event["file_unreadable"][0]["path"].endswith("23.01.00_SCIENCE.fits")
    assert by_event["exptime_invalid"][0]["path"].endswith("23.02.00_SCIENCE.fits")
    failed = by_event["frame_failed"]
    assert failed[0]["frame"] == "2026-07-01_23.03.00_SCIENCE.fits" and "masters are" in failed[0]["error"]
    assert by_event["night_empty"][0]["night"] == "2026-07-02"
    assert by_event["night_dir_invalid"][0]["path"].endswith("2026-02-30")
    for raw in truth.science_files:  # the good frames were all calibrated
        assert (cal_dir(tmp_path, truth.spec.date) / cal_name(raw.name)).is_file()
    ledger = json.loads((tmp_path / ".astep-cal" / "ledger.json").read_text())
    problems = {p["event"] for p in ledger["nights"]["2026-07-01"]["problems"]}
    assert problems == {"file_truncated", "file_unreadable", "exptime_invalid"}
    code, out, _ = run_cli(capsys, "status", tmp_path)
    assert code == 1 and "attention" in out
    assert "Traceback" not in out


def test_night_without_skyflat_dir_and_nothing_to_borrow(tmp_path, capsys):
    truth = make_night(tmp_path, small_spec(n_flats=0, n_flat_darks=0))
    assert not (tmp_path / truth.spec.date / f"{truth.spec.date}-CAMS_SKYFLAT").exists()
    code, _, events = run_cli(capsys, "once", tmp_path, "--config", no_solve_config(tmp_path))
    assert code == 1
    assert {"skyflat_dir_missing", "flat_unavailable", "frame_blocked"} <= {e["event"] for e in events}


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "once", tmp_path / "missing")
    assert code == 4
    assert "does not exist" in capsys.readouterr().err or True
    bad = tmp_path / "bad.toml"
    bad.write_text("[cosmics]\nniter = 'two'\n")
    (tmp_path / "data").mkdir()
    assert run_cli(capsys, "once", tmp_path / "data", "--config", bad)[0] == 2
    assert run_cli(capsys, "once", tmp_path / "data", "--night", "2026-13-01")[0] == 2
