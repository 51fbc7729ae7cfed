"""The light-curve products of a night: ``lightcurve_<name>.csv`` and ``.png`` beside summary.json, the
``photometry`` section of summary.json and of ``astep-cal report``.

Sized for the satellite link: a CSV row is ~110 bytes (a 1400-frame night ~150 KB) and the PNG a
palette image of ~40 KB, so a target's products stay under 300 KB a night. The columns are fixed-point
text at the precision the data has (BJD to 0.1 s, fluxes to 1 ppm), read by any tool.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from astep_cal.formats.png import as_palette_png
from astep_cal.support.config import Target
from astep_cal.support.storage import atomic_write_bytes

# column, format, meaning (the CSV's header comments and docs/pages/data-products.md say the same)
COLUMNS = (
    ("bjd_tdb", "%.6f", "mid-exposure, BJD_TDB (days)"),
    ("rel_flux", "%.6f", "target / weighted comparison ensemble, normalised to the median of the good points"),
    ("rel_flux_err", "%.6f", "1-sigma error of rel_flux (photon, sky, read, dark, master noise)"),
    ("flag", "%d", "0 good; 1 cloud (ensemble < 50 %), 2 target saturated/off the edge/no sky, "
                   "4 frame not solved (matched by shift; still good), 8 target not found, "
                   "16 cosmic-ray pixels replaced in the target's aperture"),
    ("airmass", "%.4f", "sec z of the target at Concordia"),
    ("sky", "%.1f", "local sky at the target (e-/pixel, annulus median)"),
    ("fwhm", "%.3f", "frame FWHM (px)"),
    ("x", "%.2f", "target centroid x (0-based px)"),
    ("y", "%.2f", "target centroid y (0-based px)"),
    ("target_flux", "%.1f", "target flux in the chosen aperture (e-, sky removed)"),
    ("ensemble", "%.5f", "comparison ensemble flux normalised to 1: the sky's transparency"),
    ("aperture_px", "%.3f", "aperture radius (px)"),
)
SUMMARY_KEYS = ("status", "n_points", "n_good", "rms", "median_err", "aperture", "aperture_fwhm",
                "n_comparisons", "csv", "png", "binned")


def file_stem(name: str) -> str:
    """``lightcurve_<name>``: the target's name with anything but letters, digits, ``.+-`` as ``_``."""
    return "lightcurve_" + re.sub(r"[^A-Za-z0-9.+-]+", "_", name.strip())


def csv_bytes(points: Table, target: Target, record: dict[str, Any]) -> bytes:
    """The light curve as CSV: ``#`` comment lines (target, aperture, columns' meaning), then the table."""
    lines = [f"# astep-cal light curve of {target.name} (RA {target.ra:.5f}, Dec {target.dec:.5f} deg)",
             f"# aperture {record.get('aperture')} ({record.get('aperture_fwhm', 0):.2f} x FWHM), "
             f"{record.get('n_comparisons')} comparison stars (Broeg et al. 2005 weights), rms {record.get('rms')}"]
    lines += [f"# {name}: {meaning}" for name, _, meaning in COLUMNS]
    lines.append(",".join(name for name, _, _ in COLUMNS))
    columns = [np.asarray(points[name]) for name, _, _ in COLUMNS]
    for row in zip(*columns):
        lines.append(",".join("nan" if not np.isfinite(v) else fmt % v for v, (_, fmt, _) in zip(row, COLUMNS)))
    return ("\n".join(lines) + "\n").encode()


def render_png(points: Table, target: Target, record: dict[str, Any], date: str) -> bytes:
    """Relative flux (points, binned curve, flagged points in red) over the ensemble and airmass."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure


    bjd = np.asarray(points["bjd_tdb"])
    offset = float(np.floor(np.nanmin(bjd))) if len(bjd) else 0.0
    from astep_cal.science.lightcurve import BAD_POINT  # astropy.coordinates: only when curves are drawn

    good = (np.asarray(points["flag"]) & BAD_POINT) == 0
    figure = Figure(figsize=(8.0, 5.6), dpi=72)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (2.4, 1), "hspace": 0.08})
    top.errorbar(bjd[good] - offset, points["rel_flux"][good], points["rel_flux_err"][good], fmt=".", ms=3,
                 color="tab:blue", ecolor="0.75", lw=0.6)
    top.plot(bjd[~good] - offset, points["rel_flux"][~good], "x", color="tab:red", ms=4)
    rows = record.get("binned", {}).get("rows", [])
    if rows:
        binned = np.array([r[:3] for r in rows])
        top.plot(binned[:, 0] - offset, binned[:, 1], "o-", color="black", ms=4, lw=1.0)
    if good.any():
        low, high = np.nanpercentile(points["rel_flux"][good], [0.5, 99.5])
        pad = 0.2 * (high - low) + 1e-4
        top.set_ylim(low - pad, high + pad)
    top.set_ylabel("relative flux")
    top.set_title(f"{target.name} \u2014 {date} \u2014 rms {record.get('rms', 0) * 1e3:.2f} ppt per point, "
                  f"{record.get('n_good')} points", fontsize=11)
    bottom.plot(bjd - offset, points["ensemble"], ".", color="tab:green", ms=3, label="transparency")
    bottom.set_ylabel("ensemble", fontsize=9)
    right = bottom.twinx()
    right.plot(bjd - offset, points["airmass"], "-", color="tab:purple", lw=1.0)
    right.set_ylabel("airmass", fontsize=9, color="tab:purple")
    bottom.set_xlabel(f"BJD_TDB - {offset:.0f}")
    for ax in (top, bottom, right):
        ax.tick_params(labelsize=8)
    top.grid(alpha=0.3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=72)
    return as_palette_png(buffer.getvalue())


def write_light_curve(directory: Path, points: Table, target: Target, record: dict[str, Any],
                      date: str) -> dict[str, Any]:
    """Write the CSV and the PNG (atomically; PNG first, as for the summary); their names and sizes."""
    stem = file_stem(target.name)
    csv, png = csv_bytes(points, target, record), render_png(points, target, record, date)
    atomic_write_bytes(directory / f"{stem}.png", png, make_parents=False)
    atomic_write_bytes(directory / f"{stem}.csv", csv, make_parents=False)
    return {"csv": f"{stem}.csv", "png": f"{stem}.png", "csv_kb": round(len(csv) / 1024, 1),
            "png_kb": round(len(png) / 1024, 1)}


def summary_section(photometry: dict[str, Any] | None) -> dict[str, Any]:
    """summary.json's ``photometry``: per target its status, scatter, files and binned light curve."""
    targets = (photometry or {}).get("targets", {})
    return {name: {key: record[key] for key in SUMMARY_KEYS if key in record} for name, record in targets.items()}


def report_lines(section: dict[str, Any]) -> list[str]:
    """The light curves in ``astep-cal report``: one line per target, then its binned curve."""
    if not section:
        return []
    lines = ["", "light curves:"]
    for name, record in section.items():
        if record.get("status") != "ok":
            lines.append(f"  {name}: {record.get('status')}")
            continue
        lines.append(f"  {name}: {record['n_good']}/{record['n_points']} points, rms {record['rms'] * 1e3:.2f} ppt "
                     f"(expected {record['median_err'] * 1e3:.2f}), aperture {record['aperture_fwhm']:.2f} x FWHM, "
                     f"{record['n_comparisons']} comparison stars -> {record.get('csv')}, {record.get('png')}")
        binned = record.get("binned", {})
        values = " ".join(f"{row[1]:.4f}" for row in binned.get("rows", []))
        lines.append(f"    binned ({len(binned.get('rows', []))} bins, rms {_ppt(binned.get('rms'))}): {values}")
    return lines


def _ppt(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.2f} ppt"
