"""``make fuzz``: mutated inputs of every kind fed through the real commands, counting what goes wrong.

Kinds (docs/pages/hostile-input.md):

- ``fits``: a real raw science frame, mutated (bit flips, truncations, header card changes, wrong
  BITPIX/NAXIS/NAXISn, junk appended, gzip/zip/bzip2 wrappers, gzip bombs), put by batches into a
  synthetic night beside good darks and flats and processed by ``astep-cal once`` in its own process
  (memory capped with ``RLIMIT_AS``; its peak RSS from ``wait4``). Every mutated file must end as a
  calibrated frame, a failed frame or a problem, exactly once.
- ``ledger``: the processed night's ledger files (index and night file), mutated as JSON (types
  swapped, keys removed or renamed to ``../``, deep nesting, truncated text), then ``astep-cal status``.
- ``summary``: the night's ``summary.json`` mutated, then ``astep-cal report FILE``.
- ``config``: the shipped ``etc/astep-cal.toml`` with one value replaced (nan, inf, huge, negative,
  wrong type), then ``astep-cal status --config``.

The JSON and TOML kinds run ``cli.main`` in this process (thousands of inputs in minutes) under a
per-input alarm; anything raised out of it is a traceback, an alarm is a hang. The process's own
address space is capped too. Usage: ``python -m astep_cal.devtools.fuzz --count 10000 --out FILE``.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import copy
import gzip
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATE = "2026-07-01"
LATER = "2026-07-02"  # a good night after the mutated one, in every batch: it must not be held up
LATER_BOUND_S = 300  # its CAL files must be written within this of the batch's start, else a stall
BATCH = 40  # mutated frames per `once` run
ALARM_S = 20  # an in-process input taking longer is a hang
BATCH_TIMEOUT_S = 900
CAP_BYTES = 4 << 30  # RLIMIT_AS of this process and of each `once`
JUNK = [None, True, False, 0, -1, 1e308, -1e308, 7.5, "", "x" * 300, "\x1b[2J\x07", "../../../victim", [], {},
        [[[[]]]], {"a": 1}, "2026-13-45", 2 ** 70]


@dataclass
class Tally:
    """What one kind's inputs gave."""

    inputs: int = 0
    tracebacks: int = 0
    hangs: int = 0
    unaccounted: int = 0  # fits: a mutated file neither calibrated, failed nor a problem, or twice
    later_stalls: int = 0  # fits: batches whose good later night was not calibrated within LATER_BOUND_S
    outcomes: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def find(self, text: str) -> None:
        if len(self.findings) < 20:
            self.findings.append(text[:600])


class Hang(Exception):
    """An input that took more than ALARM_S."""


def _on_alarm(*_: Any) -> None:
    raise Hang()


# --- mutators ---------------------------------------------------------------------------------------

def _cards(payload: bytes) -> int:
    end = payload.find(b"END" + b" " * 77)
    return max(end // 80, 1) if end > 0 else 36


def _set_card(payload: bytes, key: str, value: str) -> bytes:
    card = f"{key:<8}= {value:>20}".ljust(80).encode()[:80]
    at = payload.find(f"{key:<8}=".encode())
    if at < 0 or at % 80:
        at = (_cards(payload) - 1) * 80  # replace the last card before END
    return payload[:at] + card + payload[at + 80:]


def mutate_fits(good: bytes, rng: random.Random) -> tuple[str, bytes, str]:
    """(mutation, bytes, suffix) from a good raw frame."""
    data = bytearray(good)
    how = rng.choice(["bitflip_header", "bitflip_any", "truncate", "card_value", "card_delete", "bitpix",
                      "naxis", "naxisn", "exptime", "junk_tail", "gzip", "gzip_truncated", "gzip_bomb", "zip",
                      "bz2", "no_end", "garbage"])
    suffix = ".fits"
    if how == "bitflip_header":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(_cards(good) * 80)] ^= 1 << rng.randrange(8)
    elif how == "bitflip_any":
        for _ in range(rng.randint(1, 64)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        data = data[:rng.randrange(len(data))]
    elif how == "card_value":
        card = rng.randrange(_cards(good)) * 80
        data[card + 10:card + 80] = str(rng.choice(JUNK)).ljust(70).encode("ascii", "replace")[:70]
    elif how == "card_delete":
        card = rng.randrange(_cards(good)) * 80
        data = data[:card] + data[card + 80:] + b" " * 80
    elif how in ("bitpix", "naxis", "naxisn", "exptime"):
        key = {"bitpix": "BITPIX", "naxis": "NAXIS", "naxisn": rng.choice(["NAXIS1", "NAXIS2"]), "exptime": "EXPTIME"}[how]
        value = rng.choice(["0", "-1", "7", "64", "-64", "3", "999999", "100000", "'abc'", "nan", "1E400", "-32"])
        data = bytearray(_set_card(bytes(data), key, value))
    elif how == "junk_tail":
        data += os.urandom(rng.randint(1, 20000))
    elif how == "no_end":
        at = bytes(data).find(b"END" + b" " * 77)
        data[at:at + 3] = b"XND"
    elif how == "garbage":
        data = bytearray(os.urandom(rng.randint(1, 6000)))
    if how.startswith("gzip"):
        suffix = ".fits.gz"
        if how == "gzip_bomb":
            data = bytearray(_gzip_bomb(bytes(data[:_cards(good) * 80 + 80]), rng.choice([16, 64, 200])))
        else:
            data = bytearray(gzip.compress(bytes(data), 6))
            if how == "gzip_truncated":
                data = data[:rng.randrange(10, len(data))]
    elif how == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("x.fits", bytes(data) + bytes(rng.choice([1, 50]) << 20))
        data = bytearray(buffer.getvalue())
    elif how == "bz2":
        data = bytearray(bz2.compress(bytes(data)))
    return how, bytes(data), suffix


def _gzip_bomb(header: bytes, megabytes: int) -> bytes:
    packer = zlib_compressobj()
    out = [packer.compress(header.ljust(-(-len(header) // 2880) * 2880, b" "))]
    block = bytes(1 << 20)
    out += [packer.compress(block) for _ in range(megabytes)]
    return b"".join(out + [packer.flush()])


def zlib_compressobj() -> Any:
    import zlib

    return zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16)


def _nodes(document: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _nodes(value, path + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document[:20]):
            found += _nodes(value, path + (index,))
    return found


def mutate_json(document: Any, rng: random.Random) -> tuple[str, str]:
    """(mutation, text) from a JSON document."""
    how = rng.choice(["replace", "replace", "delete", "rename", "deep", "truncate", "byteflip"])
    text_of = json.dumps
    doc = copy.deepcopy(document)
    paths = [p for p in _nodes(doc) if p]
    if how == "truncate":
        text = text_of(doc)
        return how, text[:rng.randrange(len(text))]
    if how == "byteflip":
        text = bytearray(text_of(doc).encode())
        for _ in range(rng.randint(1, 4)):
            text[rng.randrange(len(text))] = rng.randrange(256)
        return how, text.decode("utf-8", "replace")
    if not paths:
        return "junk", text_of(rng.choice(JUNK))
    target = rng.choice(paths)
    parent = doc
    for step in target[:-1]:
        parent = parent[step]
    last = target[-1]
    if how == "replace":
        parent[last] = rng.choice(JUNK)
    elif how == "deep":
        parent[last] = "__DEEP__"
        depth = rng.choice([30, 500, 50_000])
        return how, text_of(doc).replace('"__DEEP__"', "[" * depth + "]" * depth, 1)
    elif how == "delete":
        parent.pop(last) if isinstance(parent, (dict, list)) else None
    elif how == "rename" and isinstance(parent, dict):
        parent[rng.choice(["../../../victim", "", "2026-02-30", "/etc/passwd", "a/b", "\x1b"])] = parent.pop(last)
    return how, text_of(doc)


def mutate_toml(text: str, rng: random.Random) -> tuple[str, str]:
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]
    index = rng.choice(keys)
    key = lines[index].split("=", 1)[0]
    value = rng.choice(["nan", "inf", "-inf", "-1", "0", "1e308", "-1e308", "1e-320", '"text"', "true", "[]",
                        "99999999999999999", "[nan]", "{ a = 1 }", '"\\u001b[2J"'])
    lines[index] = f"{key}= {value}"
    return key.strip(), "\n".join(lines) + "\n"


# --- running ----------------------------------------------------------------------------------------

def _in_process(args: list[str], tally: Tally, what: str) -> tuple[int | None, str]:
    """``astep-cal ARGS`` in this process: (exit code or None, stdout); a raise is a traceback."""
    from astep_cal.frontends import cli

    out, err = io.StringIO(), io.StringIO()
    signal.alarm(ALARM_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(args)
    except Hang:
        tally.hangs += 1
        tally.find(f"hang: {what}")
        return None, ""
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 2
    except BaseException as error:  # noqa: BLE001 (that is the finding)
        tally.tracebacks += 1
        tally.find(f"{what}: {type(error).__name__}: {error}\n{traceback.format_exc()[-400:]}")
        return None, ""
    finally:
        signal.alarm(0)
    if "Traceback" in err.getvalue():
        tally.tracebacks += 1
        tally.find(f"{what}: traceback printed\n{err.getvalue()[-400:]}")
    return code, out.getvalue()


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def fuzz_fits(base: Path, work: Path, count: int, rng: random.Random, tally: Tally) -> int:
    """Batches of mutated frames through ``once`` in its own process; returns the peak RSS (KB)."""
    from astep_cal.devtools.harness import read_ledger

    good = sorted((base / DATE / f"{DATE}-CAMS").glob("*_SCIENCE.fits"))[0].read_bytes()
    peak_kb = 0
    config = work / "no-solve.toml"
    config.write_text("[astrometry]\nenabled = false\n[photometry]\nenabled = false\n")
    while tally.inputs < count:
        root = work / f"batch-{tally.inputs}"
        shutil.copytree(base, root, ignore=shutil.ignore_patterns(".astep-cal", "*-CAMS_CAL"))
        names = {}
        for index in range(min(BATCH, count - tally.inputs)):
            how, payload, suffix = mutate_fits(good, rng)
            name = f"{DATE}_21.{index // 60:02d}.{index % 60:02d}_SCIENCE{suffix}"
            (root / DATE / f"{DATE}-CAMS" / name).write_bytes(payload)
            names[name] = how
            tally.inputs += 1
        started = time.time()
        process = subprocess.Popen([sys.executable, "-m", "astep_cal", "once", str(root), "--config", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_cap_memory)
        try:
            out, err = process.communicate(timeout=BATCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            tally.hangs += 1
            tally.find(f"once hung on batch {root.name}: {sorted(set(names.values()))}")
        peak_kb = max(peak_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # the largest child's
        if "Traceback" in err or process.returncode not in (0, 1):
            tally.tracebacks += 1
            tally.find(f"once exit {process.returncode} on {sorted(set(names.values()))}: {err[-600:]}")
        try:
            night = read_ledger(root)["nights"].get(DATE, {})
        except (OSError, ValueError) as error:
            night = {}
            tally.find(f"no ledger after once ({error}): {err[-600:]}")
        _account(night, names, tally)
        _check_later_night(root, started, names, tally)
        shutil.rmtree(root)
    return peak_kb


def _account(night: dict[str, Any], names: dict[str, str], tally: Tally) -> None:
    frames = night.get("frames", {})
    problems = [Path(p["path"]).name for p in night.get("problems", [])]
    for name, how in names.items():
        seen = (name in frames) + problems.count(name)
        if seen != 1:
            tally.unaccounted += 1
            tally.find(f"{how}: {name} recorded {seen} times")
        elif name in frames:
            tally.count(f"frame {frames[name].get('calibrate', {}).get('status')}")
        else:
            tally.count(next(p["event"] for p in night["problems"] if Path(p["path"]).name == name))


def _check_later_night(root: Path, started: float, names: dict[str, str], tally: Tally) -> None:
    """The good night after the mutated one: every science frame calibrated, within LATER_BOUND_S."""
    raw = sorted(p.name for p in (root / LATER / f"{LATER}-CAMS").glob("*_SCIENCE.fits"))
    cal = list((root / LATER / f"{LATER}-CAMS_CAL").glob("*.fits*"))
    try:
        frames = json.loads((root / ".astep-cal" / "nights" / f"{LATER}.json").read_text()).get("frames", {})
    except (OSError, ValueError):
        frames = {}
    done = [name for name in raw if frames.get(name, {}).get("calibrate", {}).get("status") == "ok"]
    late_s = max((p.stat().st_mtime for p in cal), default=float("inf")) - started
    if not raw or len(done) != len(raw) or late_s > LATER_BOUND_S:
        tally.later_stalls += 1
        tally.find(f"later night stalled ({len(done)}/{len(raw)} calibrated, last CAL after {late_s:.0f} s) "
                   f"behind {sorted(set(names.values()))}")


def fuzz_json(base: Path, work: Path, kind: str, count: int, rng: random.Random, tally: Tally) -> None:
    state = base / ".astep-cal"
    summary = base / DATE / f"{DATE}-CAMS_CAL" / "summary.json"
    sources = {"ledger": [state / "ledger.json", state / "nights" / f"{DATE}.json"], "summary": [summary]}[kind]
    documents = [(path, json.loads(path.read_text())) for path in sources]
    root = work / kind
    (root / ".astep-cal" / "nights").mkdir(parents=True)
    victim = work / "victim.json"
    for _ in range(count):
        path, document = rng.choice(documents)
        how, text = mutate_json(document, rng)
        tally.inputs += 1
        if kind == "summary":
            target = work / "summary.json"
            target.write_text(text)
            code, out = _in_process(["report", str(target)], tally, f"summary {how}")
            if any(c in out for c in "\x1b\x07\r"):
                tally.find(f"summary {how}: control character printed")
                tally.tracebacks += 1
        else:
            shutil.rmtree(root / ".astep-cal")
            shutil.copytree(state, root / ".astep-cal", ignore=shutil.ignore_patterns("lock"))
            (root / ".astep-cal" / path.relative_to(state)).write_text(text)
            victim.write_text("{}")
            code, _ = _in_process(["status", str(root), "--json"], tally, f"ledger {path.name} {how}")
            if victim.read_text() != "{}" or not victim.exists():
                tally.find(f"ledger {how}: a file outside the state directory was touched")
        tally.count(f"exit {code}")


def fuzz_config(work: Path, count: int, rng: random.Random, tally: Tally, shipped: Path) -> None:
    root = work / "config-root"
    root.mkdir()
    text = shipped.read_text()
    config = work / "fuzz.toml"
    for _ in range(count):
        key, mutated = mutate_toml(text, rng)
        config.write_text(mutated)
        tally.inputs += 1
        code, _ = _in_process(["status", str(root), "--config", str(config)], tally, f"config {key}")
        tally.count(f"exit {code}")


def make_base(work: Path) -> Path:
    """A tiny processed night: the good inputs every mutation starts from."""
    from astep_cal.devtools.synthetic import NightSpec, make_night

    base = work / "base"
    for date in (DATE, LATER):
        make_night(base, NightSpec(date=date, start_time=f"{date}T20:00:00", shape=(96, 96), pixel_scale_arcsec=38.4,
                                   fwhm_arcsec=96.0, n_science=1, n_darks=2, n_flats=2, n_flat_darks=1,
                                   n_cosmic_rays=2, n_hot_pixels=3, dead_column=40))
    config = work / "base.toml"
    config.write_text("[astrometry]\nenabled = false\n")
    done = subprocess.run([sys.executable, "-m", "astep_cal", "once", str(base), "--config", str(config)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"the base night failed: {done.stderr[-2000:]}")
    return base


def run(count: int, seed: int, work: Path, shipped: Path, fits: int | None = None) -> dict[str, Any]:
    """``count`` inputs split across the kinds: ``fits`` raw files (default a quarter; each costs a
    calibration), the rest in equal parts."""
    signal.signal(signal.SIGALRM, _on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
    rng = random.Random(seed)
    started = time.monotonic()
    base = make_base(work)
    raw = count // 4 if fits is None else min(fits, count)
    rest = count - raw
    share = {"fits": raw, "ledger": rest // 3, "summary": rest // 3}
    share["config"] = count - sum(share.values())
    tallies = {kind: Tally() for kind in share}
    peak_kb = fuzz_fits(base, work, share["fits"], rng, tallies["fits"])
    for kind in ("ledger", "summary"):
        fuzz_json(base, work, kind, share[kind], rng, tallies[kind])
    fuzz_config(work, share["config"], rng, tallies["config"], shipped)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"date": time.strftime("%Y-%m-%d"), "seed": seed, "inputs": sum(t.inputs for t in tallies.values()),
            "tracebacks": sum(t.tracebacks for t in tallies.values()), "hangs": sum(t.hangs for t in tallies.values()),
            "unaccounted": sum(t.unaccounted for t in tallies.values()),
            "later_night_stalls": tallies["fits"].later_stalls, "later_night_bound_s": LATER_BOUND_S,
            "peak_rss_mb": {"once": round(peak_kb / 1024, 1), "fuzz_process": round(self_kb / 1024, 1)},
            "duration_s": round(time.monotonic() - started, 1),
            "kinds": {kind: vars(tally) for kind, tally in tallies.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutated inputs in all (default 10000)")
    parser.add_argument("--fits", type=int, help="of which mutated raw files (default a quarter)")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    shipped = Path(__file__).resolve().parents[3] / "etc" / "astep-cal.toml"
    with tempfile.TemporaryDirectory(prefix="astep-fuzz-", dir=args.work) as scratch:
        results = run(args.count, args.seed, Path(scratch), shipped, args.fits)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    clean = not (results["tracebacks"] or results["hangs"] or results["unaccounted"] or results["later_night_stalls"])
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())

