"""The health commands: ``astep-cal trends`` (the season, one row per night), ``astep-cal ack KIND`` (an
alert acknowledged: its baseline restarts from the next night), and the alert lines of ``status``.

Everything here reads the ledger's index only (each night's compact health totals): no night file, no
CAL or CAT file is opened, so ``trends`` and ``status`` cost the same on a 500-night root as on five.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from astep_cal.formats.names import unit_date
from astep_cal.state import alerts
from astep_cal.state.ledger import Ledger
from astep_cal.support.config import ConfigError, Settings
from astep_cal.support.storage import atomic_write_bytes

COLUMNS = (("night", "night", ""), ("throughput", "ZP clear", ".3f"), ("zp_median", "ZP med", ".3f"),
           ("n_zp", "n", "d"), ("sky_mag_arcsec2", "sky", ".2f"), ("fwhm_arcsec", "FWHM", ".2f"),
           ("ellipticity", "ell", ".3f"), ("n_hot", "hot", "d"), ("bias_adu", "bias", ".1f"),
           ("read_noise_adu", "RN", ".2f"), ("dark_e_per_s", "dark", ".3f"), ("ccd_temp_c", "T", ".1f"),
           ("flat_structures", "flat str", "d"),
           ("flat_large_scale_std", "flat std", ".4f"), ("moon_alt_max_deg", "moon", ".0f"))
ALERT_NIGHTS = 7  # status shows the alerts of the last this many nights


def parse_range(text: str | None) -> tuple[str | None, str | None]:
    """``FROM..TO`` (inclusive, either side may be empty) or one ``YYYY-MM-DD``."""
    if not text:
        return None, None
    first, separator, last = text.partition("..")
    bounds = (first.strip() or None, (last if separator else first).strip() or None)
    for bound in bounds:
        try:
            bound is None or dt.date.fromisoformat(bound)
        except ValueError:
            raise ConfigError(f"--nights {text}: {bound!r} is not a YYYY-MM-DD date (use FROM..TO)") from None
    return bounds


def trend_rows(ledger: Ledger, first: str | None = None, last: str | None = None) -> list[dict[str, Any]]:
    """One row per night with health figures, oldest first (from the index rows)."""
    rows = []
    for date in ledger.dates():
        if (first and unit_date(date) < first) or (last and unit_date(date) > last):
            continue
        figures = ledger.totals(date).get("health")
        if figures:
            rows.append({"night": date, **{k: figures.get(k) for k, _, _ in COLUMNS[1:]},
                         "alerts": figures.get("alerts", [])})
    return rows


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def render_trends(rows: list[dict[str, Any]]) -> str:
    table = [[title for _, title, _ in COLUMNS] + ["alerts"]]
    table += [[_cell(row.get(k), spec) for k, _, spec in COLUMNS] + [",".join(row["alerts"]) or "-"] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def render_png(rows: list[dict[str, Any]]) -> bytes:
    """The season: throughput, hot pixels, FWHM and ellipticity per night, alert nights marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("throughput", "clear-sky ZP (mag)"), ("n_hot", "hot pixels"), ("fwhm_arcsec", "FWHM (\")"),
              ("ellipticity", "ellipticity"), ("sky_mag_arcsec2", "sky (mag/\"²)"))
    nights = [dt.date.fromisoformat(unit_date(r["night"])) for r in rows]
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 9), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        points = [(n, r[key]) for n, r in zip(nights, rows) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), "o-", ms=3)
        for n, r in zip(nights, rows):
            if r["alerts"]:
                ax.axvline(n, color="tab:red", alpha=0.3)
        ax.set_ylabel(label, fontsize=8)
    axes[0].set_title("astep-cal: instrument health over the season (red: nights with alerts)", fontsize=9)
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def alert_lines(ledger: Ledger, state_dir: Path, nights: int = ALERT_NIGHTS) -> list[str]:
    """The alerts of the last ``nights`` nights not acknowledged since, one line each."""
    acks = alerts.read_acks(state_dir)
    lines = []
    for date in ledger.dates()[-nights:]:
        figures = ledger.totals(date).get("health") or {}
        for alert in figures.get("alert_details", []):
            if date > acks.get(alert["kind"], {}).get("after_night", ""):
                lines.append(alerts.alert_line(date, alert))
    return lines


def cmd_trends(args: argparse.Namespace, settings_of: Callable[..., Settings], root_of: Callable[..., Path]) -> int:
    settings = settings_of(args)
    root = root_of(args, settings)
    path = settings.ledger_path(root)
    if not path.exists():
        print(f"no ledger at {path}: nothing processed yet")
        return 0
    rows = trend_rows(Ledger.load(path), *parse_range(args.nights))
    if args.png:
        atomic_write_bytes(Path(args.png), render_png(rows))
    print(json.dumps({"root": str(root), "nights": rows}, indent=1) if args.json else render_trends(rows))
    return 0


def cmd_ack(args: argparse.Namespace, settings_of: Callable[..., Settings], root_of: Callable[..., Path]) -> int:
    from astep_cal.support.logs import configure, get_logger

    settings = settings_of(args)
    configure(settings.logging.format, settings.logging.level)
    root = root_of(args, settings)
    path = settings.ledger_path(root)
    dates = Ledger.load(path).dates() if path.exists() else []
    after = dates[-1] if dates else ""
    try:
        record = alerts.acknowledge(path.parent, args.kind, after)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    get_logger().info("alert_acknowledged", kind=args.kind, after_night=after)
    print(f"{args.kind} acknowledged at {record['at']}: its baseline restarts after {after or 'the first night'}")
    return 0


def add_commands(commands: Any, settings_of: Callable[..., Settings], root_of: Callable[..., Path]) -> None:
    """The ``trends`` and ``ack`` sub-commands of ``astep-cal``."""
    trends = commands.add_parser("trends", help="the instrument's health, one row per night (from the ledger)")
    trends.add_argument("root", nargs="?", help="data root (default: data_root from the config)")
    trends.add_argument("--nights", metavar="FROM..TO", help="only these nights (inclusive; FROM.. or ..TO)")
    trends.add_argument("--json", action="store_true", help="machine-readable output")
    trends.add_argument("--png", metavar="FILE", help="also draw the season into this PNG file")
    trends.add_argument("--config")
    trends.add_argument("--ledger")
    trends.set_defaults(func=lambda a: cmd_trends(a, settings_of, root_of))
    ack = commands.add_parser("ack", help="acknowledge a health alert: its baseline restarts from the next night")
    ack.add_argument("kind", choices=alerts.KINDS)
    ack.add_argument("--root", help="data root (default: data_root from the config)")
    ack.add_argument("--config")
    ack.add_argument("--ledger")
    ack.set_defaults(func=lambda a: cmd_ack(a, settings_of, root_of))
