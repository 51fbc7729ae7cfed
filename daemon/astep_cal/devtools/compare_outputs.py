"""Do ``once``, the daemon and ``reprocess`` — and two versions of the code — produce the same outputs?

``python -m astep_cal.devtools.compare_outputs --frontends once daemon reprocess [--tree A --tree B]
[--out DIR]`` builds one fixed synthetic archive (:func:`make_fixed_night`), runs each front-end of
each code tree on a fresh copy of it as a real subprocess (``python -m astep_cal.frontends.cli`` with the tree's
``daemon/`` on ``PYTHONPATH``), digests the outputs (:mod:`astep_cal.devtools.output_digest`) and
compares every (tree, front-end) with the first one. Exit code 1 when anything differs.

The archive holds the cases where the front-ends have drifted apart before (issue 13): a dark of
another size (``frame_shape_mismatch``), a science frame delivered after its night was processed (a
second pass: a second ``once``/``reprocess`` run, or a file dropped under the running daemon), and a
second night without sky flats (it borrows the first night's flat). After each pass the front-end
runs once more with nothing to do (the daemon: a SIGHUP rescan, then a restart) and the files those
runs rewrote are part of the manifest (``idle_rewrites``: issue 13 wants none, after any front-end).
The raw files get fixed mtimes, so two builds of the archive — and their manifests — are equal.

Astrometry is off by default (it is the slow part, and the engine's orchestration is what differs
between front-ends); ``--solve --size 512`` (a field solve-field can solve) runs the real solve-field
too: its WCS cards and ledger records came out identical across the three front-ends as well.

``--manifests A.json B.json`` compares two saved manifests (e.g. a tree re-run later).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astep_cal.devtools.harness import DaemonProcess
from astep_cal.devtools.output_digest import (
    CONTROL_FILES,
    build_manifest,
    diff_manifests,
    group_differences,
    load_manifest,
    save_manifest,
)
from astep_cal.devtools.synthetic import SMALL_FIELD, NightSpec, make_night

FRONTENDS = ("once", "daemon", "reprocess")
NIGHTS = ("2026-07-01", "2026-07-02")
FIXED_MTIME_S = 1_782_000_000  # 2026-06-21: raw mtimes fixed, so ASTCRAWF and the listing reproduce
RUN_TIMEOUT_S = 300.0
DAEMON_TIMEOUT_S = 180.0
IDLE_STEPS = ("after_first", "after_late")  # when a front-end runs again with nothing to do
QUIET_S = 2.0  # the daemon is done when the ledger has the frames and nothing changed for this long


@dataclass(frozen=True)
class FixedNight:
    """The pristine archive: ``root`` (both nights, without the late frame) and the late frame."""

    root: Path
    late: Path  # the late science frame, kept outside the root
    late_target: Path  # where it is delivered, relative to the root
    first_pass: tuple[str, ...]  # science frames the first pass must record
    all_frames: tuple[str, ...]  # ... and after the late frame


@dataclass(frozen=True)
class Tree:
    """A code tree to run: its ``daemon/`` goes first on the subprocess's ``PYTHONPATH``."""

    path: Path
    label: str

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
        env["PYTHONPATH"] = str(self.path / "daemon")
        return env

    def describe(self) -> dict[str, Any]:
        """Which commit ran (and whether its work tree had changes), and which package was imported."""
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True).stdout.strip()

        changes = git("diff", "HEAD") + git("ls-files", "--others", "--exclude-standard")  # they ran too
        return {"path": str(self.path), "label": self.label,
                "commit": git("log", "-1", "--format=%h %<(50,trunc)%s").rstrip(),
                "dirty": hashlib.sha1(changes.encode()).hexdigest()[:12] if changes else "", "module": self.module()}

    def module(self) -> str:
        """Where the subprocess imports astep_cal from (proof that the tree, not the venv's, runs)."""
        return subprocess.run([sys.executable, "-c", "import astep_cal; print(astep_cal.__file__)"],
                              capture_output=True, text=True, env=self.env(), cwd=self.path.parent).stdout.strip()

    def cli_module(self) -> str:
        """The command's module in this tree: trees before the layer sub-packages had `astep_cal/cli.py`."""
        return "astep_cal.cli" if (self.path / "daemon/astep_cal/cli.py").exists() else "astep_cal"

    def frozen(self, where: Path) -> Tree:
        """A copy of the tree's ``daemon/`` as it is now: a checkout being edited during the comparison
        (another engineer's) must not run different code in different front-ends."""
        shutil.copytree(self.path / "daemon", where / "daemon",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        return Tree(where, self.label)


# ----------------------------------------------------------------------------- the fixed archive

def fixed_spec(size: int = 256) -> NightSpec:
    """SMALL_FIELD scaled to ``size``² with the same 1° field and ~2.5 px stars (what makes quality
    metrics — and, at 512², solve-field — work on small frames)."""
    scale = SMALL_FIELD["pixel_scale_arcsec"] * 512 / size
    area = size * size / 512 ** 2
    return replace(NightSpec(**SMALL_FIELD), shape=(size, size), pixel_scale_arcsec=scale, fwhm_arcsec=2.5 * scale,
                   n_cosmic_rays=max(10, round(SMALL_FIELD["n_cosmic_rays"] * area)),
                   n_hot_pixels=max(20, round(SMALL_FIELD["n_hot_pixels"] * area)), dead_column=size * 3 // 10)


def _odd_dark(dark: Path) -> Path:
    """A copy of ``dark`` cut to another size, beside it: the night's ``frame_shape_mismatch``."""
    odd = dark.with_name(dark.name.replace("_DARK", "_1_DARK"))
    with fits.open(dark) as hdul:
        data = hdul[0].data
        cut = np.ascontiguousarray(data[: data.shape[0] // 2, : data.shape[1] // 2 + 8])
        fits.PrimaryHDU(cut, hdul[0].header).writeto(odd)
    return odd


def _fix_mtimes(paths: list[Path]) -> None:
    """Raw mtimes are recorded (CAL header, ledger): fixed ones make two builds of the archive equal."""
    for index, path in enumerate(sorted(paths)):
        stamp = (FIXED_MTIME_S + index) * 1_000_000_000
        os.utime(path, ns=(stamp, stamp))


def make_fixed_night(base: Path, size: int = 256) -> FixedNight:
    """Night 1 (3 science frames, sky flats, a dark of another size; its last frame held back as the
    late one) and night 2 (2 science frames, no sky flats), deterministic to the byte."""
    spec = fixed_spec(size)
    root, truth = base / "root", base / "truth"
    first = make_night(root, replace(spec, date=NIGHTS[0], start_time=f"{NIGHTS[0]}T20:00:00", seed=1),
                       truth_dir=truth / NIGHTS[0])
    second = make_night(root, replace(spec, date=NIGHTS[1], start_time=f"{NIGHTS[1]}T20:00:00", seed=2,
                                      n_science=2, n_flats=0, n_flat_darks=0), truth_dir=truth / NIGHTS[1])
    _odd_dark(first.dark_files[0])
    late_raw = first.science_files[-1]
    late = base / "late" / late_raw.name
    late.parent.mkdir(parents=True)
    shutil.move(late_raw, late)
    _fix_mtimes([p for p in root.rglob("*") if p.is_file()] + [late])
    science = first.science_files + second.science_files
    return FixedNight(root=root, late=late, late_target=late_raw.relative_to(root),
                      first_pass=tuple(p.name for p in science if p != late_raw),
                      all_frames=tuple(p.name for p in science))


def run_config(solve: bool) -> str:
    """One configuration for every front-end (the daemon's keys are ignored by the others): the
    daemon processes a settled night at once, a night without flats borrows without waiting, and the
    summary's picture is deferred (the daemon's default) but drawn before the quiet period ends."""
    astrometry = "enabled = true\ncpulimit_s = 30\n" if solve else "enabled = false\n"
    return (f"[astrometry]\n{astrometry}[daemon]\nsettle_seconds = 1.0\nno_flat_wait_s = 0.0\n"
            f'close_delay_s = 0.5\nreconcile_interval_s = 30.0\n[logging]\nformat = "json"\n')


def deliver_late(night: FixedNight, root: Path) -> None:
    """The late frame arrives as rsync leaves it: a temporary, renamed (its fixed mtime kept)."""
    target = root / night.late_target
    temp = target.with_name(f".{target.name}.part")
    shutil.copy2(night.late, temp)
    os.replace(temp, target)


# ----------------------------------------------------------------------------------- front-ends

def _cli(tree: Tree, work: Path, *args: str) -> int:
    """One ``astep-cal`` command of ``tree`` as a subprocess; its output kept in ``work``."""
    log = work / f"{args[0]}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", tree.cli_module(), *args], stdout=out, stderr=subprocess.STDOUT,
                              env=tree.env(), cwd=work, timeout=RUN_TIMEOUT_S).returncode
    if code not in (0, 1):  # 1: frames unsolved/failed, a result; anything else is a broken run
        raise RuntimeError(f"{tree.label}: astep-cal {' '.join(args)} exited {code}\n{log.read_text()[-3000:]}")
    return code


def _extra(frontend: str) -> tuple[str, ...]:
    return ("--workers", "1") if frontend == "reprocess" else ()  # one worker: a 2-core machine, shared


def run_batch(frontend: str, tree: Tree, night: FixedNight, root: Path, work: Path, config: Path,
              idle: tuple[str, ...]) -> tuple[list[int], dict[str, list[str]]]:
    """``once`` or ``reprocess``: a run, the late frame, a second run; after those named in ``idle``,
    a run with nothing to do (the files it rewrote)."""
    run = lambda: _cli(tree, work, frontend, str(root), "--config", str(config), *_extra(frontend))  # noqa: E731
    codes, rewrites = [run()], {}
    for step in IDLE_STEPS:
        if step in idle:
            before = _stamps(root)
            codes.append(run())
            rewrites[step] = _changed(before, _stamps(root))
        if step == "after_first":
            deliver_late(night, root)
            codes.append(run())
    return codes, rewrites


def _recorded_frames(root: Path) -> set[str]:
    """Science frames with a calibration record in the ledger (schema 1 or 2; read while it is written:
    every file is replaced atomically, a read that races a rename is tried again), none of them while a
    night's close is still deferred (``close_pending``: the daemon's light curves and summary PNG)."""
    state = root / ".astep-cal"
    try:
        index = json.loads((state / "ledger.json").read_text())
        nights = [json.loads(p.read_text()) for p in (state / "nights").glob("*.json")] if index.get("schema") == 2 \
            else list(index.get("nights", {}).values())
    except (OSError, ValueError):
        return set()
    if any(night.get("close_pending") for night in nights):
        return set()
    return {name for night in nights for name, frame in night.get("frames", {}).items() if frame.get("calibrate")}


def _snapshot(root: Path, log: Path) -> tuple:
    return tuple((str(p), s.st_size, s.st_mtime_ns) for p in sorted(root.rglob("*"))
                 if p.is_file() and (s := p.stat())) + (log.stat().st_size,)


def wait_settled(daemon: DaemonProcess, root: Path, frames: tuple[str, ...], timeout: float) -> None:
    """Until the ledger records ``frames`` and no file (nor the log) has changed for QUIET_S: the
    night's summary is written after its frames, and the daemon's status text may not change at all
    (idle before, idle after), so quiet is the one signal every version gives."""
    deadline, last, quiet_since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        daemon.pump()
        if daemon.process.poll() is not None:
            break
        snapshot = _snapshot(root, daemon.log_path)
        if snapshot != last:
            last, quiet_since = snapshot, time.monotonic()
        elif set(frames) <= _recorded_frames(root) and time.monotonic() - quiet_since >= QUIET_S:
            return
        time.sleep(0.25)
    raise RuntimeError(f"daemon: timed out waiting for {len(frames)} frames; exit={daemon.process.poll()}\n"
                       f"{daemon.log_tail()}")


def _rescan_idle(daemon: DaemonProcess, root: Path, frames: tuple[str, ...]) -> list[str]:
    """A full rescan (SIGHUP) of a data root with nothing to do: the files it rewrote."""
    before, rescans = _stamps(root), daemon.count("rescan")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.count("rescan") > rescans, 30, "the rescan after SIGHUP")
    wait_settled(daemon, root, frames, DAEMON_TIMEOUT_S)
    return _changed(before, _stamps(root))


def _daemon_session(tree: Tree, root: Path, work: Path, config: Path, steps: Any) -> int:
    """``astep-cal run`` of ``tree`` on ``root``, ``steps(daemon)`` done, then SIGTERM; its exit code."""
    prefix = ("env", f"PYTHONPATH={tree.path / 'daemon'}")
    sockets = Path(tempfile.mkdtemp(prefix="cmp-", dir="/tmp"))  # a unix socket path is at most 107 bytes
    daemon = DaemonProcess(sockets, root, config.read_text(), prefix=prefix, cwd=work)
    try:
        daemon.wait_message("READY=1", timeout=60)
        steps(daemon)
        daemon.stop(timeout=30)
        return daemon.process.returncode
    finally:
        daemon.close()
        shutil.copy(daemon.log_path, work / f"daemon-{time.monotonic_ns()}.log")
        shutil.rmtree(sockets, ignore_errors=True)


def run_daemon(tree: Tree, night: FixedNight, root: Path, work: Path, config: Path,
               idle: tuple[str, ...]) -> tuple[list[int], dict[str, list[str]]]:
    """``astep-cal run`` until both nights are recorded, the late frame dropped in, recorded too; the
    passes with nothing to do (``idle``): a SIGHUP rescan before the late frame, a restart after it."""
    rewrites: dict[str, list[str]] = {}

    def scenario(daemon: DaemonProcess) -> None:
        wait_settled(daemon, root, night.first_pass, DAEMON_TIMEOUT_S)
        if "after_first" in idle:
            rewrites["after_first"] = _rescan_idle(daemon, root, night.first_pass)
        deliver_late(night, root)
        wait_settled(daemon, root, night.all_frames, DAEMON_TIMEOUT_S)

    codes = [_daemon_session(tree, root, work, config, scenario)]
    if "after_late" in idle:
        before = _stamps(root)
        codes.append(_daemon_session(tree, root, work, config,
                                     lambda daemon: wait_settled(daemon, root, night.all_frames, DAEMON_TIMEOUT_S)))
        rewrites["after_late"] = _changed(before, _stamps(root))
    return codes, rewrites


def _stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file but the control files a process writes by being there."""
    return {str(p.relative_to(root)): (s.st_size, s.st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in CONTROL_FILES and (s := p.stat())}


def _changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def run_frontend(frontend: str, tree: Tree, night: FixedNight, work: Path, solve: bool,
                 idle: tuple[str, ...] = IDLE_STEPS, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fresh copy of the archive through one front-end of one tree; its manifest. After the passes
    named in ``idle`` the front-end runs with nothing to do: the files those runs rewrote (issue 13:
    none) are compared too, as ``idle_rewrites``."""
    work.mkdir(parents=True)
    root = shutil.copytree(night.root, work / "root", copy_function=shutil.copy2)
    config = work / "astep-cal.toml"
    config.write_text(run_config(solve))
    start = time.perf_counter()
    runner = run_daemon if frontend == "daemon" else partial(run_batch, frontend)
    codes, rewrites = runner(tree, night, root, work, config, idle)
    meta = {"frontend": frontend, "tree": provenance or tree.describe(), "exit_codes": codes, "solve": solve,
            "wall_s": round(time.perf_counter() - start, 1)}
    manifest = build_manifest(root, meta)
    if idle:
        manifest["idle_rewrites"] = rewrites
    return manifest


# ---------------------------------------------------------------------------------- the comparison

def compare(manifests: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
    """Report lines comparing every manifest with the first; True when all agree."""
    names = list(manifests)
    reference = manifests[names[0]]
    lines, same = [f"reference A = {names[0]}  ({_provenance(reference)})"], True
    for name in names[1:]:
        differences = diff_manifests(reference, manifests[name])
        same &= not differences
        verdict = "IDENTICAL" if not differences else f"{len(differences)} DIFFERENCES"
        lines.append(f"\nB = {name}  ({_provenance(manifests[name])}): {verdict}")
        for group, members in group_differences(differences).items():
            lines.append(f"  [{group}]")
            lines.extend(f"    {line}" for line in members)
    return lines, same


def _provenance(manifest: dict[str, Any]) -> str:
    meta = manifest.get("meta", {})
    tree = meta.get("tree", {})
    files = manifest.get("files", {})
    hdus = sum(len(f.get("hdus", {})) for f in files.values())
    changes = f" + uncommitted changes {tree['dirty']}" if tree.get("dirty") else ""
    return (f"{tree.get('commit', '?')}{changes}; exit codes "
            f"{meta.get('exit_codes')}; {len(files)} output files, {hdus} HDUs, "
            f"{len(manifest.get('ledger', {}).get('nights', {}))} ledger nights; files rewritten with nothing to "
            f"do: {_rewrites(manifest)}; {meta.get('wall_s')} s")


def _rewrites(manifest: dict[str, Any]) -> str:
    idle = manifest.get("idle_rewrites")
    if idle is None:
        return "not run"
    return ", ".join(f"{step} {len(files) or 'none'}" for step, files in idle.items())


def trees_from_paths(paths: list[str]) -> list[Tree]:
    """Trees labelled by their commit (or directory name when two share a commit)."""
    trees = []
    for raw in paths or [str(Path(__file__).resolve().parents[3])]:
        path = Path(raw).resolve()
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or path.name
        label = commit if commit not in [t.label for t in trees] else f"{commit}-{path.name}"
        trees.append(Tree(path, label))
    return trees


def run_all(frontends: list[str], trees: list[Tree], out: Path, size: int, solve: bool, keep: bool,
            idle: tuple[str, ...] = IDLE_STEPS) -> bool:
    """Every front-end of every tree on the fixed archive; manifests and report.txt in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compare-", dir=out.resolve()))  # absolute: commands run in it
    try:
        night = make_fixed_night(work / "pristine", size)
        manifests = {}
        for tree in trees:
            provenance = tree.describe()
            frozen = tree.frozen(work / f"code-{tree.label}")
            provenance["module"] = frozen.module()
            for frontend in frontends:
                name = f"{tree.label}-{frontend}"
                name += f"-{sum(n.startswith(name) for n in manifests) + 1}" if name in manifests else ""
                print(f"running {name} ...", flush=True)
                manifests[name] = run_frontend(frontend, frozen, night, work / name, solve, idle, provenance)
                save_manifest(manifests[name], out / f"{name}.json")
        return _report(manifests, out)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _report(manifests: dict[str, dict[str, Any]], out: Path | None) -> bool:
    lines, same = compare(manifests)
    text = "\n".join(lines) + f"\n\n{'ALL IDENTICAL' if same else 'DIFFERENCES FOUND'}\n"
    print(text)
    if out is not None:
        (out / "report.txt").write_text(text)
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m astep_cal.devtools.compare_outputs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontends", nargs="+", choices=FRONTENDS, default=list(FRONTENDS))
    parser.add_argument("--tree", action="append", default=[], help="a repository checkout (repeat; default: this one)")
    parser.add_argument("--out", type=Path, default=Path("compare-results"), help="manifests and report.txt")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (512 for --solve)")
    parser.add_argument("--solve", action="store_true", help="plate-solve too (real solve-field)")
    parser.add_argument("--no-idle", action="store_true", help="skip the pass with nothing to do")
    parser.add_argument("--keep", action="store_true", help="keep the data roots and logs")
    parser.add_argument("--manifests", nargs="+", type=Path, help="only compare saved manifests")
    args = parser.parse_args(argv)
    if args.manifests:
        return 0 if _report({str(p): load_manifest(p) for p in args.manifests}, None) else 1
    return 0 if run_all(args.frontends, trees_from_paths(args.tree), args.out, args.size, args.solve, args.keep,
                        () if args.no_idle else IDLE_STEPS) else 1


if __name__ == "__main__":
    sys.exit(main())
