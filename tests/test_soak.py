"""The soak driver's own logic (the winter itself is ``make soak``, not a test)."""

import pytest

from astep_cal.devtools.soak_checks import FD_GROWTH, RSS_GROWTH_MB, SLOPE_MB_PER_NIGHT, Check, lifetime_trends, render
from astep_cal.devtools.soak_plan import MIN_NIGHTS, lender, plan_nights

FAULTS = {"junk_file", "sigkill", "truncated_file", "disk_full", "unmount", "blind_solve", "sighup"}


@pytest.mark.parametrize("n", [MIN_NIGHTS, 9, 15, 30, 60])
def test_every_fault_is_met_and_the_flatless_run_can_borrow(n):
    plans = plan_nights(n)
    assert [p.index for p in plans] == list(range(n))
    assert len({p.date for p in plans}) == n and plans[0].date == "2026-06-01"
    assert set().union(*(p.faults for p in plans)) == FAULTS
    for fault in FAULTS - {"sighup"}:
        assert sum(fault in p.faults for p in plans) == 1, fault
    # the storage faults and the kill on nights of their own: one outcome each to check
    for fault in ("sigkill", "disk_full", "unmount"):
        night = next(p for p in plans if fault in p.faults)
        assert not {"sigkill", "disk_full", "unmount"} & (set(night.faults) - {fault})
    flatless = [p.index for p in plans if not p.flats]
    assert len(flatless) >= 3 and flatless == list(range(flatless[0], flatless[-1] + 1))  # one run, consecutive
    assert plans[0].flats and plans[-1].flats
    assert all(lender(plans, p) == plans[flatless[0] - 1].date for p in plans if not p.flats)
    assert [p.pointing for p in plans].count(False) == 1 and "blind_solve" in plans[-1].faults


def test_too_short_a_winter_is_refused():
    with pytest.raises(ValueError, match="at least"):
        plan_nights(MIN_NIGHTS - 1)


def _sample(pid, night, rss, fds):
    return {"pid": pid, "night": night, "rss_mb": rss, "fds": fds}


def test_resources_are_compared_within_one_process_lifetime():
    samples = [_sample(10, "d1", 100.0, 12), _sample(10, "d2", 400.0, 30),  # killed: a restart resets them
               _sample(11, "d3", 150.0, 14), _sample(11, "d4", 170.0, 15), _sample(11, "d5", 150.0 + RSS_GROWTH_MB, 14 + FD_GROWTH)]
    trends = lifetime_trends(samples)
    assert [t["pid"] for t in trends] == [11, 10]  # the longest lifetime first
    assert trends[0] == {"pid": 11, "nights": 3, "first_night": "d3", "last_night": "d5", "rss_first_mb": 150.0,
                         "rss_last_mb": 150.0 + RSS_GROWTH_MB, "rss_max_mb": 180.0, "fds_first": 14,
                         "fds_last": 14 + FD_GROWTH, "warm_slope_mb_per_night": None, "rss_ok": True, "fds_ok": True,
                         "slope_ok": True, "ok": True}
    assert trends[1]["ok"] is False  # grew 300 MB within its own lifetime


@pytest.mark.parametrize("rss, fds, failing", [(150.0 + RSS_GROWTH_MB + 1, 14, "rss_ok"),
                                               (150.0, 14 + FD_GROWTH + 1, "fds_ok")])
def test_a_leak_fails(rss, fds, failing):
    trend = lifetime_trends([_sample(1, "d1", 150.0, 14), _sample(1, "d2", rss, fds)])[0]
    assert trend["ok"] is False and trend[failing] is False
    assert all(trend[k] for k in ("rss_ok", "fds_ok", "slope_ok") if k != failing)


def _lifetime(rss_per_night):
    return [_sample(1, f"d{i}", rss, 12) for i, rss in enumerate(rss_per_night)]


def test_a_warm_up_passes_but_a_steady_creep_after_it_fails():
    warm_up = [205.0, 215.0, 224.0]
    flat = lifetime_trends(_lifetime(warm_up + [224.0 + 0.1 * (i % 3) for i in range(20)]))[0]
    assert flat["ok"] and abs(flat["warm_slope_mb_per_night"]) < 0.05
    # a creep of 1.2 MB a night (the daemon before its two fixes, 512² frames): within first + 30 MB, yet a leak
    creep = lifetime_trends(_lifetime(warm_up + [224.0 + 1.2 * i for i in range(1, 6)]))[0]
    assert creep["rss_last_mb"] - creep["rss_first_mb"] <= RSS_GROWTH_MB
    assert creep["warm_slope_mb_per_night"] is None and creep["ok"]  # too few nights to measure a slope
    creep = lifetime_trends(_lifetime(warm_up + [224.0 + 1.2 * i for i in range(1, 9)]))[0]
    assert creep["warm_slope_mb_per_night"] > SLOPE_MB_PER_NIGHT and not creep["ok"]
    assert creep["rss_ok"] and creep["fds_ok"] and not creep["slope_ok"]


def test_the_table_marks_each_check():
    table = render([Check("frames lost", 0, 0, True), Check("valid frames solved", 89, 90, False)])
    lines = table.splitlines()
    assert lines[0].split() == ["check", "value", "expected"]
    assert lines[1].endswith("PASS") and lines[2].endswith("FAIL") and "89" in lines[2]
    assert lines[1].index("0") == lines[0].index("value")  # columns aligned
