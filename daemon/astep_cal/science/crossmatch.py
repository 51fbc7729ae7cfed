"""Which source of each frame is which star of the night's reference frame (for the light curves).

Pure functions. A solved frame is matched on the sky: its sources' RA/Dec go through the reference
frame's WCS, which follows any drift, rotation or flip of the field. A frame that did not solve still
has pixel positions: its shift against the reference is found by voting (every pairwise difference
of the brightest sources of both frames; the true shift is the one most pairs agree on), which needs
no WCS and survives sources missing from either list.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

VOTE_STARS = 40  # brightest sources of each frame used to find a shift
VOTE_TOLERANCE_PX = 1.5  # pairs within this of the winning shift agree with it
MIN_VOTES = 4  # fewer agreeing pairs: no shift found


def nearest(reference_xy: np.ndarray, frame_xy: np.ndarray, radius: float) -> np.ndarray:
    """For each reference position, the row of the nearest frame position within ``radius`` (-1: none).

    A frame source claimed by two reference stars goes to the nearer one only.
    """
    match = np.full(len(reference_xy), -1, int)
    if not len(reference_xy) or not len(frame_xy):
        return match
    finite = np.all(np.isfinite(frame_xy), axis=1)
    rows = np.flatnonzero(finite)
    if not len(rows):
        return match
    distance, index = cKDTree(frame_xy[rows]).query(reference_xy, distance_upper_bound=radius)
    found = np.isfinite(distance)
    candidates = np.where(found, rows[np.minimum(index, len(rows) - 1)], -1)
    for row in np.unique(candidates[candidates >= 0]):
        claimants = np.flatnonzero(candidates == row)
        if len(claimants) > 1:
            keep = claimants[np.argmin(distance[claimants])]
            candidates[claimants[claimants != keep]] = -1
    return candidates


def shift_by_voting(reference_xy: np.ndarray, frame_xy: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(dx, dy) that takes reference positions to the frame's, and how many pairs agree; None if unclear.

    Both lists are brightest first. The mode of all pairwise differences is found on a grid of
    ``VOTE_TOLERANCE_PX`` cells, then refined as the median of the differences that agree with it.
    """
    ref, frame = reference_xy[:VOTE_STARS], frame_xy[:VOTE_STARS]
    if len(ref) < 2 or len(frame) < 2:
        return None
    differences = (frame[None, :, :] - ref[:, None, :]).reshape(-1, 2)
    cells = np.floor(differences / VOTE_TOLERANCE_PX).astype(np.int64)
    keys, counts = np.unique(cells, axis=0, return_counts=True)
    best = keys[np.argmax(counts)]
    near = np.all(np.abs(cells - best) <= 1, axis=1)  # the winning cell and its neighbours
    shift = np.median(differences[near], axis=0)
    agree = np.all(np.abs(differences - shift) <= VOTE_TOLERANCE_PX, axis=1)
    if agree.sum() < MIN_VOTES:
        return None
    return np.median(differences[agree], axis=0), int(agree.sum())


def frame_in_reference(frame_ra: np.ndarray, frame_dec: np.ndarray, reference_wcs: WCS) -> np.ndarray:
    """A solved frame's sources in the reference frame's pixels (0-based), through their RA/Dec."""
    x, y = reference_wcs.celestial.all_world2pix(frame_ra, frame_dec, 0, quiet=True)
    return np.column_stack([x, y])


def match_frame(reference_xy: np.ndarray, frame_xy: np.ndarray, frame_sky: tuple[np.ndarray, np.ndarray] | None,
                reference_wcs: WCS | None, radius: float, vote_xy: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Rows of the frame's sources matching each reference star (-1: not found) and how (``sky``,
    ``shift`` or ``none``): on the sky when both frames are solved, else by the voted pixel shift.

    ``vote_xy``: the whole reference list, brightest first, when ``reference_xy`` is only some of its
    stars (the shift is voted between the brightest of both frames)."""
    if frame_sky is not None and reference_wcs is not None and np.isfinite(frame_sky[0]).any():
        return nearest(reference_xy, frame_in_reference(*frame_sky, reference_wcs), radius), "sky"
    voted = shift_by_voting(reference_xy if vote_xy is None else vote_xy, frame_xy)
    if voted is None:
        return np.full(len(reference_xy), -1, int), "none"
    return nearest(reference_xy + voted[0], frame_xy, radius), "shift"
