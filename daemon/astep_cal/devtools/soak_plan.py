"""The soak run's winter: which nights, which of them without sky flats or pointing, and which fault
each meets (:func:`plan_nights`), so that a short run meets every fault too."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MIN_NIGHTS = 8  # every fault on a night of its own, with sky flats before and after the run without
FIRST_NIGHT = dt.date(2026, 6, 1)
N_SCIENCE = 3

@dataclass(frozen=True)
class NightPlan:
    """One night of the winter: what it holds and which faults are injected while it arrives."""

    index: int
    date: str
    flats: bool = True
    pointing: bool = True
    faults: tuple[str, ...] = ()


def plan_nights(n: int, first: dt.date = FIRST_NIGHT) -> list[NightPlan]:
    """The winter: ``n`` consecutive nights, faults placed at fixed fractions of the run so that a
    short run meets every one of them too. About 30 % of the run (at least 3 nights) has no sky flats,
    starting after 30 % of it; the first and last nights always have their own."""
    if n < MIN_NIGHTS:
        raise ValueError(f"a soak run needs at least {MIN_NIGHTS} nights (got {n})")
    no_flats = range(round(0.3 * n), round(0.3 * n) + max(3, round(0.3 * n)))
    at: dict[int, list[str]] = {}
    for fault, index in (("junk_file", 1), ("sigkill", round(0.25 * n)), ("truncated_file", round(0.5 * n)),
                         ("disk_full", round(0.6 * n)), ("unmount", round(0.8 * n)), ("blind_solve", n - 1)):
        at.setdefault(index, []).append(fault)
    for index in range(3, n, 7):
        at.setdefault(index, []).append("sighup")
    return [NightPlan(index=i, date=(first + dt.timedelta(days=i)).isoformat(), flats=i not in no_flats,
                      pointing="blind_solve" not in at.get(i, []), faults=tuple(sorted(at.get(i, []))))
            for i in range(n)]


def lender(plans: list[NightPlan], plan: NightPlan) -> str | None:
    """The night whose master flat a night without sky flats must borrow: the nearest earlier one
    with its own flats (``flat_max_age_days`` = 30 covers any run this driver plans)."""
    earlier = [p.date for p in plans if p.index < plan.index and p.flats]
    return earlier[-1] if earlier else None
