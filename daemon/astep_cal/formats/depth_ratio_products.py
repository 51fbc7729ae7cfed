"""The two-colour product of an ASTEP+ night: ``depth_ratio_<name>.json`` beside each camera's light curve.

When the blue (``CAMB``) and the red (``CAMR``) camera both made a target's light curve
(``lightcurve_<name>.csv``, :mod:`lightcurve_products`), the ratio of the transit depths blue/red
(:mod:`science.depth_ratio`) is written, the same file in both cameras' ``_CAL`` directories (~1 KB:
it goes north by satellite), recorded in the night's ``photometry`` record and shown by ``summary.json``
and ``astep-cal report``. docs/pages/data-products.md describes the fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from astep_cal.formats.lightcurve_products import file_stem
from astep_cal.support.storage import atomic_write_bytes

FORMAT = "astep-cal depth ratio 1"


def ratio_file_name(target_name: str) -> str:
    """``depth_ratio_<name>.json`` (the name spelt as in the light curve's file)."""
    return "depth_ratio_" + file_stem(target_name).removeprefix("lightcurve_") + ".json"


def read_light_curve(path: Path, bad_flags: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bjd_tdb, rel_flux, rel_flux_err) of a light-curve CSV's good points (flag without ``bad_flags``)."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    table = np.genfromtxt(lines, delimiter=",", names=True)
    table = np.atleast_1d(table)
    good = ((table["flag"].astype(int) & bad_flags) == 0) & np.isfinite(table["rel_flux"]) \
        & np.isfinite(table["rel_flux_err"]) & (table["rel_flux_err"] > 0)
    return table["bjd_tdb"][good], table["rel_flux"][good], table["rel_flux_err"][good]


def _depth(depth: Any) -> dict[str, Any] | None:
    if depth is None:
        return None
    return {"depth": round(depth.depth, 6), "error": round(depth.error, 6), "n_in": depth.n_in,
            "n_out": depth.n_out, "rms": round(depth.rms, 6)}


def ratio_record(result: Any, night: str, target: str, curves: dict[str, str]) -> dict[str, Any]:
    """The product's content (and the ledger's record) from a :class:`science.depth_ratio.DepthRatio`;
    ``curves``: colour -> the light curve's path relative to the night directory."""
    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(float(value), digits)

    return {"format": FORMAT, "night": night, "target": target, "status": result.status, "method": result.method,
            "ratio": rounded(result.ratio, 4), "error": rounded(result.error, 4),
            "mid_bjd": rounded(result.mid_bjd, 5), "duration_h": rounded(result.duration_h, 3),
            "blue": {"light_curve": curves["blue"], **(_depth(result.blue) or {})},
            "red": {"light_curve": curves["red"], **(_depth(result.red) or {})}}


def write_ratio(directories: list[Path], record: dict[str, Any]) -> str:
    """The product, atomically, into each camera's ``_CAL`` directory; its file name."""
    name = ratio_file_name(record["target"])
    text = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
    for directory in directories:
        atomic_write_bytes(directory / name, text, make_parents=False)
    return name


def report_lines(ratios: dict[str, Any]) -> list[str]:
    """``astep-cal report``: one line per target observed in both colours."""
    lines = []
    for name, record in ratios.items():
        blue, red = record.get("blue", {}), record.get("red", {})
        figure = "-" if record.get("ratio") is None else f"{record['ratio']:.3f} +- {record['error']:.3f}"
        depths = (f"blue {_percent(blue)}, red {_percent(red)}" if "depth" in blue and "depth" in red else "")
        lines.append(f"  {name}: depth ratio blue/red {figure} ({record.get('status')}; {depths}; "
                     f"{record.get('method')}) -> {record.get('file', ratio_file_name(name))}")
    return (["", "two colours:"] + lines) if lines else []


def _percent(depth: dict[str, Any]) -> str:
    return f"{100 * depth['depth']:.3f} +- {100 * depth['error']:.3f} %"
