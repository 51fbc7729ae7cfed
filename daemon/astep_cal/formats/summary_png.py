"""The nightly summary's picture (``summary.png``): four metrics against time, failures marked, the master
flat, and the ratio of the night's flat to the previous night's own (ice or dust "donuts" show as rings:
docs/pages/health.md) — a palette PNG of a few tens of KB for the satellite link."""

from __future__ import annotations

import datetime as dt
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from astep_cal.formats.png import as_palette_png

FLAT_PREVIEW_PIXELS = 160  # the master flat is block-averaged to at most this many pixels a side


def flat_preview(root: Path, masters: dict[str, Any]) -> np.ndarray | None:
    """The master flat block-averaged to at most FLAT_PREVIEW_PIXELS a side; None if there is none."""
    from astropy.io import fits

    flat = masters.get("flat")
    if not flat or not flat.get("file"):
        return None
    try:
        data = fits.getdata(root / flat["file"]).astype(np.float32)
    except (OSError, ValueError):
        return None
    factor = max(1, int(np.ceil(max(data.shape) / FLAT_PREVIEW_PIXELS)))
    rows, cols = data.shape[0] // factor * factor, data.shape[1] // factor * factor
    return data[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))


def _times(frames: list[dict[str, Any]]) -> list[Any]:
    """Frame times as datetimes (naive UTC) for the x axis; the frame index when a time is unknown."""
    times = []
    for frame in frames:
        try:
            times.append(dt.datetime.fromisoformat(frame["time"]).replace(tzinfo=None))
        except (TypeError, ValueError):
            return list(range(len(frames)))
    return times


_PANELS = (("sky_e", "sky (e-)"), ("fwhm_arcsec", "FWHM (\u2033)"), ("n_stars", "stars"),
           ("wcs_residual_arcsec", "WCS rms (\u2033)"))


def render(document: dict[str, Any], frames: list[dict[str, Any]], flat: np.ndarray | None,
           ratio: tuple[np.ndarray, str] | None = None) -> bytes:
    """The night at a glance, as a small palette PNG (~40 KB): four metrics against time, the flat and
    (``ratio``: the thumbnail and the night it is against) the flat's ratio to the previous night's."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in the worker thread

    times = _times(frames)
    figure = Figure(figsize=(9.6, 6.4), dpi=72)
    grid = figure.add_gridspec(len(_PANELS), 2, width_ratios=(2.3, 1), hspace=0.15, wspace=0.25,
                               left=0.08, right=0.97, top=0.9, bottom=0.08)
    axes = [figure.add_subplot(grid[0, 0])]
    axes += [figure.add_subplot(grid[i, 0], sharex=axes[0]) for i in range(1, len(_PANELS))]
    for ax, (key, label) in zip(axes, _PANELS):
        _plot_metric(ax, times, frames, key, label)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    if times and isinstance(times[0], dt.datetime):
        import matplotlib.dates as mdates

        pad = max((max(times) - min(times)) * 0.03, dt.timedelta(minutes=1))
        axes[-1].set_xlim(min(times) - pad, max(times) + pad)  # also when only failures are drawn
        locator = mdates.AutoDateLocator(maxticks=8)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axes[-1].set_xlabel("UTC")
    else:
        axes[-1].set_xlabel("frame")
    _draw_flat(figure.add_subplot(grid[:2, 1]), flat, document["masters"]["flat"])
    _draw_ratio(figure.add_subplot(grid[2, 1]), ratio)
    _draw_counts(figure.add_subplot(grid[3, 1]), document, frames)
    counts = document["counts"]
    figure.suptitle(f"ASTEP {document['night']} \u2014 {document['state']} \u2014 {counts['frames']} frames, "
                    f"{counts['calibrated']} calibrated, {counts['solved']} solved, {counts['failed']} failed",
                    fontsize=12)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # tick-locator notes on odd time spans are not news
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=72)
    return as_palette_png(buffer.getvalue())


def _plot_metric(ax: Any, times: list[Any], frames: list[dict[str, Any]], key: str, label: str) -> None:
    good = [(t, f[key]) for t, f in zip(times, frames) if isinstance(f.get(key), (int, float))]
    if good:
        ax.plot([t for t, _ in good], [v for _, v in good], ".-", color="tab:blue", ms=4, lw=0.8)
    for t, frame in zip(times, frames):  # failures: a red line across the panel, blocked: orange
        if "failed" in (frame["calibrate"], frame["astrometry"]):
            ax.axvline(t, color="tab:red", lw=1.0, alpha=0.7)
        elif frame["calibrate"] == "blocked":
            ax.axvline(t, color="tab:orange", lw=1.0, alpha=0.7)
    if good:  # from zero: a 1 % wobble must not look like a bad night
        ax.set_ylim(0, 1.15 * max(max(v for _, v in good), 1e-3))
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_ylabel(label, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def _draw_flat(ax: Any, flat: np.ndarray | None, origin: dict[str, Any]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if flat is None:
        ax.text(0.5, 0.5, "no master flat", transform=ax.transAxes, ha="center", va="center")
        return
    low, high = np.percentile(flat, [1, 99])
    image = ax.imshow(flat, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    where = "own" if origin.get("origin") == "own" else f"from {origin.get('night')}"
    ax.set_title(f"master flat ({where})", fontsize=9)


def _draw_ratio(ax: Any, ratio: tuple[np.ndarray, str] | None) -> None:
    """The flat ratio, 1 white, deficits red: a new ring of ice or dust stands out at a glance."""
    ax.set_xticks([])
    ax.set_yticks([])
    if ratio is None:
        ax.text(0.5, 0.5, "no flat ratio", transform=ax.transAxes, ha="center", va="center", fontsize=8)
        return
    data, against = ratio
    finite = data[np.isfinite(data)]
    span = max(0.01, float(np.percentile(np.abs(finite - 1.0), 99.5))) if finite.size else 0.01
    image = ax.imshow(data, cmap="RdBu", origin="lower", vmin=1 - span, vmax=1 + span, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    ax.set_title(f"flat / flat of {against}", fontsize=8)


def _draw_counts(ax: Any, document: dict[str, Any], frames: list[dict[str, Any]]) -> None:
    ax.axis("off")
    medians, counts = document["medians"], document["counts"]
    lines = [f"median FWHM {fmt(medians['fwhm_arcsec'], '.2f')}\u2033",
             f"median sky {fmt(medians['sky_e'], '.0f')} e- (\u03c3 {fmt(medians['sky_noise_e'], '.1f')})",
             f"median stars {fmt(medians['n_stars'], '.0f')}",
             f"median WCS rms {fmt(medians['wcs_residual_arcsec'], '.2f')}\u2033",
             f"blocked {counts['blocked']}, retries {counts['retries_pending']}, problems {counts['problems']}"]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", fontsize=9, family="monospace")
    if any(f["calibrate"] == "failed" or f["astrometry"] == "failed" for f in frames):
        ax.text(0.0, 0.0, "red lines: failed frames", va="bottom", fontsize=8, color="tab:red")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
