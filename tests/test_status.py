"""Status rows: the state of a night from its totals, whatever the ledger holds (fast, no files)."""

from dataclasses import replace

import pytest

from astep_cal.frontends.status import night_row, night_row_of
from astep_cal.support.config import Settings


def _night(*frames, science=None, problems=0):
    night = {"frames": {f"f{i}.fits": entry for i, entry in enumerate(frames)},
             "problems": [{"path": "x", "event": "file_empty", "reason": ""}] * problems, "masters": {}}
    if science is not None:
        night["inventory"] = {"science": science}
    return night


OK = {"calibrate": {"status": "ok"}}
SOLVED = {"calibrate": {"status": "ok"}, "astrometry": {"status": "solved", "tries": 1}}
SOLVE_FAILED_1 = {"calibrate": {"status": "ok"}, "astrometry": {"status": "failed", "tries": 1, "retry_after": 1.0}}
SOLVE_FAILED_3 = {"calibrate": {"status": "ok"}, "astrometry": {"status": "failed", "tries": 3}}
BLOCKED = {"calibrate": {"status": "blocked"}}
CAL_FAILED = {"calibrate": {"status": "failed"}}


@pytest.mark.parametrize("frames, science, state", [
    ((SOLVED, SOLVED), None, "done"),
    ((SOLVED, OK), None, "incomplete"),  # a solve still to come
    ((SOLVED,), 2, "incomplete"),  # a science frame not calibrated yet
    ((SOLVED, SOLVE_FAILED_1), None, "attention"),
    ((SOLVED, CAL_FAILED), None, "attention"),
    ((SOLVED, BLOCKED, CAL_FAILED), None, "blocked"),  # blocked wins: a calibration is missing
    ((), 0, "done"),  # a night whose only science file was unusable: nothing to do
])
def test_state_of_a_night(frames, science, state):
    assert night_row_of("2026-07-01", _night(*frames, science=science), Settings())["state"] == state


def test_without_astrometry_calibrated_is_done():
    settings = Settings()
    settings = replace(settings, astrometry=replace(settings.astrometry, enabled=False))
    assert night_row_of("2026-07-01", _night(OK, OK), settings)["state"] == "done"
    assert night_row_of("2026-07-01", _night(OK, OK), Settings())["state"] == "incomplete"


def test_retries_count_only_solves_with_tries_left_and_problems_need_attention():
    row = night_row_of("2026-07-01", _night(SOLVE_FAILED_1, SOLVE_FAILED_3, SOLVED, problems=2), Settings())
    assert (row["failed"], row["retries_pending"], row["problems"], row["attention"]) == (2, 1, 2, True)
    clean = night_row_of("2026-07-01", _night(SOLVED), Settings())
    assert clean["attention"] is False and clean["flat"] == "none" and clean["darks"] == "none"


def test_row_from_index_totals_equals_row_from_the_night():
    from astep_cal.state.ledger import night_totals

    night = _night(SOLVED, SOLVE_FAILED_1, BLOCKED, problems=1)
    night["masters"] = {"darks": {"60": {}, "5": {}}, "flat": {"night": "2026-06-30", "borrowed": True}}
    row = night_row("2026-07-01", night_totals(night), Settings())
    assert row == night_row_of("2026-07-01", night, Settings())
    assert (row["darks"], row["flat"]) == ("5s,60s", "from 2026-06-30")
