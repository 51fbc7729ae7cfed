"""A late frame in the daemon (issue 27): the summary's picture is deferred while frames arrive, never lost.

The real daemon (``astep-cal run`` as a subprocess) on a small night; a frame arrives after the night
was processed. summary.json shows it at once; summary.png is drawn once no frame came for
``close_delay_s``, or — stopped or killed meanwhile — by the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace

import numpy as np
from astropy.io import fits
from conftest import daemon_config, read_ledger, run_cli_subprocess, small_spec
from structlog.testing import capture_logs

from astep_cal.devtools.bench_late import _next_frame
from astep_cal.devtools.synthetic import make_night
from astep_cal.devtools.transit import TransitSpec
from astep_cal.engine.masters_cache import MastersCache
from astep_cal.engine.night_masters import Masters
from astep_cal.engine.pipeline import NightRun
from astep_cal.formats.names import SUMMARY_JSON, SUMMARY_PNG, cal_dir, cal_name
from astep_cal.frontends.watcher import IDLE_TICK_S, MIN_WAIT_S, idle_wait_s
from astep_cal.science.masters import DarkLibrary
from astep_cal.state import entries
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import Settings


def test_an_idle_worker_wakes_when_a_night_comes_due_not_a_tick_later():
    assert idle_wait_s([], 100.0) == IDLE_TICK_S
    assert abs(idle_wait_s([100.4, 130.0], 100.0) - 0.4) < 1e-9  # the first due, not a whole tick
    assert idle_wait_s([99.0], 100.0) == MIN_WAIT_S  # overdue: looked at at once, not busy-looping
    assert idle_wait_s([150.0], 100.0) == IDLE_TICK_S


def _pending(root, date) -> bool:
    return read_ledger(root)["nights"][date].get(entries.CLOSE_PENDING) == "pending"


def _summary_frames(root, date) -> int:
    return json.loads((cal_dir(root, date) / SUMMARY_JSON).read_text())["counts"]["frames"]


def _night(tmp_path):
    """A 3-frame night and a 4th frame held back (a copy of the last, 90 s later), with the name it will have."""
    root = tmp_path / "data"
    truth = make_night(root, small_spec())
    science = sorted(truth.night_dir.rglob("*_SCIENCE.fits"))
    held = tmp_path / "held.fits"
    arriving = _next_frame(science[-1], held)
    return root, truth.spec.date, held, arriving


def test_the_picture_waits_for_the_frames_to_stop_and_is_drawn_then(tmp_path, daemons):
    root, date, held, arriving = _night(tmp_path)
    daemon = daemons(root, daemon_config(settle=0.5, extra="close_delay_s = 2.0"))
    # summary_written comes before the ledger's close_pending is cleared: wait for both (a loaded machine
    # once read the ledger in between)
    daemon.wait_for(lambda: daemon.count("summary_written") >= 2 and not _pending(root, date), 120,
                    "the night's summary and its picture")
    assert daemon.count("night_close_deferred") == 1
    png = cal_dir(root, date) / SUMMARY_PNG
    drawn = png.stat().st_mtime_ns
    held.rename(arriving)
    daemon.wait_for(lambda: daemon.count("night_close_deferred") == 2, 120, "the late frame's run")
    assert _summary_frames(root, date) == 4  # the JSON at once ...
    assert _pending(root, date) and png.stat().st_mtime_ns == drawn  # ... the picture later
    daemon.wait_for(lambda: not _pending(root, date), 30, "the deferred picture")
    assert png.stat().st_mtime_ns > drawn
    written = [e for e in daemon.events() if e["event"] == "summary_written"]
    assert written[-1]["png_kb"] > 0 and written[-2]["png_kb"] is None
    assert daemon.count("frame_calibrated") == 4
    daemon.stop()
    assert daemon.process.returncode == 0


def test_a_picture_pending_at_a_kill_is_drawn_by_the_next_run(tmp_path, daemons):
    root, date, held, arriving = _night(tmp_path)
    config = daemon_config(settle=0.5, extra="close_delay_s = 3600")
    daemon = daemons(root, config)
    daemon.wait_for(lambda: daemon.count("night_close_deferred") == 1, 120, "the night's run")
    assert _pending(root, date) and not (cal_dir(root, date) / SUMMARY_PNG).exists()
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    again = daemons(root, config)
    again.wait_for(lambda: again.count("summary_written") >= 1, 120, "the picture drawn after the restart")
    assert not _pending(root, date) and (cal_dir(root, date) / SUMMARY_PNG).is_file()
    assert again.count("frame_calibrated") == 0  # nothing redone but the summary
    held.rename(arriving)  # a late frame, then a clean stop before the delay: left pending, done at the next start
    again.wait_for(lambda: again.count("night_close_deferred") == 1, 120, "the late frame's run")
    assert again.stop() < 10 and again.process.returncode == 0
    assert _pending(root, date) and _summary_frames(root, date) == 4
    third = daemons(root, config)
    third.wait_for(lambda: not _pending(root, date), 120, "the close finished by the next start")
    assert third.count("frame_calibrated") == 0 and third.count("summary_written") == 1
    third.stop()


def _pixels(cal) -> list:
    with fits.open(cal) as hdul:
        return [hdu.data.copy() for hdu in hdul[1:4]]  # SCI, ERR, MASK (tile-compressed)


def test_the_daemon_s_masters_are_kept_between_runs_of_a_night_and_read_again_when_changed(tmp_path):
    """A late frame's run takes the night's masters from the cache (the same arrays, no read), calibrated
    into the same bytes as a run that reads them; a master file changed on disk is read again."""
    root, date, held, arriving = _night(tmp_path)
    settings = Settings()
    settings = replace(settings, astrometry=replace(settings.astrometry, enabled=False))
    ledger = Ledger.load(root / ".astep-cal" / "ledger.json")
    cache = MastersCache()
    with capture_logs():
        first = NightRun(root, date, settings, ledger, force=False, masters_cache=cache)
        first.run()
    assert cache.date == date and first.masters is not None
    held.rename(arriving)
    with capture_logs():
        late = NightRun(root, date, settings, ledger, force=False, masters_cache=cache)
        late.run()
    assert late.result.calibrated == 1 and late.masters.flat is first.masters.flat  # not read back
    cal = cal_dir(root, date) / cal_name(arriving.name)
    kept = _pixels(cal)
    with capture_logs():  # the same frame again, masters read from their files: the same CAL file
        NightRun(root, date, settings, ledger, force=False).run()
        ledger.night(date)["frames"].pop(arriving.name)
        ledger.release(date)
        cal.unlink()
        NightRun(root, date, settings, ledger, force=False).run()
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(cal), kept, strict=True))  # bit-identical
    flat = root / ledger.peek(date)["masters"]["flat"]["file"]
    os.utime(flat, ns=(flat.stat().st_atime_ns, flat.stat().st_mtime_ns + 1))  # a master rewritten
    assert cache.get(root, date, ledger.peek(date)["masters"]) is None


def test_light_curves_deferred_by_the_daemon_are_those_of_once(tmp_path, daemons):
    """A target's light curve, remade by the daemon's deferred close after a late frame, is the one
    ``once`` makes of the whole night at once (the same catalogues, the same function)."""
    spec = replace(small_spec(), fwhm_arcsec=30.0, n_science=5, cadence_s=330.0, n_cosmic_rays=4,
                   transit=TransitSpec(mid_time="2026-07-01T20:15:00", duration_h=0.5))
    source = tmp_path / "source"
    truth = make_night(source, spec)
    date = truth.spec.date
    roots = {name: tmp_path / name for name in ("daemon", "once")}
    for root in roots.values():
        shutil.copytree(source, root)
    late = sorted((roots["daemon"] / date).rglob("*_SCIENCE.fits"))[-1]
    held = tmp_path / "late.fits"
    late.rename(held)
    target = '[photometry]\ntargets = [{ name = "SYN-1", ra = %r, dec = %r }]\n' % (truth.target["ra"], truth.target["dec"])
    daemon = daemons(roots["daemon"], daemon_config(settle=0.5, solve=True, extra="close_delay_s = 1.0") + target)
    daemon.wait_for(lambda: daemon.count("night_close_deferred") == 1, 300, "the night without its last frame")
    held.rename(late)
    daemon.wait_for(lambda: daemon.count("night_close_deferred") == 2, 300, "the late frame's run")
    daemon.wait_for(lambda: not _pending(roots["daemon"], date), 120, "the deferred close")
    daemon.stop(30)
    config = tmp_path / "once.toml"
    config.write_text('[logging]\nformat = "json"\n' + target)
    assert run_cli_subprocess("once", roots["once"], "--config", config).returncode == 0
    curves = {name: (cal_dir(root, date) / "lightcurve_SYN-1.csv").read_text().splitlines()
              for name, root in roots.items()}
    assert len([line for line in curves["once"] if not line.startswith("#")]) == 1 + 5  # a header and 5 frames
    assert curves["daemon"] == curves["once"]


def test_masters_whose_files_cannot_be_seen_are_neither_kept_nor_matched(tmp_path):
    """A night whose master files cannot be stat'ed (gone, unreadable directory) has no identity: before, a
    kept None matched a later None, and a night whose masters were deleted got the old arrays back."""
    record = {"complete": True, "detector": {}, "flat": {"file": "gone/flat.fits"},
              "darks": {"10": {"file": "dark_10.fits"}}}
    masters = Masters(shape=(4, 4), library=DarkLibrary(darks={}, bias=None), flat=np.ones((4, 4), np.float32),
                      mask=np.zeros((4, 4), np.uint8), record=record)
    cache = MastersCache()
    cache.keep(tmp_path, "2026-07-01", masters)
    assert cache.get(tmp_path, "2026-07-01", record) is None
    cache._key, cache._masters, cache.date = None, masters, "2026-07-01"  # as the old code kept it
    assert cache.get(tmp_path, "2026-07-01", record) is None
