"""The benchmark's own arithmetic (the 4096² runs themselves are ``make bench``, not tests)."""

import json

import pytest

from astep_cal.devtools.bench import astep_cadence, projection_h


def test_cadence_and_masters_come_from_the_json_log(tmp_path):
    log = tmp_path / "astep-cal.log"
    lines = [
        {"event": "master_built", "kind": "dark", "duration_s": 12.0, "timestamp": "2026-07-01T20:00:00Z"},
        {"event": "master_built", "kind": "mask", "duration_s": 0.25, "timestamp": "2026-07-01T20:00:30Z"},
        {"event": "frame_calibrated", "timestamp": "2026-07-01T20:01:00.000000Z"},
        {"event": "frame_calibrated", "timestamp": "2026-07-01T20:01:08.500000Z"},
        {"event": "frame_calibrated", "timestamp": "2026-07-01T20:01:17.000000Z"},
        {"event": "frame_calibrated", "timestamp": "2026-07-01T20:01:30.000000Z"},
    ]
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot a log line\n")
    cadence = astep_cadence(log)
    assert cadence == {"masters_s": 12.25, "mask_s": 0.25, "steady_frame_s": pytest.approx(8.5)}


def test_projection_is_the_fixed_part_plus_the_frames_at_the_cadence():
    # 5 frames in 100 s at 8 s each: 60 s once per night, then 1000 frames of 8 s
    assert projection_h(100.0, 8.0, 5, 1000) == pytest.approx((60 + 8000) / 3600)


def test_state_bench_on_a_tiny_archive(tmp_path):
    """make bench-state's pieces at a tiny size: a finished archive that ``once`` leaves untouched,
    frame recording, and the target checks."""
    from astep_cal.devtools import bench_state

    dates = bench_state.night_dates(3)
    root, state = tmp_path / "root", tmp_path / "state"
    bench_state.build_root(root, dates, 20)
    state.mkdir()
    bench_state.build_ledger(state, dates, 20, root=root)
    seconds, changed = bench_state.time_once_idle(root, state)
    assert changed == 0 and seconds < 60
    recorded = bench_state.time_recording(state, 20)
    assert 0 < recorded["record_median_ms"] <= recorded["record_max_ms"]
    results = {"archives": {"3": {"record_end_of_night_median_ms": 5.0, "status_s": 3.0, "daemon_state_rss_mb": 1.0}},
               "once_idle": {"nights": 3, "seconds": seconds, "files_changed": changed}}
    assert list(bench_state.check_targets(results).values()) == [True, False, True, True]
