"""Where solve-field runs: in a process group of its own (killed whole), in astep-cal's session, at nice 10.

The session matters to the scheduler: with autogroups (``/proc/sys/kernel/sched_autogroup_enabled``, on in
Debian's kernels) each session gets an equal share of the CPU and a process's niceness counts only inside
its session. solve-field in a session of its own took half a core from the calibration whatever its nice
(``make bench-unsolvable``: 1.28x the night with solving off), so it must stay in ours.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from astep_cal.engine.solve_process import (
    SOLVE_NICENESS,
    run_solve_field,
    terminate_running_children,
    terminate_running_solves,
)

# What the child reports of itself: its pid, session, process group and niceness.
_REPORT = "import os; print(os.getpid(), os.getsid(0), os.getpgid(0), os.nice(0))"


def test_solve_field_runs_in_its_own_group_inside_our_session_at_low_priority(tmp_path: Path) -> None:
    code, output = run_solve_field([sys.executable, "-c", _REPORT], timeout_s=30, work_dir=tmp_path)
    assert code == 0, output
    pid, session, group, niceness = map(int, output.split())
    assert group == pid, "not the leader of its own process group: a timeout could not kill its helpers"
    assert session == os.getsid(0), "in a session of its own: an autogroup of its own, its niceness void"
    assert niceness == os.nice(0) + SOLVE_NICENESS


def test_a_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    """A helper started by the solver (solve-field runs astrometry-engine) dies with it on a timeout."""
    marker = tmp_path / "helper.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)']); open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    started = time.monotonic()
    code, _ = run_solve_field([sys.executable, "-c", script], timeout_s=2, work_dir=tmp_path)
    assert code is None and time.monotonic() - started < 20
    helper = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(helper):
        time.sleep(0.05)
    assert not _alive(helper), "the solver's helper outlived the timeout"
    assert terminate_running_solves() == 0


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().split(") ")[1]
    except (OSError, IndexError):
        return False
    return not state.startswith("Z")


def _our_autogroup() -> str | None:
    """This process's autogroup name, or None where the kernel shows none.

    Some containers (the CI's among them) have ``sched_autogroup_enabled`` but give an empty
    ``/proc/<pid>/autogroup``: there the scheduler has no autogroup to compare.
    """
    try:
        fields = Path("/proc/self/autogroup").read_text().split()
    except OSError:
        return None
    return fields[0] if fields else None


@pytest.mark.skipif(_our_autogroup() is None, reason="the kernel shows no autogroups here")
def test_solve_field_shares_our_autogroup(tmp_path: Path) -> None:
    """The scheduler's own view: the child's autogroup is ours (``/proc/<pid>/autogroup``)."""
    report = "import os; print(open(f'/proc/{os.getpid()}/autogroup').read().split()[0])"
    code, output = run_solve_field([sys.executable, "-c", report], timeout_s=30, work_dir=tmp_path)
    assert code == 0, output
    assert output.strip() == _our_autogroup()


def test_a_stop_ends_a_hanging_query_starkd_too(tmp_path: Path) -> None:
    """query-starkd (the health step's reference stars, in the solve thread) is ended by the service's stop
    like solve-field: the old code left it to its ``query_timeout_s``, and a stop waited that long. A solve
    budget's cut-off leaves it be."""
    import threading

    from astep_cal.engine.frame_health import ReferenceUnavailable, query_reference
    from astep_cal.support.config import HealthSettings

    hanging = tmp_path / "query-starkd"
    hanging.write_text("#!/bin/sh\nsleep 60\n")
    hanging.chmod(0o755)
    index = tmp_path / "index.fits"
    index.write_bytes(b"")
    settings = HealthSettings(query_starkd=str(hanging), reference_index=str(index), query_timeout_s=60.0)
    outcome: list[BaseException] = []

    def query() -> None:
        try:
            query_reference(150.0, -60.0, 1.0, settings)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=query)
    started = time.monotonic()
    worker.start()
    time.sleep(1.0)
    # A night's solve budget cut off ends solve-field only: the query belongs to a frame already solved.
    assert terminate_running_solves(grace_s=0.5) == 0 and worker.is_alive()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and terminate_running_children(grace_s=0.5) == 0:  # the service's stop
        time.sleep(0.05)
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - started < 15, "the query outlived the stop"
    assert len(outcome) == 1 and isinstance(outcome[0], ReferenceUnavailable), outcome
    assert "a stop" in str(outcome[0])
