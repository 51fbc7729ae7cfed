"""The benchmark's own arithmetic (the 4096² runs themselves are ``make bench``, not tests)."""

import json

import pytest
from conftest import run_cli_subprocess

from astep_cal.devtools.bench import astep_cadence, print_table, projection_h, summarise


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
    trends = run_cli_subprocess("trends", root, "--json", "--ledger", state / "ledger.json")
    assert [r["night"] for r in json.loads(trends.stdout)["nights"]] == dates  # every night has health figures
    results = {"archives": {"3": {"record_end_of_night_median_ms": 5.0, "status_s": 3.0, "trends_s": 0.5,
                                  "trends_json_s": 2.5, "daemon_state_rss_mb": 1.0}},
               "once_idle": {"nights": 3, "seconds": seconds, "files_changed": changed}}
    assert list(bench_state.check_targets(results).values()) == [True, False, False, True, True]


def test_health_bench_ratios():
    from astep_cal.devtools.bench_health import ratios

    result = {"frame_work_s": 10.0, "zero_point_s": 0.09, "zero_points": 5, "night_wall_s": 100.0,
              "pieces": {"prometheus_frame_s": 0.01, "night_health_s": 1.0, "history_500_s": 0.001, "alerts_s": 0.002,
                         "trend_s": 0.0, "prometheus_night_s": 0.007}}
    found = ratios(result)["ratios_pct"]
    assert found["health_per_frame"] == 1.0 and found["trends_alerts_this_night"] == 0.01
    assert found["all_health_this_night"] == 1.5 and found["all_health_1000_frame_night"] == 1.01


def _round(steady_s: float, cosmic_cpu_s: float, without_photometry_s: float = 3.6, radec_max: float = 0.15) -> dict:
    frames = {"stage_read_cpu_s": 0.1, "stage_cosmic_rays_cpu_s": cosmic_cpu_s, "cpu_per_frame_s": 3.0,
              "cosmic_step_cpu_s": cosmic_cpu_s, "bare_astroscrappy_cpu_s": 10.0, "bare_astroscrappy_wall_s": 6.0,
              "cosmic_over_bare_cpu": cosmic_cpu_s / 10.0, "removed_ours": 0.999, "removed_bare": 0.77,
              "hit_pixels": 40000, "core_false_ours": 0, "core_false_bare": 26, "solve_wall_s": 0.2,
              "solved_from_list": 5, "blind_solved": True, "blind_solve_wall_s": 0.1, "screened_differs_px": 0,
              "n_frames": 5}
    return {"baseline": {"wall_s": 400.0, "peak_rss_mb": 5000.0, "master_darks_s": 100.0, "master_flat_s": 40.0,
                         "ccdmask_s": 100.0, "calibrate_per_frame_s": 21.0, "solve_per_frame_s": 9.0},
            "floor": {"wall_s": 7.0, "peak_rss_mb": 800.0, "astroscrappy_s": 5.0},
            "astep_cal": {"wall_s": 45.0, "peak_rss_mb": 1200.0, "calibrate_per_frame_s": 3.0, "solve_per_frame_s": 0.3,
                          "solved": 5, "masters_s": 30.0, "mask_s": 0.2, "steady_frame_s": steady_s,
                          "wcs_error_px": 0.002, "catalogue_per_frame_s": 0.09, "lightcurve_per_frame_s": 0.01,
                          "cat_bright_stars": 900, "cat_offset_median_px": 0.01, "cat_offset_p95_px": 0.03,
                          "cat_offset_max_px": 0.06, "cat_radec_median_arcsec": 0.02, "cat_radec_p95_arcsec": 0.05,
                          "cat_radec_max_arcsec": radec_max},
            "no_photometry": {"wall_s": 44.0, "peak_rss_mb": 1200.0, "steady_frame_s": without_photometry_s},
            "frames": frames, "late": _late()}


def _late() -> dict:
    """bench_late's flat record of one round (the default compressed output beside plain)."""
    figures = {"compressed": (2.5, 3.0, 2.4, 0.8, 0.05e9), "plain": (2.4, 3.1, 2.5, 3.9, 0.15e9)}
    late = {}
    for form, (cadence, wall, work, per_raw, cal_bytes) in figures.items():
        late.update({f"{form}_steady_frame_s": cadence, f"{form}_late_wall_s": wall, f"{form}_late_cpu_s": wall,
                     f"{form}_late_frame_work_s": work, f"{form}_late_wall_over_work": wall / work,
                     f"{form}_written_per_raw_byte": per_raw, f"{form}_cal_bytes_per_frame": cal_bytes,
                     f"{form}_daemon_late_wall_s": 2.6, f"{form}_daemon_late_frame_work_s": work,
                     f"{form}_daemon_late_wall_over_work": 2.6 / work})
    late["cadence_compressed_over_plain"] = 2.5 / 2.4
    return late


def test_issue_targets_are_checked_on_the_medians_and_printed(capsys):
    """make bench's verdicts: the issue-15 targets and issue 14's cadence bound, MET or MISSED."""
    summary = summarise([_round(3.5, 1.8), _round(4.5, 3.5), _round(3.9, 1.9)], 5, 2.0)
    targets = summary["targets"]
    assert summary["medians"]["astep_cal"]["steady_frame_s"] == 3.9
    assert targets["issue 15: steady cadence <= 4.0 s"] and targets["issue 15: cosmic-ray step <= 30 % of bare astroscrappy's CPU"]
    assert targets["issue 14: steady cadence <= 1.1 x 8.23 s"] and targets["issue 15: end to end >= 8x the baseline"]
    slow = summarise([_round(9.5, 3.5)], 5, 2.0)["targets"]
    assert not slow["issue 14: steady cadence <= 1.1 x 8.23 s"] and not slow["issue 15: steady cadence <= 4.0 s"]
    assert not slow["issue 15: cosmic-ray step <= 30 % of bare astroscrappy's CPU"]
    assert targets["issue 16: steady cadence grows <= 15 % with the catalogue"]  # 3.9 against 3.6
    assert targets["issue 16: RA/Dec within 0.2\" of the Tycho-2 place (every one)"]
    grown = summarise([_round(3.9, 1.8, without_photometry_s=3.3, radec_max=0.25)], 5, 2.0)["targets"]
    assert not grown["issue 16: steady cadence grows <= 15 % with the catalogue"]  # 3.9 against 3.3: +18 %
    assert not grown["issue 16: RA/Dec within 0.2\" of the Tycho-2 place (every one)"]
    print_table(summary)
    out = capsys.readouterr().out
    assert "cosmic_rays 1.90" in out and "MET     issue 14" in out and "900 bright isolated stars" in out
    assert "| compressed | 2.50 | 3.00 | 3.00 | 2.40 | 1.25 | 2.60 | 2.40 | 1.08 | nan | nan | 0.800 | 50.0 |" in out
    assert "steady cadence compressed / plain: 1.042" in out


def test_star_core_false_hits_count_clean_core_pixels_of_unsaturated_stars():
    import numpy as np
    from astropy.table import Table

    from astep_cal.devtools.bench_frames import star_core_false_hits

    cosmic = np.zeros((20, 20), bool)
    hits = np.zeros_like(cosmic)
    saturated = np.zeros_like(cosmic)
    cosmic[5, 5] = cosmic[5, 6] = True  # in the core of the star at (5, 5)
    hits[5, 6] = True  # ... one of them really hit
    cosmic[15, 15] = saturated[14, 15] = True  # a saturated star: not counted
    stars = Table({"x": [5.2, 15.0, 10.0], "y": [4.9, 15.0, 10.0]})
    assert star_core_false_hits(cosmic, hits, saturated, stars) == 1
