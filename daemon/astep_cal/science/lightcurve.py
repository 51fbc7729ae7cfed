"""A night's light curve of one target from its frames' source catalogues (differential photometry).

Pure functions: catalogues in, a table and a record out; what happened is returned as events for the
caller to log (``pipeline.write_night_photometry`` writes the files). The method, and why:

* **Which frames**: a solved frame whose WCS puts the target inside it, or a frame whose ``OBJECT``
  names the target (an unsolved frame is then placed by its shift against the reference, see
  ``crossmatch``). A frame that names the target but whose WCS puts it outside is reported.
* **Reference**: the solved frame with the most clean sources defines the stars (their ids, the
  target's row); every frame is matched to it.
* **Comparison stars**: found in >= 90 % of the frames with clean flags, not saturated, away from the
  target, of similar brightness (1/4 to 4 times the target, widened to 1/20 to 20 when that finds
  none), at most ``MAX_COMPARISONS``. They are weighted as in Broeg, Fernandez & Neuhauser (2005,
  AN 326, 134): each star's weight is 1/sigma^2 of its own light curve against the ensemble of the
  others, iterated until the weights settle; a star far noisier than the rest (variable) gets none.
* **Aperture**: the one (of the catalogue's radii, tied to each frame's FWHM) whose light curve has
  the least point-to-point scatter out of transit -- a transit barely changes neighbouring points, so
  without an ephemeris all good points are used. The curve is normalised to the median of the good
  points out of transit (with an ephemeris), else of all good points (a transit covers far less than
  half a night).
* **Time**: BJD_TDB at mid-exposure, astropy.time at Concordia with astropy's built-in ephemeris.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astep_cal.formats import keywords as kw
from astep_cal.science import crossmatch
from astep_cal.science.catalogue import EDGE, NO_SKY
from astep_cal.science.ensemble import broeg_weights, differential, ensemble_flux, point_to_point, robust_std  # noqa: F401
from astep_cal.science.lightcurve_time import bjd_and_airmass, mid_exposure
from astep_cal.science.masters import MaskBit
from astep_cal.support.config import Target

MAX_COMPARISONS = 20
MAX_FOLLOWED = 300  # reference stars matched in every frame (the target's possible comparison stars)
MIN_DETECTED = 0.9  # a comparison star is found (and clean) in this fraction of the frames
# A measurement that cannot be trusted. BAD and COSMIC pixels in an aperture are not: their values were
# replaced from their neighbours (the flag stays in the catalogue for whoever wants to be stricter).
UNUSABLE = int(MaskBit.SATURATED | EDGE | NO_SKY)
CLOUDY = 1  # point flags: the comparison ensemble lost more than half its light (cloud)
TARGET_FLAGGED = 2  # the target's aperture holds a bad or saturated pixel, or leaves the frame
SHIFTED = 4  # the frame did not solve: matched by its pixel shift (a good point all the same)
MISSING = 8  # the target was not found in the frame
TARGET_COSMIC = 16  # cosmic-ray pixels replaced in the target's aperture (a hit on the core loses ~1 %)
BAD_POINT = CLOUDY | TARGET_FLAGGED | MISSING | TARGET_COSMIC
CLOUD_LEVEL = 0.5


@dataclass(frozen=True)
class FrameCatalogue:
    """One frame's catalogue (``<name>_CAT.fits``: the table and its header).

    ``table`` may be left None with a ``load`` that reads it: a winter night's catalogues (1400 x 4000
    sources, ~460 MB) are then read one at a time, and only the followed stars' rows are kept (see
    :func:`match_all`). ``load`` returns None when the file cannot be read (the caller has said why).
    """

    name: str
    table: Table | None
    header: fits.Header
    load: Callable[[], Table | None] | None = None

    def rows(self) -> Table | None:
        """The whole table: the one held, else read now (and not kept)."""
        if self.table is not None or self.load is None:
            return self.table
        return self.load()

    def held(self) -> "FrameCatalogue":
        """This catalogue with its table in memory (the reference frame, read once)."""
        return self if self.table is not None else FrameCatalogue(self.name, self.rows(), self.header)

    @property
    def n_sources(self) -> int:
        """Sources in the table, from the header when it was not read (a table's NAXIS2)."""
        return len(self.table) if self.table is not None else int(self.header.get("NAXIS2", 0))

    @property
    def solved(self) -> bool:
        return self.header.get(kw.WCS_STATUS.name) == "solved"

    def wcs(self) -> WCS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WCS(self.header).celestial

    def xy(self) -> np.ndarray:
        return positions(self.table)

    def inside(self, x: float, y: float) -> bool:
        return bool(-0.5 <= x < self.header["IMWIDTH"] - 0.5 and -0.5 <= y < self.header["IMHEIGHT"] - 0.5)


def positions(table: Table) -> np.ndarray:
    """(n, 2) x/y of a catalogue's sources (0-based pixels)."""
    return np.column_stack([np.asarray(table["x"], float), np.asarray(table["y"], float)])


@dataclass
class LightCurve:
    """The result for one target: ``status`` ``ok`` with ``points``, else why not."""

    target: str
    status: str
    points: Table | None = None
    record: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (level, event, fields)


def same_name(a: Any, b: str) -> bool:
    return isinstance(a, str) and "".join(a.split()).upper() == "".join(b.split()).upper()


def frames_of_target(frames: list[FrameCatalogue], target: Target, events: list) -> list[FrameCatalogue]:
    """The frames that observed the target (see the module's docstring); reports named frames that miss it."""
    chosen = []
    for frame in frames:
        named = any(same_name(frame.header.get(key), target.name) for key in ("OBJECT", kw.TARGET_NAME.name))
        if frame.solved:
            x, y = frame.wcs().all_world2pix(target.ra, target.dec, 0, quiet=True)
            if frame.inside(float(x), float(y)):
                chosen.append(frame)
            elif named:
                events.append(("warning", "lightcurve_target_off_frame",
                               {"target": target.name, "frame": frame.name, "x": round(float(x), 1),
                                "y": round(float(y), 1)}))
        elif named:
            chosen.append(frame)
    return chosen


def reference_frame(frames: list[FrameCatalogue]) -> FrameCatalogue | None:
    """The solved frame with the most sources: the clearest (None when no frame of the target solved)."""
    solved = [f for f in frames if f.solved]
    best = max(solved, key=lambda f: f.n_sources) if solved else None
    return best.held() if best is not None else None


def followed_stars(table: Table, target_row: int) -> np.ndarray:
    """Reference rows worth following through the night: the target and the ``MAX_FOLLOWED`` stars
    nearest its flux that could become comparison stars (1/20 to 20 times, not saturated). Bounds the
    (frames x stars) arrays: 1400 frames x 4000 sources would be 45 MB an array."""
    n_apertures = sum(1 for name in table.colnames if name.startswith("flux_err_"))
    level = np.asarray(table[f"flux_{n_apertures // 2 + 1}"], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ratio = np.abs(np.log(level / level[target_row]))
    usable = np.isfinite(ratio) & (ratio < np.log(20.0)) & ((np.asarray(table["flags"]) & MaskBit.SATURATED) == 0)
    usable[target_row] = False
    chosen = np.flatnonzero(usable)
    chosen = chosen[np.argsort(ratio[chosen], kind="stable")][:MAX_FOLLOWED]
    return np.union1d(chosen, [target_row])


def match_all(frames: list[FrameCatalogue], reference: FrameCatalogue, vote_xy: np.ndarray, radius: float,
              events: list) -> tuple[list[FrameCatalogue], np.ndarray, np.ndarray]:
    """Each frame matched to the reference's stars: the frames cut down to the matched rows (in the
    reference's order; a night's full catalogues are never all in memory), the (n frames, n reference
    stars) row of each star in its cut-down frame (-1: absent) and per-frame flags."""
    ref_xy, ref_wcs = reference.xy(), reference.wcs()
    kept, rows, flags = [], [], []
    for frame in frames:
        table = frame.rows()
        if table is None or not len(table):
            matched, how = np.full(len(ref_xy), -1, int), "none"
        else:
            sky = (np.asarray(table["ra"], float), np.asarray(table["dec"], float)) if frame.solved else None
            matched, how = crossmatch.match_frame(ref_xy, positions(table), sky, ref_wcs, radius, vote_xy)
        if how == "none":
            events.append(("warning", "lightcurve_frame_unmatched", {"frame": frame.name}))
        elif how == "shift":
            events.append(("info", "lightcurve_frame_unsolved", {"frame": frame.name, "matched": int((matched >= 0).sum())}))
        found = matched >= 0
        cut = table[matched[found]] if found.any() else None
        kept.append(FrameCatalogue(frame.name, cut, frame.header))
        rows.append(np.where(found, np.cumsum(found) - 1, -1))
        flags.append(SHIFTED if how == "shift" else 0)
    return kept, np.array(rows).reshape(len(frames), len(ref_xy)), np.array(flags)


def gather(frames: list[FrameCatalogue], rows: np.ndarray, column: str, fill: float = np.nan) -> np.ndarray:
    """(n frames, n stars) values of one catalogue column for the matched stars."""
    out = np.full(rows.shape, fill, float)
    for i, frame in enumerate(frames):
        found = rows[i] >= 0
        if found.any():
            out[i, found] = np.asarray(frame.table[column], float)[rows[i, found]]
    return out


def choose_comparisons(flux: np.ndarray, flags: np.ndarray, target: int, ref_xy: np.ndarray,
                       min_separation: float) -> np.ndarray:
    """Comparison stars (reference indices): found and clean, away from the target, similar brightness."""
    usable = np.isfinite(flux) & (flux > 0) & ((flags.astype(int) & UNUSABLE) == 0)
    with warnings.catch_warnings():  # a star never usable has no level: it is not chosen
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmedian(np.where(usable, flux, np.nan), axis=0)
    target_level = np.nanmedian(flux[:, target])
    apart = np.hypot(*(ref_xy - ref_xy[target]).T) > min_separation
    ok = (usable.mean(axis=0) >= MIN_DETECTED) & apart & np.isfinite(level)
    ok[target] = False
    for ratio in (4.0, 20.0):
        similar = ok & (level > target_level / ratio) & (level < target_level * ratio)
        if similar.any():
            chosen = np.flatnonzero(similar)
            order = np.argsort(np.abs(np.log(level[chosen] / target_level)), kind="stable")
            return chosen[order][:MAX_COMPARISONS]
    return np.zeros(0, int)


def light_curve(frames: list[FrameCatalogue], target: Target, bin_minutes: float) -> LightCurve:
    """The target's light curve over the night's catalogues (see the module's docstring)."""
    result = LightCurve(target.name, "not_observed")
    mine = sorted(frames_of_target(frames, target, result.events), key=lambda f: f.header.get("DATE-OBS", ""))
    if not mine:
        result.status = "off_frame" if result.events else "not_observed"
        return result
    reference = reference_frame(mine)
    if reference is None:
        return _give_up(result, "no_solved_frame", "lightcurve_no_solved_frame", frames=len(mine))
    ref_xy = reference.xy()
    tx, ty = reference.wcs().all_world2pix(target.ra, target.dec, 0, quiet=True)
    radius = max(1.5, 0.5 * float(reference.header.get("FWHMUSED", 2.5)))
    distance = np.hypot(ref_xy[:, 0] - tx, ref_xy[:, 1] - ty) if len(ref_xy) else np.zeros(0)
    if not len(distance) or distance.min() > 2 * radius:
        return _give_up(result, "not_detected", "lightcurve_target_not_detected", reference=reference.name,
                        x=round(float(tx), 1), y=round(float(ty), 1))
    return _measure(result, mine, reference, int(np.argmin(distance)), radius, target, bin_minutes)


def _give_up(result: LightCurve, status: str, event: str, **fields: Any) -> LightCurve:
    result.status = status
    result.events.append(("warning", event, {"target": result.target, **fields}))
    return result


def _measure(result: LightCurve, frames: list[FrameCatalogue], reference: FrameCatalogue, target_row: int,
             radius: float, target: Target, bin_minutes: float) -> LightCurve:
    stars, vote_xy = followed_stars(reference.table, target_row), reference.xy()
    reference = FrameCatalogue(reference.name, reference.table[stars], reference.header)
    target_row = int(np.searchsorted(stars, target_row))
    frames, rows, frame_flags = match_all(frames, reference, vote_xy, radius, result.events)
    n_apertures = sum(1 for name in reference.table.colnames if name.startswith("flux_err_"))
    flags = gather(frames, rows, "flags", 0.0)
    fluxes = [gather(frames, rows, f"flux_{k}") for k in range(1, n_apertures + 1)]
    errors = [gather(frames, rows, f"flux_err_{k}") for k in range(1, n_apertures + 1)]
    middle = n_apertures // 2
    separation = 2.0 * float(reference.header.get(f"APRAD{n_apertures}", 5.0))
    comparisons = choose_comparisons(fluxes[middle], flags, target_row, reference.xy(), separation)
    target_flags = flags[:, target_row].astype(int)
    saturated = int(np.count_nonzero(target_flags & MaskBit.SATURATED))
    if saturated:
        result.events.append(("warning", "lightcurve_target_saturated",
                              {"target": target.name, "frames": saturated, "of": len(frames)}))
    if saturated > len(frames) / 2:
        result.status = "target_saturated"
        return result
    if not len(comparisons):
        return _give_up(result, "no_comparison", "lightcurve_no_comparison", frames=len(frames))
    candidates = [differential(f, e, target_row, comparisons) for f, e in zip(fluxes, errors)]
    point = np.where(rows[:, target_row] < 0, MISSING, 0) | np.where(target_flags & UNUSABLE, TARGET_FLAGGED, 0)
    point |= np.where(target_flags & MaskBit.COSMIC, TARGET_COSMIC, 0)
    point |= frame_flags | np.where(~(candidates[middle][2] >= CLOUD_LEVEL), CLOUDY, 0)
    bjd, airmass = bjd_and_airmass(mid_exposure([f.header for f in frames]), target.ra, target.dec)
    outside = ((point & BAD_POINT) == 0) & ~target.in_transit(bjd)
    scatter = [point_to_point(c[0][outside]) for c in candidates]
    best = int(np.argmin(scatter))
    rel, rel_err, ensemble, weights = candidates[best]
    for i in np.flatnonzero(point & CLOUDY):
        result.events.append(("warning", "lightcurve_frame_cloudy", {"target": target.name, "frame": frames[i].name,
                                                                      "transparency": round(float(ensemble[i]), 3)}))
    _finish(result, frames, rows, target_row, comparisons, weights, best, scatter,
            (bjd, airmass, rel, rel_err, ensemble, point, outside), bin_minutes, reference)
    result.record["normalised_on"] = "out of transit (ephemeris)" if target.period > 0 else "all good points"
    return result


def _finish(result: LightCurve, frames: list[FrameCatalogue], rows: np.ndarray, target_row: int,
            comparisons: np.ndarray, weights: np.ndarray, best: int, scatter: list[float],
            curve: tuple[np.ndarray, ...], bin_minutes: float, reference: FrameCatalogue) -> LightCurve:
    bjd, airmass, rel, rel_err, ensemble, point, outside = curve
    good = ((point & BAD_POINT) == 0) & np.isfinite(rel)
    outside &= good
    level = np.nanmedian(rel[outside]) if outside.any() else np.nan
    k = best + 1
    result.points = Table({
        "bjd_tdb": bjd, "rel_flux": rel / level, "rel_flux_err": rel_err / level, "flag": point.astype(np.int16),
        "airmass": airmass, "sky": gather(frames, rows, "background")[:, target_row],
        "fwhm": np.array([float(f.header.get("FWHMUSED", np.nan)) for f in frames]),
        "x": gather(frames, rows, "x")[:, target_row], "y": gather(frames, rows, "y")[:, target_row],
        "target_flux": gather(frames, rows, f"flux_{k}")[:, target_row], "ensemble": ensemble,
        "aperture_px": np.array([float(f.header.get(f"APRAD{k}", np.nan)) for f in frames]),
    })
    result.status = "ok"
    result.record = summary_record(result.points, good, bin_minutes)
    result.record.update(
        aperture=k, n_comparisons=int(np.count_nonzero(weights > 0)), aperture_fwhm=float(reference.header.get(f"APRAD{k}", np.nan)) / float(
            reference.header.get("FWHMUSED", np.nan)),
        scatter_by_aperture=[round(s, 6) for s in scatter], reference=reference.name,
        comparisons=[{"x": round(float(reference.xy()[c, 0]), 2), "y": round(float(reference.xy()[c, 1]), 2),
                      "weight": round(float(w / max(weights.sum(), 1e-300)), 4)} for c, w in zip(comparisons, weights)])
    return result


def summary_record(points: Table, good: np.ndarray, bin_minutes: float) -> dict[str, Any]:
    """What summary.json carries of a light curve: counts, scatter, and the curve binned in time."""
    rel, err, bjd = (np.asarray(points[c], float) for c in ("rel_flux", "rel_flux_err", "bjd_tdb"))
    return {"n_points": len(points), "n_good": int(good.sum()),
            "rms": round(point_to_point(rel[good]), 6), "median_err": round(float(np.nanmedian(err[good])), 6)
            if good.any() else None, "binned": binned(bjd[good], rel[good], err[good], bin_minutes)}


def binned(bjd: np.ndarray, rel: np.ndarray, err: np.ndarray, bin_minutes: float) -> dict[str, Any]:
    """Inverse-variance means in bins of ``bin_minutes``: columns bjd_tdb, rel_flux, rel_flux_err, n; and
    their scatter from successive differences (as the points': a transit does not count as noise)."""
    rows = []
    if len(bjd):
        index = np.floor((bjd - bjd.min()) / (bin_minutes / 1440.0)).astype(int)
        for b in np.unique(index):
            inside = index == b
            w = 1.0 / np.maximum(err[inside], 1e-12) ** 2
            rows.append([round(float(np.mean(bjd[inside])), 6), round(float(np.sum(w * rel[inside]) / w.sum()), 6),
                         round(float(1.0 / np.sqrt(w.sum())), 6), int(inside.sum())])
    return {"columns": ["bjd_tdb", "rel_flux", "rel_flux_err", "n"], "rows": rows,
            "rms": round(point_to_point(np.array([r[1] for r in rows])), 6) if len(rows) > 2 else None}
