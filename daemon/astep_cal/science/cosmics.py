"""Finding cosmic-ray hits: L.A.Cosmic (astroscrappy) only where a hit is possible.

astroscrappy's median filters run over every pixel of the frame (16 M for ASTEP's 4096²: ~10 CPU-s a
frame), yet L.A.Cosmic can only flag a pixel whose Laplacian is large. This module proves, cheaply and
exactly, where it cannot flag anything, and runs astroscrappy itself only on the rest:

1. **Screen** (:func:`screen`). L.A.Cosmic flags a pixel only if its Laplacian-to-noise ratio ``s`` is
   above ``sigfrac * sigclip`` (neighbours of a hit) and within two pixels of a "seed" with ``s >
   sigclip``. ``s = L+ / (2 noise)`` where ``L+`` is the clipped Laplacian of the 2x subsampled frame
   (a function of the pixel and its 4 neighbours, :func:`laplacian_at`) and ``noise²`` is a 7x7
   separable median of ``data + read_noise²``, which is never below the window's minimum. With the
   minimum of the data over 48x48 blocks (:func:`noise_floor`) in place of the median, ``s`` is
   bounded from above: a pixel failing the bound cannot be flagged, whatever the medians turn out to
   be. On a 4096² frame ~0.1 % of the pixels pass (hits and star cores).
2. **Patches** (:func:`patch_boxes`). The passing pixels, grouped on a 4-pixel grid into connected
   boxes, each widened by ``LACOSMIC_REACH`` pixels: L.A.Cosmic's verdict on a pixel depends only on
   the data within 9 pixels of it (the 7x7 noise and 9x9 fine-structure medians of its 5x5
   neighbourhood, the saturated-star dilation), so inside each box's core the result is the one the
   whole frame would give. The frame is mirrored beyond its edges, so a hit on the border looks like
   one (the whole-frame path pads the frame the same way).
3. **Mosaic** (:func:`lacosmic_on_patches`). The patches are packed side by side into one small image
   (a few per cent of the frame) and given to astroscrappy in one call; the cores are copied back.

The result is the whole-frame run's mask (up to the frame's outermost pixels, where the mirrored
context now reaches further), for ~10 % of its CPU. Only ``niter == 1`` is screened (later
iterations see a frame cleaned by the first, which the bound does not cover); other settings, a
frame too small for patches, or patches covering most of the frame take the whole-frame path
(:func:`detect_cosmics_in_bands`). No ``inmask`` is ever given: astroscrappy's ``update_mask`` grows
it by one pixel (``dilate3``) and never looks at masked pixels, so every hit in the 8 neighbours of a
bad pixel went undetected; bad pixels are filled from their neighbours first instead
(``calibrate.fill_bad_pixels``).
"""

from __future__ import annotations

from typing import Any

import astroscrappy
import astroscrappy.astroscrappy as _scrappy_core
import numpy as np
from scipy import ndimage

from astep_cal.science.cosmic_checks import (
    find_hits_on_stars,
    flag_beside_bad,
    grow_cosmic_mask,
    replace_flagged,
    vet_on_stars,
)
from astep_cal.support.config import CosmicSettings

_LEAKY_DILATE5 = getattr(_scrappy_core, "dilate5", None)


def dilate5_without_leak(data: np.ndarray, niter: int) -> np.ndarray:
    """astroscrappy's ``dilate5``, one iteration at a time.

    Every ``detect_cosmics`` call dilates the saturation mask with ``dilate5(satpixels, 2)``; for
    ``niter > 1`` its C helper ``PyDilate5`` (``utils/imutils.c``, astroscrappy 1.3.0) mallocs an
    ``nx * ny`` byte scratch array and never frees it: one frame's worth of bytes lost per call, 17 MB a
    4096² frame, ~17 GB for a 1000-frame night in the long-running daemon (found by ``make soak``:
    +0.84 MB a night of three 512² frames, none of it Python objects). With ``niter == 1`` the helper
    returns before that allocation, and n single passes are the same dilation as one call of n
    iterations (the helper copies the output back in as the next input), so the result is identical.
    """
    output = _LEAKY_DILATE5(data, 1)
    for _ in range(niter - 1):
        output = _LEAKY_DILATE5(output, 1)
    return output


if _LEAKY_DILATE5 is not None:  # detect_cosmics looks dilate5 up in its module's globals at each call
    _scrappy_core.dilate5 = dilate5_without_leak


COSMIC_BYTES_PER_PIXEL = 64  # astroscrappy's peak working memory per pixel (measured ~1 GB for 4096²)
COSMIC_BAND_MARGIN = 32  # rows of context above and below a band: well beyond L.A.Cosmic's 9-pixel reach
EDGE_PAD = 8  # mirrored pixels around the frame: L.A.Cosmic misses hits on the outermost rows otherwise

LACOSMIC_REACH = 9  # L.A.Cosmic's verdict on a pixel depends on the data within this many pixels (niter=1)
NOISE_BLOCK = 16  # the noise floor is the data minimum over 3x3 blocks of this side (covers any 7x7 window)
SCREEN_SAFETY = 0.99  # float32 rounding: the screen keeps pixels 1 % below the bound too
PATCH_GRID = 4  # candidates are grouped on a grid of this many pixels, connected cells form one patch
MOSAIC_WIDTH = 2048  # columns of the image the patches are packed into
MOSAIC_MAX_FRACTION = 0.5  # patches covering more of the frame than this: the whole-frame run is as cheap


def lacosmic_parameters(settings: CosmicSettings, read_noise_e: float, saturation_e: float) -> dict[str, Any]:
    """astroscrappy's keyword arguments for data in electrons (gain 1)."""
    return dict(sigclip=settings.sigclip, sigfrac=settings.sigfrac, objlim=settings.objlim, gain=1.0,
                readnoise=read_noise_e, satlevel=saturation_e, niter=settings.niter, sepmed=settings.sepmed,
                cleantype=settings.cleantype, fsmode=settings.fsmode)


# --- the whole-frame run (and the fallback) ------------------------------------------------------

def _detect_padded(data: np.ndarray, **parameters: Any) -> np.ndarray:
    """astroscrappy's mask with the frame mirrored outwards by EDGE_PAD pixels, so edge hits look like hits."""
    padded = np.pad(data, EDGE_PAD, mode="reflect")
    cosmic, _ = astroscrappy.detect_cosmics(padded, **parameters)
    return cosmic[EDGE_PAD:-EDGE_PAD, EDGE_PAD:-EDGE_PAD]


def detect_cosmics_in_bands(data: np.ndarray, max_pixels: int | None, **parameters: Any) -> np.ndarray:
    """astroscrappy's mask on the whole frame, or on overlapping row bands when memory is short.

    Each band is processed with ``COSMIC_BAND_MARGIN`` extra rows on both sides and only its centre
    is kept, so the result matches a whole-frame run while peak memory follows the band, not the
    frame: this is how ``--mem-limit`` also bounds the cosmic-ray step.
    """
    rows = data.shape[0]
    if max_pixels is None or data.size <= max_pixels:
        return _detect_padded(data, **parameters)
    height = max(4 * COSMIC_BAND_MARGIN, max_pixels // data.shape[1] - 2 * COSMIC_BAND_MARGIN)
    mask = np.zeros(data.shape, dtype=bool)
    for start in range(0, rows, height):
        stop = min(start + height, rows)
        lo, hi = max(0, start - COSMIC_BAND_MARGIN), min(rows, stop + COSMIC_BAND_MARGIN)
        mask[start:stop] = _detect_padded(data[lo:hi], **parameters)[start - lo: stop - lo]
    return mask


# --- the screen ----------------------------------------------------------------------------------

def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices beyond [0, size) mirrored back in, as ``np.pad(mode="reflect")`` does (reach < size)."""
    index = np.abs(index)
    return np.where(index >= size, 2 * (size - 1) - index, index)


def noise_floor(data: np.ndarray, read_noise_e: float) -> np.ndarray:
    """A lower bound of L.A.Cosmic's noise (``sqrt(sepmed7(data + read_noise²))``) per NOISE_BLOCK²
    block: the minimum of the data over the block and its 8 neighbours (any 7x7 window around a pixel
    of the block lies there, and a separable median is never below its window's minimum)."""
    ny, nx = data.shape
    starts = np.arange(0, nx, NOISE_BLOCK)
    minima = np.empty(((ny + NOISE_BLOCK - 1) // NOISE_BLOCK, len(starts)), np.float32)
    for row, top in enumerate(range(0, ny, NOISE_BLOCK)):
        minima[row] = np.minimum.reduceat(data[top: top + NOISE_BLOCK].min(axis=0), starts)
    minima = ndimage.minimum_filter(minima, size=3, mode="nearest")
    return np.sqrt(np.maximum(minima.astype(np.float64) + read_noise_e ** 2, 1e-5)).astype(np.float32)


def laplacian_at(data: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """L.A.Cosmic's ``L+`` (astroscrappy's ``rebin(clip(laplaceconvolve(subsample(data))))``) at the
    given pixels, the frame mirrored at its edges. float32, like astroscrappy.

    A pixel ``v`` subsampled 2x2 and convolved with the Laplacian kernel gives, in its four sub-pixels,
    ``2v - up - left``, ``2v - up - right``, ``2v - down - left`` and ``2v - down - right``; ``L+`` is
    the mean of their positive parts.
    """
    ny, nx = data.shape
    v = data[ys, xs]
    up, down = data[_mirror(ys - 1, ny), xs], data[_mirror(ys + 1, ny), xs]
    left, right = data[ys, _mirror(xs - 1, nx)], data[ys, _mirror(xs + 1, nx)]
    twice = v + v
    terms = [np.maximum(twice - a - b, 0) for a in (up, down) for b in (left, right)]
    return (terms[0] + terms[1] + terms[2] + terms[3]) * np.float32(0.25)


def _seed_bound_candidates(data: np.ndarray, floor: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose ``L+`` may exceed ``threshold`` times the noise floor, by a bound that needs no
    copy of the frame: each of the four terms of ``L+`` is at most ``2v - min(up, down) -
    min(left, right)``. One pass of views, a NOISE_BLOCK of rows at a time (the floor is then one row
    of thresholds); the frame's outermost rows and columns are all kept (their neighbours are mirrored)."""
    ny, nx = data.shape
    found_y, found_x = [], []
    for row, top in enumerate(range(1, ny - 1, NOISE_BLOCK)):
        bottom = min(top + NOISE_BLOCK, ny - 1)
        limits = np.repeat(floor[np.arange(top, bottom) // NOISE_BLOCK], NOISE_BLOCK, axis=1)[:, 1:nx - 1]
        bound = np.minimum(data[top - 1: bottom - 1, 1:-1], data[top + 1: bottom + 1, 1:-1])
        bound += np.minimum(data[top:bottom, :-2], data[top:bottom, 2:])
        centre = data[top:bottom, 1:-1]
        np.subtract(centre + centre, bound, out=bound)
        ys, xs = np.nonzero(bound > limits * np.float32(threshold))
        found_y.append(ys + top)
        found_x.append(xs + 1)
    border = np.zeros(data.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    ys, xs = np.nonzero(border)
    return np.concatenate(found_y + [ys]), np.concatenate(found_x + [xs])


def screen(data: np.ndarray, read_noise_e: float, sigclip: float, sigfrac: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-major coordinates of every pixel L.A.Cosmic (one iteration) could flag; none else can be.

    A seed needs ``L+ > 2 sigclip noise``, a flagged pixel ``L+ > 2 sigfrac sigclip noise`` and a seed
    within 2 pixels (two 3x3 dilations); with :func:`noise_floor` for the noise both conditions are
    necessary ones. Seeds are found among the pixels passing a looser bound that costs a few
    operations a pixel (:func:`_seed_bound_candidates`), with ``L+`` computed exactly there only; the
    weaker test runs on the 5x5 neighbourhoods of the seeds.
    """
    ny, nx = data.shape
    floor = noise_floor(data, read_noise_e)
    seed_factor = 2 * sigclip * SCREEN_SAFETY
    ys, xs = _seed_bound_candidates(data, floor, seed_factor)
    seeds = laplacian_at(data, ys, xs) > seed_factor * floor[ys // NOISE_BLOCK, xs // NOISE_BLOCK]
    ys, xs = ys[seeds], xs[seeds]
    if not len(ys):
        return ys, xs
    offsets = np.arange(-2, 3)
    around_y, around_x = np.broadcast_arrays(ys[:, None, None] + offsets[None, :, None],
                                             xs[:, None, None] + offsets[None, None, :])
    inside = (around_y >= 0) & (around_y < ny) & (around_x >= 0) & (around_x < nx)
    cy, cx = np.divmod(np.unique(around_y[inside] * nx + around_x[inside]), nx)
    weak = 2 * sigclip * sigfrac * SCREEN_SAFETY * floor[cy // NOISE_BLOCK, cx // NOISE_BLOCK]
    keep = laplacian_at(data, cy, cx) > weak
    return cy[keep], cx[keep]


# --- patches and the mosaic ----------------------------------------------------------------------

def patch_boxes(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> list[tuple[slice, slice]]:
    """Core boxes (row and column slices of the frame) covering the given pixels: the PATCH_GRID
    cells holding any of them, joined where cells touch (8-connected), as their bounding boxes."""
    cells = np.zeros(((shape[0] + PATCH_GRID - 1) // PATCH_GRID, (shape[1] + PATCH_GRID - 1) // PATCH_GRID), bool)
    cells[ys // PATCH_GRID, xs // PATCH_GRID] = True
    labels, _ = ndimage.label(cells, structure=np.ones((3, 3), bool))
    return [(slice(box[0].start * PATCH_GRID, min(box[0].stop * PATCH_GRID, shape[0])),
             slice(box[1].start * PATCH_GRID, min(box[1].stop * PATCH_GRID, shape[1])))
            for box in ndimage.find_objects(labels)]


def _shelf_pack(sizes: list[tuple[int, int]], width: int) -> tuple[list[tuple[int, int]], int, int]:
    """Places (top, left) for boxes of (height, width) ``sizes``, tallest first, left to right in
    shelves of ``width`` columns (or the widest box); returns the places and the mosaic's shape."""
    width = max([width] + [w for _, w in sizes])
    places: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    top = left = shelf = 0
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i][0]):
        height, box_width = sizes[index]
        if left + box_width > width:
            top, left, shelf = top + shelf, 0, 0
        places[index] = (top, left)
        left += box_width
        shelf = max(shelf, height)
    return places, top + shelf, width


def _mosaic_groups(boxes: list[tuple[slice, slice]], max_pixels: int | None) -> list[list[tuple[slice, slice]]]:
    """The boxes in groups whose padded patches hold at most ``max_pixels`` (one group when unbounded)."""
    if max_pixels is None:
        return [boxes]
    groups: list[list[tuple[slice, slice]]] = [[]]
    total = 0
    for box in boxes:
        size = _padded_size(box)
        if groups[-1] and total + size > max_pixels:
            groups.append([])
            total = 0
        groups[-1].append(box)
        total += size
    return groups


def _padded_size(box: tuple[slice, slice]) -> int:
    rows, columns = box
    return (rows.stop - rows.start + 2 * LACOSMIC_REACH) * (columns.stop - columns.start + 2 * LACOSMIC_REACH)


def lacosmic_on_patches(data: np.ndarray, boxes: list[tuple[slice, slice]], fill: float,
                        **parameters: Any) -> np.ndarray:
    """astroscrappy's verdict inside the core ``boxes``, from one run on a mosaic of the patches.

    Each patch is its box widened by LACOSMIC_REACH on every side (mirrored beyond the frame); the
    mosaic's unused area holds ``fill`` (flat: nothing is found there, and patches' cores never see
    it). Returns the frame's cosmic mask (False outside the boxes).
    """
    ny, nx = data.shape
    reach = LACOSMIC_REACH
    sizes = [(b[0].stop - b[0].start + 2 * reach, b[1].stop - b[1].start + 2 * reach) for b in boxes]
    places, height, width = _shelf_pack(sizes, MOSAIC_WIDTH)
    mosaic = np.full((height, width), fill, np.float32)
    for (rows, columns), (top, left), (h, w) in zip(boxes, places, sizes):
        ry = _mirror(np.arange(rows.start - reach, rows.stop + reach), ny)
        rx = _mirror(np.arange(columns.start - reach, columns.stop + reach), nx)
        mosaic[top: top + h, left: left + w] = data[ry[:, None], rx[None, :]]
    flagged, _ = astroscrappy.detect_cosmics(mosaic, **parameters)
    mask = np.zeros(data.shape, bool)
    for (rows, columns), (top, left), (h, w) in zip(boxes, places, sizes):
        mask[rows, columns] |= flagged[top + reach: top + h - reach, left + reach: left + w - reach]
    return mask


def lacosmic_mask(data: np.ndarray, settings: CosmicSettings, read_noise_e: float, saturation_e: float,
                  background: float, max_pixels: int | None = None, screened: bool = True) -> np.ndarray:
    """L.A.Cosmic's cosmic mask of ``data`` (electrons, bad pixels filled): astroscrappy on the patches
    where a hit is possible (module docstring), or on the whole frame (in bands under ``max_pixels``)
    when screening does not apply or would not pay. ``background``: the sky, for the mosaic's filler."""
    parameters = lacosmic_parameters(settings, read_noise_e, saturation_e)
    small = min(data.shape) <= 2 * (LACOSMIC_REACH + PATCH_GRID)
    if not screened or settings.niter != 1 or small:
        return detect_cosmics_in_bands(data, max_pixels, **parameters)
    ys, xs = screen(data, read_noise_e, settings.sigclip, settings.sigfrac)
    if not len(ys):
        return np.zeros(data.shape, bool)
    boxes = patch_boxes(data.shape, ys, xs)
    if sum(_padded_size(box) for box in boxes) > MOSAIC_MAX_FRACTION * data.size:
        return detect_cosmics_in_bands(data, max_pixels, **parameters)
    mask = np.zeros(data.shape, bool)
    for group in _mosaic_groups(boxes, max_pixels):
        mask |= lacosmic_on_patches(data, group, background, **parameters)
    return mask


def remove_cosmic_rays(data: np.ndarray, bad: np.ndarray, saturated: np.ndarray, sky_e: float, read_noise_e: float,
                       saturation_e: float, settings: CosmicSettings, max_pixels: int | None = None,
                       screened: bool = True) -> np.ndarray:
    """Find the hits in ``data`` (electrons, bad pixels filled) and replace them in place; returns the mask.

    L.A.Cosmic (:func:`lacosmic_mask`), then issue 14's corrections (``cosmic_checks``): hits beside
    bad pixels, star cores it flagged cleared, track edges grown, hits on stars' wings added; the
    flagged pixels are then replaced along the local star profile or by the sky. Bad and saturated
    pixels are never flagged.
    """
    cosmic = lacosmic_mask(data, settings, read_noise_e, saturation_e, sky_e, max_pixels, screened)
    excluded = bad | saturated
    cosmic &= ~excluded
    cosmic = flag_beside_bad(data, cosmic, bad, excluded, sky_e, read_noise_e)
    cosmic = vet_on_stars(data, cosmic, excluded, sky_e, read_noise_e)
    cosmic |= grow_cosmic_mask(data, cosmic, excluded, sky_e, read_noise_e, filled=bad)
    cosmic = find_hits_on_stars(data, cosmic, excluded, sky_e, read_noise_e)
    replace_flagged(data, cosmic, excluded, sky_e, read_noise_e)
    return cosmic
