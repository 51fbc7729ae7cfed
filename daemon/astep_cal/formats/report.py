"""`astep-cal report`: a night's summary document as text for a terminal (or a satellite e-mail)."""

from __future__ import annotations

from typing import Any

from astep_cal.formats.depth_ratio_products import report_lines as depth_ratio_lines
from astep_cal.formats.lightcurve_products import report_lines
from astep_cal.formats.summary import frame_rows
from astep_cal.formats.summary_png import fmt

_TABLE = (("time", "time", 8), ("frame", "frame", 0), ("sky_e", "sky e-", 7), ("sky_noise_e", "noise", 6),
          ("n_stars", "stars", 5), ("fwhm_arcsec", "FWHM\"", 6), ("ellipticity", "ellip", 5),
          ("n_cosmic", "cosmic", 6), ("masked_fraction", "masked", 7), ("astrometry", "wcs", 7),
          ("wcs_residual_arcsec", "rms\"", 5))


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "time":
        return str(value)[11:19] or str(value)
    if key == "masked_fraction":
        return f"{100 * value:.2f}%"
    if key in ("sky_e",):
        return f"{value:.0f}"
    if key in ("sky_noise_e",):
        return f"{value:.1f}"
    if key in ("fwhm_arcsec", "ellipticity", "wcs_residual_arcsec"):
        return f"{value:.2f}"
    return str(value)


def _detector_line(detector: dict[str, Any]) -> str:
    """The night's measured detector and the sources of the noise model its frames were calibrated with."""
    used = detector.get("used", {})
    sources = "; ".join(f"{q} from " + ", ".join(f"{s} {n}" for s, n in sorted(c.items()))
                        for q, c in used.items() if c) or "no frame calibrated"
    return (f"detector: read noise {fmt(detector.get('read_noise_e'), '.2f')} e- "
            f"({fmt(detector.get('read_noise_adu'), '.2f')} ADU), gain {fmt(detector.get('gain'), '.3f')} e-/ADU, "
            f"dark {fmt(detector.get('dark_current_e_s'), '.3f')} e-/s | {sources}"
            + (f" | {len(detector['mismatches'])} mismatch(es)" if detector.get("mismatches") else ""))


def render_report(document: dict[str, Any]) -> str:
    """The summary as text for a terminal: counts, masters, medians, one line per frame, failures."""
    counts, medians, masters = document["counts"], document["medians"], document["masters"]
    flat = masters["flat"]
    flat_text = {"own": f"own ({flat.get('n_inputs')} sky flats)", "borrowed": f"from {flat.get('night')}",
                 "none": "none"}[flat["origin"]]
    darks = ", ".join(f"{t}s ({d['n_inputs']})" for t, d in masters["darks"].items()) or "none"
    bias = f"{masters['bias']['n_inputs']} frames" if masters.get("bias") else "none"
    lines = [
        f"Night {document['night']}: {document['state']}",
        f"frames {counts['frames']} | calibrated {counts['calibrated']} | solved {counts['solved']} | "
        f"failed {counts['failed']} | blocked {counts['blocked']} | retries pending {counts['retries_pending']}"
        f" | problems {counts['problems']}",
        f"masters: darks {darks}; flat {flat_text}; bias {bias}; bad pixels {fmt(masters.get('bad_pixels'), 'd')}",
        _detector_line(masters.get("detector") or {}),
        f"medians: sky {fmt(medians['sky_e'], '.0f')} e- | noise {fmt(medians['sky_noise_e'], '.1f')} e- | "
        f"stars {fmt(medians['n_stars'], '.0f')} | FWHM {fmt(medians['fwhm_arcsec'], '.2f')}\" | "
        f"ellipticity {fmt(medians['ellipticity'], '.2f')} | WCS rms {fmt(medians['wcs_residual_arcsec'], '.2f')}\"",
        "",
    ]
    cells = [[_cell(key, frame.get(key)) for key, _, _ in _TABLE] for frame in frame_rows(document)]
    widths = [max([len(title), width] + [len(row[i]) for row in cells]) for i, (_, title, width) in enumerate(_TABLE)]
    lines.append("  ".join(title.ljust(w) for (_, title, _), w in zip(_TABLE, widths)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    if document["failures"]:
        lines += ["", "failures:"]
        for failure in document["failures"]:
            retry = f", {failure['retries_pending']} to be retried" if failure["retries_pending"] else ""
            names = ", ".join(failure["frames"][:3]) + (", ..." if failure["n_frames"] > 3 else "")
            lines.append(f"  {failure['stage']} {failure['status']}: {failure['error']}")
            lines.append(f"    {failure['n_frames']} frame(s){retry}: {names}")
    if document["problems"]:
        lines += ["", "unusable input files:"]
        lines += [f"  {p['path']}: {p['event']} ({p['reason']})" for p in document["problems"]]
    lines += report_lines(document.get("photometry", {}))
    lines += depth_ratio_lines(document.get("depth_ratios", {}))
    lines += health_lines(document["night"], document.get("health"))
    return "\n".join(lines)


def health_lines(night: str, health: dict[str, Any] | None) -> list[str]:
    """The night's health figures and its alerts, one line each (docs/pages/health.md)."""
    from astep_cal.state.alerts import alert_line

    if not health or "status" in health:
        return []
    flat = health.get("flat_change") or {}
    lines = ["", f"health: clear-sky ZP {fmt(health.get('throughput'), '.3f')} ({health.get('n_zp')} frames) | "
             f"sky {fmt(health.get('sky_mag_arcsec2'), '.2f')} mag/arcsec2 | hot pixels {fmt(health.get('n_hot'), 'd')}"
             f" | flat vs {flat.get('against', '-')}: {fmt(flat.get('n_structures'), 'd')} structures"]
    return lines + [alert_line(night, alert) for alert in health.get("alerts", [])]
