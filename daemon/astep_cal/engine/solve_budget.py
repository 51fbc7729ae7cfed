"""What bounds a night's plate solving: the solutions already found (later frames of a pointing are solved
around them, a tight hint), and the night's budget of failed solving (beyond it, solves are deferred).

An unsolvable frame (frost, thin cloud with too few stars, a wrong scale setting) costs a whole solve-field
search; a night of 1000 of them once held the service for days, and every later night behind it. So:

* a frame's solving (list solve, then image solve) stops at ``frame_budget_s`` (``astrometry.solve``);
* the time a night spends on solves that *fail* is counted; once it passes ``night_budget_s`` in one pass,
  the night's remaining solves are not run but recorded ``deferred`` (no try counted) and retried when the
  service is idle (the daemon) or by the next ``once``: successful solves are the work and are never
  counted, so a clear night is not slowed; while a pass calibrates and none of its solves succeeded, its
  failed solving is also paced: no more than ``wait_fraction`` of the time calibrating so far (:meth:`NightSolving.pace_from`; the solve that
  goes over its pace is allowed to end), the solves beyond it deferred the same way;
* solving runs beside calibration (``solve-field`` at a low CPU priority, ``solve_process``); once the
  night's frames are calibrated, solving may hold the night ``wait_fraction`` (10 %) of the time the
  calibration took (:meth:`NightSolving.close_after`): each solve started then is given only the
  time left, the one still running at the end is stopped (``cut_off``), and both, when they fail so, are
  deferred, not tries; those left over are deferred too. A night failing with no success is not waited
  for at all. A night whose failed solving so far fits in that wait (none failed, or a solver failing at
  once) may wait one ``frame_budget_s`` instead, so that a small clear night's last solves are not cut
  short; a night already failing may not (with that floor for every
  night, a 30-frame 512² night of unsolvable frames waited a whole minute after a 39 s calibration). A pass that calibrated nothing, e.g. the
  daemon's idle retry, has no such limit;
* once a frame is solved, the night's later frames of the same pointing (header pointing within
  ``search_radius_deg`` of the solution, or no header pointing) are solved around that solution: within
  ``hint_radius_deg`` of its centre, pixel scale within ``hint_scale_tolerance``.

One :class:`NightSolving` per night run, used by the run's single solve thread and read by its main thread.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from astep_cal.support.config import AstrometrySettings


@dataclass(frozen=True)
class SolveHint:
    """A solution earlier in the night: the field centre (degrees), the pixel scale (arcsec/px) and the
    field's half diagonal (degrees)."""

    ra: float
    dec: float
    scale_arcsec: float
    half_diagonal_deg: float = 0.0


def hint_from_wcs(wcs_header: fits.Header, shape: tuple[int, int]) -> SolveHint | None:
    """The centre and pixel scale of a solved frame of ``shape`` (rows, columns); None if not usable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(wcs_header).celestial
            ra, dec = wcs.all_pix2world((shape[1] - 1) / 2, (shape[0] - 1) / 2, 0)
            scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600
    except Exception:  # noqa: BLE001 - a solution we cannot read gives no hint, the solve goes on unhinted
        return None
    values = (float(ra) % 360, float(dec), scale, scale * math.hypot(*shape) / 2 / 3600)
    return SolveHint(*values) if all(math.isfinite(v) for v in values) and scale > 0 else None


def separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    ra1, dec1, ra2, dec2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((dec2 - dec1) / 2) ** 2 + math.cos(dec1) * math.cos(dec2) * math.sin((ra2 - ra1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(min(1.0, h))))


def choose_hint(solutions: tuple[SolveHint, ...], pointing: tuple[float, float] | None,
                settings: AstrometrySettings) -> SolveHint | None:
    """The solution of this frame's pointing: the nearest to the header pointing within its search radius,
    or, when the header has no pointing, the latest one (a night's frames follow one target)."""
    if not solutions:
        return None
    if pointing is None:
        return solutions[-1]
    distance, nearest = min((separation_deg(s.ra, s.dec, *pointing), i) for i, s in enumerate(solutions))
    return solutions[nearest] if distance <= settings.search_radius_deg else None


def hint_arguments(hint: SolveHint, settings: AstrometrySettings) -> list[str]:
    """solve-field's scale and position arguments for a tight hint.

    solve-field applies ``--radius`` to the star quads it matches, which lie anywhere in the field, not to the
    field's centre: with 0.25° alone a 1° field solved in 0.15 s with 1° failed (6 s to its end). So the
    radius given is ``hint_radius_deg`` (how far the field may have moved) plus the field's half diagonal."""
    tolerance = settings.hint_scale_tolerance
    low, high = hint.scale_arcsec * (1 - tolerance), hint.scale_arcsec * (1 + tolerance)
    radius = settings.hint_radius_deg + hint.half_diagonal_deg
    return ["--scale-units", "arcsecperpix", "--scale-low", f"{low:.5g}", "--scale-high", f"{high:.5g}",
            "--ra", f"{hint.ra:.6f}", "--dec", f"{hint.dec:.6f}", "--radius", f"{radius:.4g}"]


MIN_SOLVE_S = 1.0  # a solve given less than this is not started


@dataclass
class NightSolving:
    """A night run's solutions and failed-solve time (see the module)."""

    budget_s: float
    failed_s: float = 0.0
    solved: int = 0
    deferred: int = 0
    deadline: float | None = None  # monotonic time by which solving must end (close_after) ...
    floor_deadline: float | None = None  # ... or this one, while the night is not failing (see ``_end``)
    wait_s: float = 0.0  # the wait after calibration (close_after)
    cut: bool = False  # the solves still running at the end of the wait were stopped (cut_off)
    paced_from: float | None = None  # monotonic start of a pass that calibrates (pace_from)
    pace: float = 0.0  # ... whose failed solving may be this fraction of the time since
    solutions: list[SolveHint] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def spent(self) -> bool:
        """Whether the next solve is to be deferred: failed solving used the budget or its pace, or the wait
        is over."""
        with self._lock:
            end = self._end()
            return self.cut or self.failed_s >= self.budget_s or self._ahead() or (
                end is not None and time.monotonic() > end - MIN_SOLVE_S)

    def pace_from(self, started: float, fraction: float) -> None:
        """The pass calibrates frames (since ``started``): while it does, its failed solving may not pass
        ``fraction`` of the time since. Solving runs beside calibration, and on a machine with no free core
        its failing searches came out of the night's wall time: 100 unsolvable 512² frames took 1.5x the
        night with solving off (``make bench-unsolvable``). A clear night fails nothing and is not paced."""
        with self._lock:
            if self.paced_from is None:
                self.paced_from, self.pace = started, fraction

    def _ahead(self) -> bool:
        """Failed solving ahead of its pace, in a night with no solve a success yet (under the lock): once one
        is, the night is not unsolvable, and its failures are bounded by the night's budget alone."""
        return (self.paced_from is not None and not self.solved
                and self.failed_s > self.pace * (time.monotonic() - self.paced_from))

    def close_after(self, calibration_s: float, settings: AstrometrySettings) -> None:
        """The night's frames are calibrated, in ``calibration_s``: solving may go on for ``wait_fraction`` of
        that, no longer; or for one ``frame_budget_s`` if that is more, as long as the night's failed solving
        fits in the wait (a clear night, or a solver that fails at once). A night already failing with no
        solve of this pass a success is not waited for at all: its next solves would fail as well, and
        deferring them costs nothing (with the wait, 100 unsolvable 512² frames took 10 % longer for it
        alone, ``make bench-unsolvable``)."""
        with self._lock:
            now = time.monotonic()
            self.wait_s = settings.wait_fraction * calibration_s
            self.deadline = now + self.wait_s
            self.floor_deadline = now + max(self.wait_s, settings.frame_budget_s)

    def _end(self) -> float | None:
        """When solving must end (None: no limit); under the lock."""
        if self.deadline is None:
            return None
        if self.failed_s <= self.wait_s:
            return self.floor_deadline
        return self.deadline if self.solved else self.deadline - self.wait_s

    def over(self) -> bool:
        """Whether the wait after calibration is over (the solves still running are then stopped)."""
        with self._lock:
            end = self._end()
            return end is not None and time.monotonic() >= end

    def cut_off(self) -> None:
        """The wait is over and the solves still running are being stopped: a solve that fails now ran out
        of the night's wait, not of its own tries (``frame_steps.solve_frame`` defers it)."""
        with self._lock:
            self.cut = True

    def budgeted(self, settings: AstrometrySettings) -> AstrometrySettings:
        """The settings of the next solve: its frame budget cut to the time left before the end of the wait."""
        with self._lock:
            end = self._end()
            if end is None:
                return settings
            return replace(settings, frame_budget_s=max(MIN_SOLVE_S, min(settings.frame_budget_s,
                                                                         end - time.monotonic())))

    def hints(self) -> tuple[SolveHint, ...]:
        with self._lock:
            return tuple(self.solutions)

    def learn(self, result: Any, shape: tuple[int, int] | None) -> bool:
        """Count a failed solve's time, or keep a solution as a hint for the frames after it. Returns whether
        the solve failed because the end of the night's wait stopped it (``cut_off`` came before it ended)."""
        with self._lock:
            if not result.solved:
                self.failed_s += result.duration_s
                return self.cut
            self.solved += 1
            if result.wcs_header is not None and shape is not None:
                hint = hint_from_wcs(result.wcs_header, shape)
                if hint is not None:
                    self.solutions.append(hint)
                    del self.solutions[:-20]  # the recent pointings are enough
            return False

    def defer(self, tries_so_far: int) -> dict[str, Any]:
        """The ledger record of a solve not run: the night's budget is spent (no try counted)."""
        with self._lock:
            self.deferred += 1
            over = self.failed_s >= self.budget_s
            waited = self.deadline is not None
        reason = (f"the night's budget of failed solving ({self.budget_s:g} s) is spent" if over
                  else "the night was calibrated and its wait for solves is over" if waited
                  else "failed solving is ahead of its pace (wait_fraction of the calibration time)")
        return {"status": "deferred", "tries": tries_so_far, "reason": reason}
