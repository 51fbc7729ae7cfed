"""solve-field as a process: its own process group, killed whole on a timeout or at shutdown, and killed
by the kernel if astep-cal itself dies (so no orphan keeps a core busy).

Its own process group, not its own session: Linux's scheduler autogroups (``sched_autogroup_enabled``, on
in Debian's kernels) give every *session* an equal share of the CPU, whatever the niceness of its
processes, which counts only within a session. In a session of its own, solve-field at nice 10 took half
of a core from the calibration, not the ~10 % its niceness asks: while a failing search ran, each 512²
frame took 0.70 s to calibrate instead of 0.33 s, and 100 unsolvable frames took 1.28x the night with
solving off (``make bench-unsolvable``). In astep-cal's own session (systemd starts the service in one)
its niceness holds."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from astep_cal.support.faults import checkpoint

_OUTPUT_TAIL_CHARS = 400

SOLVE, QUERY = "solve-field", "query-starkd"
_running: dict[subprocess.Popen, str] = {}  # process -> SOLVE or QUERY
_running_lock = threading.Lock()


def kill_group(process: subprocess.Popen, sig: int) -> None:
    """Signal ``process``'s whole group; nothing if it is gone already."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_running_solves(grace_s: float = 2.0) -> int:
    """End every solve-field process group :func:`tracked` holds (a night's solve budget cut off, a night
    abandoned). A reference query (query-starkd) is left to finish: it belongs to a frame already solved,
    and ended here it would leave that frame without its health record for good.

    SIGTERM first, SIGKILL after ``grace_s``. Returns how many were running.
    """
    return _terminate((SOLVE,), grace_s)


def terminate_running_children(grace_s: float = 2.0) -> int:
    """End every tracked process group, solve-field's and query-starkd's (the service's shutdown: a stop
    must not wait for a hanging query's ``query_timeout_s``). Returns how many were running."""
    return _terminate((SOLVE, QUERY), grace_s)


def _terminate(kinds: tuple[str, ...], grace_s: float) -> int:
    with _running_lock:
        processes = [process for process, kind in _running.items() if kind in kinds]
    for process in processes:
        kill_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(process, signal.SIGKILL)
    return len(processes)


def output_tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-_OUTPUT_TAIL_CHARS:]


SOLVE_NICENESS = 10  # solve-field's CPU priority below astep-cal's own (nice 0: calibration)


def _in_child() -> None:
    """In the child: ask the kernel for SIGKILL when astep-cal dies (even by SIGKILL), so a crashed
    service never leaves ``solve-field`` running in its own process group, orphaned; and lower its CPU priority
    (``SOLVE_NICENESS``), so that solving, which runs beside the calibration, takes the CPU the calibration
    leaves free: on a busy machine (more runnable processes than cores) a failing search would otherwise take
    its equal share from the calibration, and a night of unsolvable frames calibrate slower than the same
    night with solving off. Raising the niceness needs no privilege, only the ``setpriority`` call, which the
    unit's ``SystemCallFilter`` allows back out of ``@resources``.

    This preexec_fn makes subprocess fork (not vfork), which runs the fork handlers of the libraries
    loaded: OpenBLAS's waits for its thread pool, and a fork from the solve thread while the main
    thread was inside an OpenBLAS call hung ``once`` for good (seen on the transit test night). The
    package therefore keeps OpenBLAS to one thread (``astep_cal/__init__.py``): no pool, nothing to wait
    for. (util-linux ``setpriv --pdeathsig`` would avoid the preexec_fn, but is refused under the
    service's systemd hardening: "activate capabilities: Operation not permitted".)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        os.nice(SOLVE_NICENESS)
    except OSError:  # a sandbox without setpriority (a unit's SystemCallFilter): solve at the same priority
        pass  # (raised here, it would fail every solve with "Exception occurred in preexec_fn")


_PR_SET_PDEATHSIG = 1


def start_in_own_group(command: list[str], **popen: Any) -> subprocess.Popen:
    """Start an Astrometry.net program (solve-field, query-starkd) as solve-field is started: in a process
    group of its own inside astep-cal's session, at ``SOLVE_NICENESS``, killed if astep-cal dies."""
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0, preexec_fn=_in_child, **popen)


@contextmanager
def tracked(process: subprocess.Popen, kind: str = SOLVE) -> Iterator[None]:
    """While inside, ``process``'s group is ended by :func:`terminate_running_children` (a stop) and, for
    solve-field (``kind`` SOLVE), by :func:`terminate_running_solves`; on leaving, whatever is left of its
    group is killed."""
    with _running_lock:
        _running[process] = kind
    try:
        yield
    finally:
        kill_group(process, signal.SIGKILL)  # helpers left behind by a crashed parent
        with _running_lock:
            _running.pop(process, None)


def run_solve_field(command: list[str], timeout_s: float, work_dir: Path) -> tuple[int | None, str]:
    """Run in a new process group (in astep-cal's session: see the module); on timeout kill the whole group. Returns (exit code or None, output)."""
    environment = dict(os.environ, TMPDIR=str(work_dir))
    log_path = work_dir / "solve-field.log"
    with open(log_path, "wb") as log_file:
        process = start_in_own_group(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=work_dir,
                                     env=environment)
        with tracked(process):
            checkpoint("solve_running")
            try:
                code: int | None = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(process, signal.SIGKILL)
                process.wait()
                code = None
    return code, log_path.read_text(errors="replace")
