"""The stage runner: one failure convention for every step (fast: no pixels, no solve-field)."""

import errno

import pytest
from structlog.testing import capture_logs

from astep_cal.engine.stages import (
    CALIBRATE_STEP,
    FRAME_STEP,
    MASTER_STEP,
    MASTERS_STEP,
    QUALITY_STEP,
    SUMMARY_STEP,
    FrameBlocked,
    StageFailed,
    StepSkipped,
    run_stage,
    stage,
)
from astep_cal.support.logs import get_logger
from astep_cal.support.storage import StorageUnavailable


def test_a_step_that_works_logs_its_event_with_its_fields_and_duration():
    with capture_logs() as logged:
        with run_stage("dark", get_logger(), MASTER_STEP, fields={"kind": "dark", "exptime": 60.0}) as step:
            step["n_inputs"] = 5
    assert step["status"] == "ok" and step["duration_s"] >= 0
    [event] = logged
    assert event["event"] == "master_built"
    assert (event["kind"], event["exptime"], event["n_inputs"]) == ("dark", 60.0, 5)
    assert "status" not in event and event["duration_s"] == step["duration_s"]


def test_an_isolated_failure_is_recorded_and_logged_once_and_the_caller_goes_on():
    with capture_logs() as logged:
        with run_stage("summary", get_logger(), SUMMARY_STEP) as step:
            raise ValueError("no such column")
    assert step["status"] == "failed" and step["error"] == "ValueError: no such column"
    assert [(e["event"], e["log_level"]) for e in logged] == [("summary_failed", "error")]


def test_a_quality_failure_is_a_warning():
    with capture_logs() as logged:
        with run_stage("quality", get_logger(), QUALITY_STEP) as step:
            raise RuntimeError("no sky")
    assert step["status"] == "failed"
    assert [(e["event"], e["log_level"]) for e in logged] == [("quality_failed", "warning")]


def test_a_master_failure_is_logged_once_and_raised_to_the_frames_with_the_original_error():
    """A master step fails inside the night's masters step: ``masters_failed`` once, not twice; the
    frame that needed the masters records the original error as its own (``frame_failed``)."""
    log = get_logger()
    with capture_logs() as logged:
        with pytest.raises(StageFailed) as raised:
            with run_stage("masters", log, MASTERS_STEP):
                with run_stage("flat", log, MASTER_STEP, fields={"kind": "flat"}):
                    raise OSError("bad sector")
        entry: dict = {}
        with stage(entry, "calibrate", log):
            raise raised.value
    assert [e["event"] for e in logged] == ["masters_failed", "frame_failed"]
    assert logged[0]["kind"] == "flat" and logged[0]["error"] == "OSError: bad sector"
    assert entry["calibrate"]["status"] == "failed" and entry["calibrate"]["error"] == "OSError: bad sector"


def test_storage_trouble_goes_up_with_nothing_logged_or_recorded(tmp_path):
    entry = {"calibrate": {"status": "ok", "duration_s": 1.0}}
    with capture_logs() as logged:
        with pytest.raises(StorageUnavailable):
            with stage(entry, "calibrate", get_logger(), tmp_path):
                raise StorageUnavailable("disk full")
        with pytest.raises(StorageUnavailable):  # an OSError while the data root is gone is storage trouble
            with run_stage("mask", get_logger(), MASTER_STEP, root=tmp_path / "unmounted"):
                raise OSError(errno.EIO, "I/O error")
    assert logged == []
    assert entry == {"calibrate": {"status": "ok", "duration_s": 1.0}}  # the previous record, untouched


def test_a_blocked_frame_has_no_duration_and_a_skipped_step_logs_nothing():
    entry: dict = {}
    with capture_logs() as logged:
        with stage(entry, "calibrate", get_logger()):
            raise FrameBlocked("no master dark")
        with run_stage("flat", get_logger(), MASTER_STEP, fields={"kind": "flat"}) as skipped:
            raise StepSkipped("every sky flat saturated")
    assert entry["calibrate"] == {"status": "blocked", "error": "no master dark"}
    assert skipped == {"status": "skipped", "reason": "every sky flat saturated"}
    assert [e["event"] for e in logged] == ["frame_blocked"]


def test_blocked_inside_a_step_that_is_not_isolated_goes_up():
    with pytest.raises(FrameBlocked):
        with run_stage("masters", get_logger(), MASTERS_STEP):
            raise FrameBlocked("no frames in the night")


def test_frame_step_events():
    assert (FRAME_STEP.done, FRAME_STEP.failed, FRAME_STEP.isolate) == (None, "frame_failed", True)


def test_a_calibrated_frame_logs_only_the_fields_of_its_event():
    entry: dict = {}
    with capture_logs() as logged:
        with stage(entry, "calibrate", get_logger(), events=CALIBRATE_STEP) as record:
            record.update(output="a_CAL.fits", n_cosmic=12, quality={"n_stars": 40})
    [event] = logged
    assert event["event"] == "frame_calibrated" and event["n_cosmic"] == 12 and "quality" not in event
    assert entry["calibrate"]["quality"] == {"n_stars": 40} and entry["calibrate"]["status"] == "ok"
