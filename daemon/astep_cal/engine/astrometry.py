"""Plate solving with Astrometry.net ``solve-field``, and merging the solution into a CAL file.

The process boundary is deliberate: ``solve-field`` is a separate program that can hang, crash, or be
missing. :func:`solve` therefore never raises; it returns a :class:`SolveResult` that says what
happened, and the pipeline records it in the ledger. Every run

* gets an argument list (never a shell string: file names come from the data and are not trusted),
* works in its own temporary directory outside the data root (``solve-field`` litters its working
  directory with ``.axy``, ``.corr``, ``.match`` ... files),
* runs in its own process group, so the wall-clock timeout and a service shutdown can end
  ``solve-field`` *and* the helpers it starts (``astrometry-engine``, ``image2xy``),
* is limited by ``--cpulimit`` (the engine's own budget) and by ``timeout_s`` (ours, in case the
  engine ignores its budget or an image converter hangs).

The WCS (TAN with SIP distortion terms, ``--tweak-order 2``) is merged into the CAL file's primary
header with an atomic rewrite; the previous WCS keys, if any, are removed first so a re-solve never
leaves a mix of two solutions.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from astep_cal.engine.solve_budget import SolveHint, choose_hint, hint_arguments
from astep_cal.engine.solve_process import output_tail, run_solve_field
from astep_cal.formats.header_profile import DEFAULT_PROFILE, HeaderProfile, read_frame_header
from astep_cal.formats.products import SOURCES_SINGLE, read_sources
from astep_cal.formats.raw_headers import image_hdu
from astep_cal.formats.wcs_cards import clean_wcs_header, without_wcs
from astep_cal.support.config import AstrometrySettings


@dataclass
class SolveResult:
    """What one ``solve-field`` run gave. ``error`` is a one-line reason when not solved."""

    solved: bool
    wcs_header: fits.Header | None = None
    error: str | None = None
    duration_s: float = 0.0
    hinted: bool = False
    command: list[str] = field(default_factory=list)
    n_matched: int = 0  # stars matched between the image and the index (from the .corr file)
    residual_arcsec: float | None = None  # rms distance of those matches under the solved WCS
    from_list: bool = False  # solved from the CAL file's SOURCES table, not from the image
    from_hint: bool = False  # solved around a solution earlier in the night (solve_budget), not the pointing
    cut_off: bool = False  # stopped by the end of the night's wait for its solves (solve_budget), not failed


# --- pointing hints -----------------------------------------------------------------------------

def pointing_from_header(header: fits.Header, profile: HeaderProfile = DEFAULT_PROFILE) -> tuple[float, float] | None:
    """Telescope pointing (RA, Dec in degrees) through the header profile (``formats/header_profile.py``):
    ``RA``/``DEC``, ``OBJCTRA``/``OBJCTDEC``, else ASTEP's ``SCIDCRD``, and what the configuration adds.

    Returns None when none is present and sane, in which case the solve is blind.
    """
    return read_frame_header(header, profile).pointing


# --- the command --------------------------------------------------------------------------------

EXTRACTION_WIDTH_PX = 1024  # automatic downsampling brings the frame to about this width


def downsample_factor(settings: AstrometrySettings, width: int | None) -> int:
    """solve-field's ``--downsample``: the configured factor, or (0, automatic) the one that brings the
    frame to about ``EXTRACTION_WIDTH_PX`` columns: 4 for ASTEP's 4096² (2.5 s a solve instead of 3.3 s
    at 2, WCS 0.05 px from the truth: ``make bench``), 1 for a 1024² test frame. Wider than that is
    only slower: a 1° field at 1024 px still holds hundreds of stars for the source extraction."""
    if settings.downsample:
        return settings.downsample
    return max(1, round(width / EXTRACTION_WIDTH_PX)) if width else 2


def build_command(image: Path, work_dir: Path, settings: AstrometrySettings,
                  pointing: tuple[float, float] | None, width: int | None = None,
                  xylist_shape: tuple[int, int] | None = None, hint: SolveHint | None = None) -> list[str]:
    """The ``solve-field`` argument list: scale limits, budgets, and every output but the WCS and
    the match list switched off or sent to ``work_dir``.

    ``xylist_shape`` (rows, columns): ``image`` is an xylist (:func:`write_xylist`) of a frame of that
    size. solve-field then skips its own source extraction (most of a fast solve: Astrometry.net
    issue 169) and, with ``--uniformize 0``, the Python helper that would spread the list over a grid
    of boxes (0.5 s of the 0.6 s a listed 4096² solve took; the list is the quality step's stars, a
    few hundred at most, and the solve is as exact without it: 0.002 px against the truth).
    For an image, ``--fits-image`` and ``--no-remove-lines`` each save a Python start-up (~0.4 s) per
    frame: the input is always our FITS CAL file, and the lines of false sources that ``removelines``
    hunts (bad columns) are masked and filled from their neighbours before the solve.
    ``hint``: a solution earlier in the night (``solve_budget``) replaces the scale limits and the pointing
    by its own, tight ones."""
    if xylist_shape is not None:
        source = ["--width", str(xylist_shape[1]), "--height", str(xylist_shape[0]),
                  "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX", "--uniformize", "0"]
    else:
        source = ["--fits-image", "--downsample", str(downsample_factor(settings, width)), "--extension", "0"]
    command = [
        settings.solve_field, str(image),
        "--dir", str(work_dir), "--out", "solution", *source, "--no-remove-lines",
        *(hint_arguments(hint, settings) if hint is not None else
          ["--scale-units", "degwidth", "--scale-low", f"{settings.scale_low_deg:g}",
           "--scale-high", f"{settings.scale_high_deg:g}"]),
        "--cpulimit", str(settings.cpulimit_s),
        "--tweak-order", "2", "--crpix-center",
        "--no-plots", "--overwrite",
        "--new-fits", "none", "--index-xyls", "none", "--rdls", "none", "--match", "none",
        "--solved", str(work_dir / "solution.solved"),
        "--wcs", str(work_dir / "solution.wcs"),
        "--corr", str(work_dir / "solution.corr"),
        "--temp-dir", str(work_dir),
    ]
    if settings.config_file:
        command += ["--config", settings.config_file]
    if pointing is not None and hint is None:
        command += ["--ra", f"{pointing[0]:.6f}", "--dec", f"{pointing[1]:.6f}",
                    "--radius", f"{settings.search_radius_deg:g}"]
    return command


# A list of fewer single stars (clouds, small or sparse frames) is not handed to solve-field: it extracts
# from the image instead (solve-field itself needs a dozen; below this the image holds few more). The
# list's positions are windowed centroids about each segment's brightest pixel, and blends are left out
# (``quality.source_list``): with segment centroids, the 512² transit night's blends (two stars in a
# segment, centroid between them) gave list solves 0.28 px off against the truth (image solves 0.01 px).
# What the single-star test misses is caught by the solve's own residual (``MAX_LIST_RESIDUAL_PX``).
MIN_LISTED_SOURCES = 30


def write_xylist(table: np.ndarray, path: Path) -> None:
    """An xylist for solve-field: the X, Y (1-based) and FLUX columns of a SOURCES table."""
    columns = [fits.Column(name, "D" if name != "FLUX" else "E", array=np.asarray(table[name]))
               for name in ("X", "Y", "FLUX")]
    fits.BinTableHDU.from_columns(columns).writeto(path)


def listed_sources(image: Path) -> np.ndarray | None:
    """The CAL file's SOURCES table when it is long enough to solve from, else None (also when the
    file has none or cannot be read: the image solve then reports what is wrong)."""
    try:
        table = read_sources(image)
    except (OSError, ValueError, TypeError):
        return None
    if table is not None and SOURCES_SINGLE in (table.dtype.names or ()):
        table = table[table[SOURCES_SINGLE] > 0]  # blends and sources at the edge out (older files: no column)
    if table is None or len(table) < MIN_LISTED_SOURCES:
        return None
    return table


def _match_statistics(corr_path: Path) -> tuple[int, float | None]:
    """Number of image/index star matches and their rms offset in arcsec under the solved WCS."""
    if not corr_path.is_file():
        return 0, None
    try:
        with fits.open(corr_path) as hdul:
            table = hdul[1].data
            if table is None or len(table) == 0:
                return 0, None
            ra_field, dec_field = table["field_ra"], table["field_dec"]
            ra_index, dec_index = table["index_ra"], table["index_dec"]
    except (OSError, KeyError, IndexError):
        return 0, None
    dec_mid = np.radians((dec_field + dec_index) / 2)
    d_ra = (ra_field - ra_index + 180) % 360 - 180
    offsets = np.hypot(d_ra * np.cos(dec_mid), dec_field - dec_index) * 3600
    return int(len(offsets)), float(np.sqrt(np.mean(offsets ** 2)))


def has_wcs(header: fits.Header) -> bool:
    return any(key in header for key in ("CTYPE1", "CRVAL1", "CD1_1"))


def _tile_compressed(image: Path) -> bool:
    """Whether the image is in a tile-compressed extension (a compressed CAL file). An unreadable file
    is left to solve-field, whose failure is then reported like any other."""
    try:
        with fits.open(image, memmap=False, lazy_load_hdus=True) as hdul:
            return image_hdu(hdul) != 0
    except (OSError, ValueError):
        return False


def _copy_without_wcs(image: Path, work_dir: Path) -> Path:
    """The image with its old solution removed, as a plain FITS file in the work directory.

    ``solve-field`` uses a WCS it finds in the input, so a re-solve (after a crash between the merge
    and the ledger, or a forced rerun) would give a slightly different answer than the first solve of
    the same pixels. Starting from the bare image keeps the result identical. Rare: first solves skip it,
    except for a tile-compressed CAL file, which solve-field (``--extension 0``) is always given this way.
    """
    with fits.open(image, memmap=False) as hdul:
        index = image_hdu(hdul)
        header = fits.PrimaryHDU(hdul[index].data, hdul[index].header).header
        without_wcs(header)
        target = work_dir / "input.fits"
        fits.PrimaryHDU(hdul[index].data, header).writeto(target)
    return target


def solve(image: Path, header: fits.Header, settings: AstrometrySettings,
          tmp_root: Path | None = None, profile: HeaderProfile = DEFAULT_PROFILE,
          hints: tuple[SolveHint, ...] = ()) -> SolveResult:
    """Plate-solve ``image``. Never raises: every failure is a SolveResult with ``error`` set.

    From the CAL file's ``SOURCES`` list when it holds enough single stars (0.1 s instead of ~2 s: no
    extraction); then from the image when the list's solution has its matches further than
    ``MAX_LIST_RESIDUAL_PX`` from the index stars (a list spoiled by blends the single-star test
    missed), keeping the list's solution if the image gives none. A list solve that fails is the
    answer (as an image solve's failure would be): a second run after a timeout or a shutdown's kill
    would only be killed again.

    With a solution of this pointing earlier in the night (``hints``, ``solve_budget.choose_hint``) the
    solve is first tried around it (tight position and scale), then, if that fails, as without it. All of it
    stops at ``settings.frame_budget_s`` of wall time (each solve-field run's CPU limit and timeout cut to
    what is left).
    """
    started = time.monotonic()
    pointing = pointing_from_header(header, profile) if settings.use_header_pointing else None
    executable = shutil.which(settings.solve_field)
    if executable is None:
        return SolveResult(False, error=f"solve-field not found: {settings.solve_field!r}",
                           hinted=pointing is not None)
    hint = choose_hint(hints, pointing, settings)
    result = None
    for tight in ([hint] if hint is not None else []) + [None]:
        left = started + settings.frame_budget_s - time.monotonic()
        if result is not None and left < 1.0:  # no time for the second attempt
            break
        budget = replace(settings, timeout_s=min(settings.timeout_s, left),
                         cpulimit_s=max(1, min(settings.cpulimit_s, int(left))))
        result = replace(_solve_pointed(image, header, budget, pointing, tight, executable, tmp_root),
                         from_hint=tight is not None)
        if result.solved:
            break
    if result is None:
        result = SolveResult(False, error=f"the frame's solve budget ({settings.frame_budget_s:g} s) is spent",
                             hinted=pointing is not None)
    return replace(result, duration_s=time.monotonic() - started)


def _solve_pointed(image: Path, header: fits.Header, settings: AstrometrySettings, pointing: tuple[float, float] | None,
                   hint: SolveHint | None, executable: str, tmp_root: Path | None) -> SolveResult:
    """The list solve, then (see :func:`solve`) the image solve, with one pointing or hint."""
    width, height = header.get("NAXIS1"), header.get("NAXIS2")
    table = listed_sources(image) if isinstance(width, int) and isinstance(height, int) else None
    listed = None
    if table is not None:
        listed = _solve_in(tmp_root, lambda work_dir: _list_command(table, work_dir, settings, pointing,
                                                                    (height, width), hint), executable, settings)
        if not listed.solved or not _loose(listed):
            return replace(listed, from_list=True)
    from_image = _solve_in(tmp_root, lambda work_dir: _image_command(image, header, work_dir, settings, pointing, hint),
                           executable, settings)
    best = listed if listed is not None and listed.solved and not from_image.solved else from_image
    return replace(best, from_list=best is listed)


MAX_LIST_RESIDUAL_PX = 0.1  # rms of a list solve's matches; a good one's is ~0.005 px, an image solve's ~0.02


def _loose(result: SolveResult) -> bool:
    """Whether a solve's matches are further from the index stars than a good list solve's."""
    if result.residual_arcsec is None or result.wcs_header is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        scale_arcsec = float(np.mean(proj_plane_pixel_scales(WCS(result.wcs_header).celestial))) * 3600
    return result.residual_arcsec > MAX_LIST_RESIDUAL_PX * scale_arcsec


def _list_command(table: np.ndarray, work_dir: Path, settings: AstrometrySettings,
                  pointing: tuple[float, float] | None, shape: tuple[int, int], hint: SolveHint | None) -> list[str]:
    write_xylist(table, work_dir / "sources.xyls")
    return build_command(work_dir / "sources.xyls", work_dir, settings, pointing, xylist_shape=shape, hint=hint)


def _image_command(image: Path, header: fits.Header, work_dir: Path, settings: AstrometrySettings,
                   pointing: tuple[float, float] | None, hint: SolveHint | None) -> list[str]:
    if has_wcs(header) or _tile_compressed(image):
        image = _copy_without_wcs(image, work_dir)
    width = header.get("NAXIS1")
    return build_command(image, work_dir, settings, pointing, width if isinstance(width, int) else None, hint=hint)


def _solve_in(tmp_root: Path | None, make_command: Any, executable: str, settings: AstrometrySettings) -> SolveResult:
    """One ``solve-field`` run in its own temporary directory (``make_command(work_dir)`` prepares it)."""
    with tempfile.TemporaryDirectory(prefix="astep-solve-", dir=tmp_root) as work_text:
        work_dir = Path(work_text)
        command = make_command(work_dir)
        command[0] = executable
        return _run_solve(command, work_dir, settings)


def _run_solve(command: list[str], work_dir: Path, settings: AstrometrySettings) -> SolveResult:
    hinted = "--ra" in command

    def result(**fields: Any) -> SolveResult:
        return SolveResult(hinted=hinted, command=command, **fields)

    try:
        code, output = run_solve_field(command, settings.timeout_s, work_dir)
    except OSError as error:
        return result(solved=False, error=f"solve-field could not start: {error}")
    if code is None:
        return result(solved=False, error=f"solve-field timed out after {settings.timeout_s:g} s")
    wcs_path = work_dir / "solution.wcs"
    if code != 0:
        return result(solved=False, error=f"solve-field exited with {code}: {output_tail(output)}")
    if not (work_dir / "solution.solved").is_file() or not wcs_path.is_file():
        reason = "no index file" if "no index files" in output.lower() else "field not solved"
        scale = "around an earlier solution" if "arcsecperpix" in command else \
            f"scale {settings.scale_low_deg:g}-{settings.scale_high_deg:g} deg, {'hinted' if hinted else 'blind'}"
        return result(solved=False, error=f"{reason} ({scale})")
    try:
        wcs_header = clean_wcs_header(fits.getheader(wcs_path))
    except (OSError, ValueError) as error:
        return result(solved=False, error=f"unreadable solution: {error}")
    n_matched, residual = _match_statistics(work_dir / "solution.corr")
    return result(solved=True, wcs_header=wcs_header, n_matched=n_matched, residual_arcsec=residual)


# --- accuracy -----------------------------------------------------------------------------------

def wcs_error_px(solved: WCS, truth: WCS, shape: tuple[int, int], grid: int = 16) -> float:
    """Median distance (pixels) between where ``truth`` and ``solved`` put the same sky points.

    Points are a ``grid`` × ``grid`` lattice over the frame; each is sent to the sky with the true
    WCS and back to pixels with the solved one, so distortion (SIP) errors count as much as
    pointing errors.
    """
    rows, columns = shape
    y, x = np.meshgrid(np.linspace(0, rows - 1, grid), np.linspace(0, columns - 1, grid), indexing="ij")
    ra, dec = truth.all_pix2world(x.ravel(), y.ravel(), 0)
    x_back, y_back = solved.all_world2pix(ra, dec, 0)
    return float(np.median(np.hypot(x_back - x.ravel(), y_back - y.ravel())))
