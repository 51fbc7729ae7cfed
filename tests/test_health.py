"""Issue 25 acceptance: a compressed season of synthetic nights (real Tycho-2 stars, real solve-field and
query-starkd) through the real daemon (``astep-cal run``, nights arriving one after the other), with
random clouds, from one night on an 8 % throughput loss and an ice ring in the light path, hot pixels
growing by 50 % over the season, and on one night a camera whose read noise and bias level jump. The
throughput and flat alerts fire on the step night and not before, the hot-pixel alert once the growth
passes its threshold, the read-noise and bias alerts on the jump night only, nothing else ever;
``trends`` shows the step; ``ack`` restarts a baseline; the Prometheus file follows every frame. The pure
parts (zero point, flat comparison, alert rules) are judged on their own below.

``make test`` runs an 8-night season (~2 min); ``make season`` the same test with 22 nights
(``ASTEP_SEASON_NIGHTS``), ~6 min."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import statistics
import time

import numpy as np
import pytest
from conftest import SMALL, DaemonProcess, parse_events, read_ledger, run_cli_subprocess

from astep_cal.devtools.sensor import make_flat, ring_shadow
from astep_cal.devtools.sky import ZERO_POINT_MAG
from astep_cal.devtools.synthetic import NightSpec, make_night
from astep_cal.formats.names import cal_name
from astep_cal.science.flat_change import compare_flats
from astep_cal.science.zeropoint import match_stars, zero_point

N_NIGHTS = int(os.environ.get("ASTEP_SEASON_NIGHTS", "8"))
STEP_NIGHT = max(5, N_NIGHTS * 2 // 3)  # 0-based: from this night on, 8 % less light and an ice ring
JUMP_NIGHT = STEP_NIGHT - 2  # this night only: read noise 9 -> 11.5 e-, bias level +30 ADU
LOSS = 0.08
HOT_FIRST, HOT_LAST = 80, 120  # hot pixels grow by 50 % over the season
RING = (300.0, 190.0, 12.0, 30.0, 0.05)  # x, y, r_in, r_out (px), depth
HOT_RISE_PCT = 15.0  # passed before the step (night 4 of 8, 8 of 22): the alerts are independent
READ_NOISE_E, JUMP_READ_NOISE_E, BIAS_ADU, JUMP_BIAS_ADU = 9.0, 11.5, 1000.0, 1030.0
FIRST = dt.date(2026, 7, 1)
BASE = dataclasses.replace(NightSpec(**SMALL), fwhm_arcsec=30.0, n_science=4, cadence_s=300.0, n_cosmic_rays=4,
                           n_flats=3, n_bias=3)
NIGHT_TIMEOUT_S = 300.0


def night_spec(i: int, rng: np.random.Generator) -> NightSpec:
    date = (FIRST + dt.timedelta(days=i)).isoformat()
    cloudy = tuple(sorted(rng.choice(BASE.n_science, size=int(rng.integers(0, 3)), replace=False).tolist()))
    jump = i == JUMP_NIGHT
    return dataclasses.replace(
        BASE, date=date, start_time=f"{date}T20:00:00", seed=100 + i,
        n_hot_pixels=round(HOT_FIRST + (HOT_LAST - HOT_FIRST) * i / (N_NIGHTS - 1)),
        cloud_frames=cloudy, cloud_dimming=float(rng.uniform(0.05, 0.20)),  # clouds: losses up to 20 %
        throughput=1.0 - LOSS if i >= STEP_NIGHT else 1.0, flat_ring=RING if i >= STEP_NIGHT else (),
        read_noise_e=JUMP_READ_NOISE_E if jump else READ_NOISE_E, bias_adu=JUMP_BIAS_ADU if jump else BIAS_ADU)


def frame_block(prom) -> tuple[str, str] | None:
    """The (night, frame) of the Prometheus file's frame block, None before the first frame."""
    try:
        found = re.search(r'astep_cal_frame_zp\{night="([^"]+)",frame="([^"]+)"\}', prom.read_text())
    except FileNotFoundError:
        return None
    return found.groups() if found else None


def night_closed(root, date: str) -> bool:
    try:
        night = read_ledger(root)["nights"].get(date, {})
    except (FileNotFoundError, ValueError):
        return False
    summary = root / date / f"{date}-CAMS_CAL" / "summary.png"  # drawn by the night's (deferred) close
    return "health" in night and not night.get("close_pending") and summary.is_file()


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    """The season through ``astep-cal run``: each night generated beforehand, moved into the watched root
    whole (with its NIGHT_COMPLETE marker) once the daemon has closed the night before."""
    work = tmp_path_factory.mktemp("season")
    root, source, etc = work / "root", work / "source", work / "etc"
    for folder in (root, source, etc):
        folder.mkdir()
    rng = np.random.default_rng(25)
    specs = [night_spec(i, rng) for i in range(N_NIGHTS)]
    for spec in specs:
        made = make_night(source, spec, truth_dir=work / "truth" / spec.date)
        (made.night_dir / "NIGHT_COMPLETE").touch()
    prom = etc / "astep_cal.prom"
    config_text = (f'[daemon]\nsettle_seconds = 1.0\nno_flat_wait_s = 3600\nclose_delay_s = 0.2\n[logging]\nformat = "json"\n'
                   f'[health]\nhot_pixel_rise_pct = {HOT_RISE_PCT}\nprometheus_textfile = "{prom}"\n')
    config = etc / "health.toml"
    config.write_text(config_text)
    daemon = DaemonProcess(etc, root, config_text)
    seen_frames: set[tuple[str, str]] = set()

    def closed_watching(date: str) -> bool:  # the Prometheus frame block, sampled while the night runs
        block = frame_block(prom)
        if block:
            seen_frames.add(block)
        time.sleep(0.05)
        return night_closed(root, date)

    start = time.perf_counter()
    try:
        daemon.wait_message("READY=1", timeout=120)
        for spec in specs:
            os.rename(source / spec.date, root / spec.date)
            daemon.wait_for(lambda: closed_watching(spec.date), NIGHT_TIMEOUT_S, f"night {spec.date} closed")
        elapsed = time.perf_counter() - start
        daemon.stop(timeout=60)
    finally:
        daemon.close()
    return root, specs, config, daemon.events(), elapsed, seen_frames


def trends(root, config) -> list[dict]:
    done = run_cli_subprocess("trends", root, "--config", config, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["nights"]


def test_alerts_fire_on_the_step_night_and_not_before(season):
    root, specs, config, events, elapsed, _ = season
    raised = {}
    for event in events:
        if event["event"] == "health_alert":
            raised.setdefault(event["kind"], []).append(event["night"])
    dates = [s.date for s in specs]
    step = dates[STEP_NIGHT]
    assert raised.get("throughput", [None])[0] == step, raised
    assert raised.get("flat") == [step], raised  # the next nights' flats match the previous (ringed) one
    # The hot pixels: their baseline is the first 3 nights' count; the alert fires on the first night
    # whose true count exceeds it by HOT_RISE_PCT, and on the nights after.
    baseline = statistics.median(s.n_hot_pixels for s in specs[:3])
    expected_hot = [s.date for s in specs if s.n_hot_pixels > baseline * (1 + HOT_RISE_PCT / 100)]
    assert raised.get("hot_pixels") == expected_hot, (raised, baseline)
    # The camera's jump: on its night only (the next nights are back to the baseline, which leaves it out).
    assert raised.get("read_noise") == [dates[JUMP_NIGHT]] and raised.get("bias") == [dates[JUMP_NIGHT]], raised
    # Nothing else, and no alert before the step but the hot pixels' and the jump's own.
    assert set(raised) == {"throughput", "flat", "hot_pixels", "read_noise", "bias"}, raised
    assert raised["throughput"] == dates[STEP_NIGHT:], raised  # unacknowledged: frost stays frost
    assert expected_hot[0] < step  # this season's hot pixels pass their threshold before the frost
    print(f"\nseason of {N_NIGHTS} nights x {BASE.n_science} frames processed in {elapsed:.0f} s; alerts {raised}")


def test_trends_show_the_step_and_the_figures_match_the_truth(season):
    root, specs, config, _, _, _ = season
    rows = trends(root, config)
    assert [r["night"] for r in rows] == [s.date for s in specs]
    clear = [r["throughput"] for r in rows[:STEP_NIGHT]]
    after = [r["throughput"] for r in rows[STEP_NIGHT:]]
    scatter = float(np.std(clear, ddof=1))
    step = statistics.median(clear) - statistics.median(after)
    print(f"\nclear-sky ZP before the step {statistics.median(clear):.4f} (truth {ZERO_POINT_MAG}), night-to-night "
          f"scatter {scatter * 92.1:.3f} % ({scatter:.5f} mag); step {step:.4f} mag (truth "
          f"{-2.5 * np.log10(1 - LOSS):.4f})")
    assert abs(statistics.median(clear) - ZERO_POINT_MAG) < 0.02
    assert scatter * 92.1 <= 1.0  # <= 1 % night to night (0.01 mag = 0.921 % in flux)
    assert step == pytest.approx(-2.5 * np.log10(1 - LOSS), abs=0.02)
    assert [r["n_hot"] for r in rows] == [s.n_hot_pixels for s in specs]  # every injected hot pixel, no other
    assert all(r["flat_structures"] == (1 if i == STEP_NIGHT else 0) for i, r in enumerate(rows[1:], start=1)), rows
    text = run_cli_subprocess("trends", root, "--config", config, "--nights",
                              f"{specs[STEP_NIGHT - 1].date}..{specs[STEP_NIGHT].date}", "--png", root / "season.png")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 3, text.stdout
    assert (root / "season.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_nightly_summary_carries_the_health_and_its_trend(season):
    root, specs, config, _, _, _ = season
    step = specs[STEP_NIGHT].date
    summary = json.loads((root / step / f"{step}-CAMS_CAL" / "summary.json").read_text())
    health = summary["health"]
    assert [a["kind"] for a in health["alerts"]][:2] == ["throughput", "flat"]
    ring = health["flat_change"]["structures"][0]
    assert ring["x"] == pytest.approx(RING[0], abs=8) and ring["y"] == pytest.approx(RING[1], abs=8)
    assert ring["size_px"] == pytest.approx(2 * RING[3], abs=12) and ring["depth"] == pytest.approx(-RING[4], abs=0.015)
    assert [t["night"] for t in health["trend"]] == [s.date for s in specs[max(0, STEP_NIGHT - 6):STEP_NIGHT + 1]]
    assert len(json.dumps(health)) < 4000  # small enough for the satellite link


def test_the_summary_png_shows_the_flat_ratio_and_stays_small(season):
    """The step night's flat-ratio thumbnail holds the ring where it was put; the PNG stays small."""
    from astep_cal.formats import names, products

    root, specs, _, _, _, _ = season
    cal = root / specs[STEP_NIGHT].date / f"{specs[STEP_NIGHT].date}-CAMS_CAL"
    thumbnail, against = products.read_flat_ratio(cal / names.FLAT_RATIO)
    assert against == specs[STEP_NIGHT - 1].date
    factor = max(specs[0].shape) / max(thumbnail.shape)
    y, x = np.unravel_index(np.nanargmin(thumbnail), thumbnail.shape)
    distance = np.hypot((x + 0.5) * factor - RING[0], (y + 0.5) * factor - RING[1])
    assert RING[2] - factor <= distance <= RING[3] + factor, (x, y, distance)  # the deepest block is on the ring
    assert np.nanmin(thumbnail) < 1 - RING[4] / 2 and abs(np.nanmedian(thumbnail) - 1) < 0.005
    assert not (root / specs[0].date / f"{specs[0].date}-CAMS_CAL" / names.FLAT_RATIO).exists()  # no earlier flat
    sizes = {s.date: (root / s.date / f"{s.date}-CAMS_CAL" / "summary.png").stat().st_size for s in specs}
    print(f"\nsummary.png {max(sizes.values()) / 1024:.1f} kB at most ({sizes[specs[STEP_NIGHT].date] / 1024:.1f} kB "
          f"on the step night, with the flat ratio)")
    assert max(sizes.values()) < 80 * 1024


def test_the_prometheus_file_follows_every_frame_and_night(season):
    """Sampled while the daemon ran, the file's frame block named many frames (it is rewritten after
    each solved frame, not only each night); at the end it holds the last frame and the last night."""
    root, specs, config, _, _, seen = season
    prom = (config.parent / "astep_cal.prom").read_text()
    last = specs[-1].date
    assert f'astep_cal_health_alert{{night="{last}",kind="throughput"}} 1' in prom
    assert f'astep_cal_health_alert{{night="{last}",kind="fwhm"}} 0' in prom
    frames = sorted(read_ledger(root)["nights"][last]["frames"])
    assert frame_block(config.parent / "astep_cal.prom") == (last, cal_name(frames[-1]))
    per_night = {night: sum(1 for n, _ in seen if n == night) for night in {n for n, _ in seen}}
    print(f"\nPrometheus frame block seen with {len(seen)} distinct frames over {len(specs)} nights")
    assert len(seen) >= 2 * len(specs) and max(per_night.values()) >= 3, per_night


def test_status_shows_the_alerts_until_acknowledged(season):
    from astep_cal.state import alerts

    root, specs, config, _, _, _ = season
    status = run_cli_subprocess("status", root, "--config", config)
    assert f"ALERT {specs[-1].date} throughput" in status.stdout, status.stdout
    report = run_cli_subprocess("report", specs[STEP_NIGHT].date, root, "--config", config)
    assert f"ALERT {specs[STEP_NIGHT].date} flat" in report.stdout, report.stdout
    acked = run_cli_subprocess("ack", "throughput", "--root", root, "--config", config)
    assert acked.returncode == 0, acked.stderr
    assert any(e["event"] == "alert_acknowledged" for e in parse_events(acked.stderr))
    after = run_cli_subprocess("status", root, "--config", config).stdout
    assert "throughput" not in after and f"ALERT {specs[-1].date} hot_pixels" in after, after
    assert json.loads((root / ".astep-cal" / alerts.ACKS_FILE).read_text())["throughput"]["after_night"] == specs[-1].date


# --- the pure parts -------------------------------------------------------------------------------

def test_zero_point_is_the_median_over_clean_matched_stars():
    rng = np.random.default_rng(3)
    mag = rng.uniform(8, 11, 50)
    flux = 10 ** (-0.4 * (mag - 19.0)) * 60.0
    flags = np.zeros(50, int)
    flags[:5] = 2  # saturated: left out however wrong their flux
    flux[:5] *= 0.3
    zp = zero_point(mag, flux * (1 + rng.normal(0, 0.005, 50)), np.full(50, 10.0), flags, 60.0)
    assert zp.zp == pytest.approx(19.0, abs=0.003) and zp.n_stars == 45 and zp.scatter < 0.01
    assert zero_point(mag[:2], flux[:2], np.ones(2), np.zeros(2), 60.0).zp is None  # too few stars


def test_matching_refuses_blends():
    ra, dec = np.array([10.0, 20.0]), np.array([-60.0, -60.0])
    ref_ra = np.array([10.0, 20.0, 20.0 + 1 / 3600])  # two reference stars 0.5" apart in the second source
    cat, ref = match_stars(ra, dec, ref_ra, np.array([-60.0, -60.0, -60.0]), 5.0)
    assert cat.tolist() == [0] and ref.tolist() == [0]


def test_flat_comparison_finds_a_ring_and_nothing_in_noise():
    flat = make_flat(NightSpec(**SMALL))
    rng = np.random.default_rng(1)
    a, b = (flat * (1 + 0.003 * rng.standard_normal(flat.shape))).astype(np.float32), flat.copy()
    assert compare_flats(a, b).structures == []
    ringed = compare_flats(a * ring_shadow(flat.shape, *RING), b)
    assert len(ringed.structures) == 1 and ringed.structures[0]["depth"] < -0.03
    tilted = compare_flats(a * np.linspace(0.97, 1.03, flat.shape[1])[None, :].astype(np.float32), b)
    assert tilted.large_scale_std > 0.01


def test_alert_rules_baseline_and_acknowledgement(tmp_path):
    from astep_cal.state import alerts
    from astep_cal.support.config import HealthSettings

    h = HealthSettings()
    past = [(f"2026-07-0{i}", {"throughput": 19.0 + 0.003 * (-1) ** i, "n_hot": 100, "alerts": []}) for i in range(1, 6)]
    assert alerts.evaluate({"throughput": 18.99, "n_hot": 110}, past, {}, h) == []
    frost = alerts.evaluate({"throughput": 18.9, "n_hot": 140}, past, {}, h)
    assert [a["kind"] for a in frost] == ["throughput", "hot_pixels"] and frost[0]["drop_pct"] > 8
    assert alerts.evaluate({"throughput": 18.9}, past[:2], {}, h) == []  # no baseline yet
    alerts.acknowledge(tmp_path, "throughput", "2026-07-05")
    assert alerts.evaluate({"throughput": 18.9}, past, alerts.read_acks(tmp_path), h) == []  # baseline restarts
    with pytest.raises(ValueError):
        alerts.acknowledge(tmp_path, "nonsense", "2026-07-05")
    camera = [(d, {**f, "read_noise_adu": 4.5 + 0.01 * i, "bias_adu": 1000.0 + 0.5 * i}) for i, (d, f) in enumerate(past)]
    assert alerts.evaluate({"read_noise_adu": 4.9, "bias_adu": 1008.0}, camera, {}, h) == []  # 8.7 %, 7 ADU
    jump = alerts.evaluate({"read_noise_adu": 5.75, "bias_adu": 970.0}, camera, {}, h)
    assert [a["kind"] for a in jump] == ["read_noise", "bias"] and jump[0]["jump_pct"] > 25 and jump[1]["jump_adu"] < -29
    tight = dataclasses.replace(h, read_noise_jump_pct=5.0, bias_jump_adu=5.0)  # the thresholds are the settings'
    assert [a["kind"] for a in alerts.evaluate({"read_noise_adu": 4.9, "bias_adu": 1008.0}, camera, {}, tight)] == [
        "read_noise", "bias"]


def test_prometheus_frame_and_night_blocks_replace_only_their_own(tmp_path):
    from astep_cal.engine import prometheus

    path = tmp_path / "astep_cal.prom"
    cal = tmp_path / "2026-07-02" / "2026-07-02-CAMS_CAL" / "a_CAL.fits"
    assert prometheus.write_frame(path, cal, {"zp": 19.0, "sky_mag_arcsec2": 21.5}) is None
    prometheus.write_textfile(path, "2026-07-01", {"throughput": 19.0, "alerts": ["flat"]})
    assert prometheus.write_frame(path, cal.with_name("b_CAL.fits"), {"zp": 18.9}) is None
    text = path.read_text()
    assert text.count("astep_cal_frame_zp{") == 1 and 'frame="b_CAL.fits"} 18.9' in text
    assert "sky_mag_arcsec2" not in text  # the frame block was replaced whole
    assert 'astep_cal_health_throughput{night="2026-07-01"} 19.0' in text
    assert 'astep_cal_health_alert{night="2026-07-01",kind="flat"} 1' in text
    assert not list(tmp_path.glob(".*astep-tmp*"))
    assert "No such file" in prometheus.write_frame(tmp_path / "gone" / "x.prom", cal, {"zp": 19.0})
    assert "No such file" in prometheus.write_textfile(tmp_path / "gone" / "x.prom", "2026-07-01", {"zp": 19.0})


def test_a_missing_or_hanging_query_starkd_fails_the_step_only(season, tmp_path):
    """No reference stars (query-starkd absent, or hanging past its timeout): the frame's health record is
    a failure with the reason, nothing is raised; the frame's solve record stays good."""
    import shutil

    from astep_cal.engine.frame_health import ReferenceUnavailable, frame_health
    from astep_cal.engine.stages import HEALTH_STEP, run_stage
    from astep_cal.support.config import HealthSettings

    root, specs, _, _, _, _ = season
    source = root / specs[0].date / f"{specs[0].date}-CAMS_CAL"
    cal = sorted(source.glob("*_CAL.fits"))[0]
    for path in (cal, cal.with_name(cal.name.replace("_CAL", "_CAT"))):
        shutil.copy(path, tmp_path / path.name)  # no cached reference table beside them
    hanging = tmp_path / "query-starkd"
    hanging.write_text("#!/bin/sh\nsleep 30\n")
    hanging.chmod(0o755)
    for settings, reason in ((HealthSettings(query_starkd="no-such-query-starkd"), "not found"),
                             (HealthSettings(query_starkd=str(hanging), query_timeout_s=1.0), "timed out")):
        with pytest.raises(ReferenceUnavailable, match=reason):
            frame_health(tmp_path / cal.name, settings)
        with run_stage("health", None, HEALTH_STEP) as record:
            record.update(frame_health(tmp_path / cal.name, settings))
        assert record["status"] == "failed" and reason in record["error"]
    assert not list(tmp_path.glob("health/*"))  # nothing half-written is left for the next frame


def test_prometheus_labels_an_astep_plus_frame_with_its_cameras_night_key(tmp_path):
    """The frame block's ``night`` label is the night key the night block uses (``DATE-CAMR``), not the
    date alone: a dashboard joins the two on it."""
    from astep_cal.engine import prometheus

    path = tmp_path / "astep_cal.prom"
    cal = tmp_path / "2026-07-02" / "2026-07-02-CAMR_CAL" / "a_CAL.fits"
    assert prometheus.write_frame(path, cal, {"zp": 19.0}) is None
    assert 'astep_cal_frame_zp{night="2026-07-02-CAMR",frame="a_CAL.fits"} 19.0' in path.read_text()


@pytest.fixture
def full_tmpfs(tmp_path):
    """A real 64 kB tmpfs, filled up (root: mount)."""
    import subprocess

    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        descriptor = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(descriptor, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(descriptor)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_prometheus_directory_is_the_monitorings_trouble_only(tmp_path, full_tmpfs):
    """node_exporter's directory full (a full /var): the writers return the reason, as for any write error;
    before, the storage's own exception came out of them and stopped the night's processing like a full
    data disk, solve after solve, until /var was freed."""
    from astep_cal.engine import prometheus

    cal = tmp_path / "2026-07-02" / "2026-07-02-CAMS_CAL" / "a_CAL.fits"
    frame_error = prometheus.write_frame(full_tmpfs / "astep_cal.prom", cal, {"zp": 19.0})
    night_error = prometheus.write_textfile(full_tmpfs / "astep_cal.prom", "2026-07-02", {"throughput": 19.0})
    assert frame_error and "space" in frame_error
    assert night_error and "space" in night_error
