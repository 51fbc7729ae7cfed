"""The ``astep-cal`` command: ``once`` (batch, what ``cal.sh DATA --force`` did), ``reprocess`` (the
archive on a Dask cluster), ``run`` (the service), ``rescan``, ``retry``, ``status``, ``report``, ``demo``.

Exit codes (stable, for scripts and monitoring):
  0  everything asked for is done (status, report: nothing needs attention)
  1  some frames failed, are blocked (missing calibrations) or are not solved
  2  bad usage or configuration
  3  another astep-cal process holds the data root
  4  the data root does not exist or is not readable
  5  the storage failed under the run (disk full, data root gone): nothing lost, run again later
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from astep_cal import __version__
from astep_cal.frontends.health_cmds import add_commands, alert_lines
from astep_cal.state.ledger import Ledger, LedgerLocked, RootLock
from astep_cal.support.config import ConfigError, Settings, load_settings, with_overrides
from astep_cal.support.logs import configure, get_logger
from astep_cal.support.storage import StorageUnavailable, root_present

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE, EXIT_LOCKED, EXIT_NO_ROOT, EXIT_STORAGE = 0, 1, 2, 3, 4, 5


class ProgressLine:
    """A one-line progress bar on a terminal (nothing when stdout is not a terminal)."""

    def __init__(self, stream: Any = sys.stdout):
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, night: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        self.stream.write(f"\r{night} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(Path(args.config) if args.config else None)
    return with_overrides(settings, mem_limit_gb=getattr(args, "mem_limit", None),
                          ledger=getattr(args, "ledger", None))


def _root(args: argparse.Namespace, settings: Settings | None = None) -> Path:
    """ROOT from the command line, else (when ``settings`` are given) ``data_root`` from the configuration."""
    given = args.root or (settings.data_root if settings is not None else None)
    if not given:
        raise ConfigError("no data root: give ROOT or set data_root in the config")
    root = Path(given).resolve()
    if not root_present(root):
        raise FileNotFoundError(f"data root {root} does not exist or is not a directory")
    return root


def cmd_once(args: argparse.Namespace) -> int:
    from astep_cal.engine.pipeline import process_root
    from astep_cal.formats.names import valid_unit
    from astep_cal.state.recovery import open_ledger

    settings = _settings(args)
    configure(settings.logging.format, settings.logging.level)
    root = _root(args)
    if args.night and not valid_unit(args.night):
        raise ConfigError(f"--night {args.night}: not a YYYY-MM-DD date nor a night key YYYY-MM-DD-CAMERA")
    ledger_path = settings.ledger_path(root)
    with RootLock(ledger_path):
        ledger = open_ledger(ledger_path, root, get_logger())
        results = process_root(root, settings, ledger, nights=[args.night] if args.night else None,
                               force=args.force, progress=ProgressLine())
    for result in results:
        if result.to_do:
            print(f"{result.date}: {result.calibrated} calibrated, {result.solved} solved, "
                  f"{result.failed} failed, {result.blocked} blocked")
    if args.night and not results:
        print(f"no night {args.night} under {root}", file=sys.stderr)
        return EXIT_USAGE
    from astep_cal.frontends.status import night_rows

    attention = any(row["attention"] for row in night_rows(ledger, settings))
    return EXIT_ATTENTION if attention else EXIT_OK


def cmd_reprocess(args: argparse.Namespace) -> int:
    """The archive on a Dask cluster: same engine and ledger as ``once``, many machines."""
    import signal

    from astep_cal.frontends.reprocess import (
        ClusterError,
        check_workers,
        open_client,
        parse_night_range,
        reprocess_root,
    )
    from astep_cal.frontends.status import night_rows
    from astep_cal.state.recovery import open_ledger

    settings = _settings(args)
    configure(settings.logging.format, settings.logging.level)
    root = _root(args)
    first, last = parse_night_range(args.nights)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: need at least 1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: ledger saved, cluster closed
    ledger_path = settings.ledger_path(root)
    with RootLock(ledger_path):
        ledger = open_ledger(ledger_path, root, get_logger())
        try:
            with open_client(args.scheduler, args.workers) as client:
                n_workers = check_workers(client, root)
                dashboard = client.dashboard_link if _has_dashboard(client) else "not available (bokeh missing)"
                print(f"Dask scheduler {client.scheduler.address}, {n_workers} worker(s); dashboard: {dashboard}",
                      flush=True)
                results = reprocess_root(client, root, settings, ledger, first=first, last=last,
                                         force=args.force, progress=ProgressLine())
        except ClusterError as error:
            print(f"astep-cal: {error}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as error:  # e.g. a full disk under the ledger: what was saved before stays valid
            print(f"astep-cal: reprocessing stopped: {error}", file=sys.stderr)
            return EXIT_ATTENTION
    for result in results:
        if result.to_do:
            print(f"{result.date}: {result.calibrated} calibrated, {result.solved} solved, "
                  f"{result.failed} failed, {result.blocked} blocked")
    if not results:
        print(f"astep-cal: no night{' ' + args.nights if args.nights else ''} under {root}", file=sys.stderr)
        return EXIT_USAGE
    dates = {result.date for result in results}
    rows = [row for row in night_rows(ledger, settings) if row["night"] in dates]
    return EXIT_ATTENTION if any(row["attention"] for row in rows) else EXIT_OK


def _has_dashboard(client: Any) -> bool:
    return "dashboard" in client.scheduler_info().get("services", {})


def cmd_status(args: argparse.Namespace) -> int:
    from astep_cal.frontends.control import read_activity
    from astep_cal.frontends.status import night_rows, render_table

    settings = _settings(args)
    root = _root(args, settings)
    ledger_path = settings.ledger_path(root)
    rows = night_rows(Ledger.load(ledger_path), settings) if ledger_path.exists() else []
    activity = read_activity(ledger_path)
    attention = any(row["attention"] for row in rows)
    health = alert_lines(Ledger.load(ledger_path), ledger_path.parent) if ledger_path.exists() else []
    if args.json:
        print(json.dumps({"root": str(root), "attention": attention, "nights": rows,
                          "daemon": activity, "health_alerts": health}, indent=1))
    elif not ledger_path.exists():
        print(f"no ledger at {ledger_path}: nothing processed yet")
    else:
        print("\n".join([render_table(rows)] + health))
    if activity and not args.json:
        from astep_cal.support.text import printable

        print(f"daemon (pid {activity['pid']}): {printable(activity['activity'])}")
    return EXIT_ATTENTION if attention else EXIT_OK


def _load_summaries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The night's summaries, built from the ledger — a date gives one per camera (``DATE``, ``DATE-CAMB``,
    ``DATE-CAMR``...), a night key its own; or a summary.json file given instead of a date."""
    from astep_cal.formats.names import unit_date, valid_unit
    from astep_cal.formats.summary import build_summary, is_summary

    given = Path(args.night)
    if not valid_unit(args.night) and given.is_file():
        from astep_cal.formats.summary_schema import summary_problem
        from astep_cal.support.text import printable

        try:
            document = json.loads(given.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise ConfigError(f"{printable(given)}: not a summary.json ({printable(error)})") from None
        if not is_summary(document):
            raise ConfigError(f"{printable(given)}: not an astep-cal summary.json (schema 1)")
        problem = summary_problem(document)
        if problem is not None:
            raise ConfigError(f"{printable(given)}: not a valid summary.json: {printable(problem)}")
        return [document]
    if not valid_unit(args.night):
        raise ConfigError(f"{args.night}: not a YYYY-MM-DD date, a night key YYYY-MM-DD-CAMERA nor a summary.json file")
    settings = _settings(args)
    root = _root(args, settings)
    ledger_path = settings.ledger_path(root)
    ledger = Ledger.load(ledger_path) if ledger_path.exists() else None
    keys = [] if ledger is None else [k for k in ledger.dates() if k == args.night or (
        args.night == unit_date(args.night) and unit_date(k) == args.night)]
    nights = [(key, ledger.peek(key)) for key in keys]
    return [build_summary(key, night, settings) for key, night in nights if night and night.get("frames")]


def cmd_report(args: argparse.Namespace) -> int:
    from astep_cal.formats.report import render_report

    documents = _load_summaries(args)
    if not documents:
        print(f"astep-cal: no processed frames for night {args.night}", file=sys.stderr)
        return EXIT_USAGE
    from astep_cal.support.text import printable

    # JSON escapes control characters itself; the text report shows them as escapes (a file name or an
    # error message may hold a terminal escape sequence). Several cameras: one after the other (JSON: a list).
    try:
        text = (json.dumps(documents[0] if len(documents) == 1 else documents, indent=1) if args.json else
                "\n\n".join(printable(render_report(d), keep_newlines=True) for d in documents))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:  # a layout the check let by
        print(f"astep-cal: cannot render this summary: {printable(type(error).__name__)}: {printable(error)}",
              file=sys.stderr)
        return EXIT_USAGE
    print(text)
    return EXIT_ATTENTION if any(d.get("attention") for d in documents) else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from astep_cal.frontends.service import run_daemon

    return run_daemon(Path(args.config) if args.config else None, args.root)


def cmd_rescan(args: argparse.Namespace) -> int:
    import os
    import signal

    from astep_cal.frontends.control import running_daemon_pid

    settings = _settings(args)
    root = Path(args.root or settings.data_root or ".").resolve()
    pid = running_daemon_pid(settings.ledger_path(root))
    if pid is None:
        print(f"astep-cal: no running daemon holds {root}", file=sys.stderr)
        return EXIT_ATTENTION
    os.kill(pid, signal.SIGHUP)
    print(f"rescan requested from daemon pid {pid}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    import os
    import signal

    from astep_cal.engine.rules import clear_failures
    from astep_cal.frontends.control import running_daemon_pid, write_retry_request

    settings = _settings(args)
    root = _root(args)
    nights = [args.night] if args.night else None
    ledger_path = settings.ledger_path(root)
    pid = running_daemon_pid(ledger_path)
    if pid is not None:  # the daemon owns the ledger: leave it a request and wake it
        write_retry_request(ledger_path, nights)
        os.kill(pid, signal.SIGHUP)
        print(f"retry requested from daemon pid {pid}")
        return EXIT_OK
    with RootLock(ledger_path):
        ledger = Ledger.load(ledger_path)
        cleared = clear_failures(ledger, nights)
        ledger.release_all()
    print(f"{cleared} frame(s) will be retried by the next run")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from astep_cal.devtools.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None)


def _reader_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    """The options of the commands that only read the state (`status`, `report`)."""
    parser.add_argument("root", nargs="?", help="data root (default: data_root from the config)")
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("--config")
    parser.add_argument("--ledger")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astep-cal", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"astep-cal {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    once = commands.add_parser("once", help="calibrate and solve every night not done yet, then exit")
    once.add_argument("root", help="data root holding YYYY-MM-DD night directories")
    once.add_argument("--night", help="only this night (YYYY-MM-DD: every camera; YYYY-MM-DD-CAMR: one)")
    once.add_argument("--force", action="store_true", help="redo the night(s) even if done")
    once.add_argument("--mem-limit", type=float, metavar="GB", help="peak memory bound (default 2.0)")
    once.add_argument("--config", help="TOML configuration file")
    once.add_argument("--ledger", help="ledger file (default ROOT/.astep-cal/ledger.json)")
    once.set_defaults(func=cmd_once)

    reprocess = commands.add_parser("reprocess", help="reprocess the archive on a Dask cluster")
    reprocess.add_argument("root", help="data root, at the same path on every worker")
    reprocess.add_argument("--nights", metavar="FROM..TO", help="only these nights (inclusive; FROM.. or ..TO)")
    where = reprocess.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N",
                       help="worker processes of a local cluster (default: one per core)")
    reprocess.add_argument("--force", action="store_true", help="redo the night(s) even if done")
    reprocess.add_argument("--mem-limit", type=float, metavar="GB", help="peak memory bound per worker (default 2.0)")
    reprocess.add_argument("--config", help="TOML configuration file")
    reprocess.add_argument("--ledger", help="ledger file (default ROOT/.astep-cal/ledger.json)")
    reprocess.set_defaults(func=cmd_reprocess)

    status = commands.add_parser("status", help="one row per night, and the daemon's activity; exit 1 if "
                                                "something needs attention")
    _reader_options(status, json_help="machine-readable output (for monitoring)")
    status.set_defaults(func=cmd_status)

    report = commands.add_parser("report", help="print one night's summary (frames, masters, metrics, failures)")
    report.add_argument("night", metavar="DATE", help="YYYY-MM-DD (every camera of the night), a night key "
                        "YYYY-MM-DD-CAMERA, or the path of a night's summary.json")
    _reader_options(report, json_help="the summary document as JSON")
    report.set_defaults(func=cmd_report)

    run = commands.add_parser("run", help="the long-running service: watch the data root and process nights")
    run.add_argument("--config", help="TOML configuration file (e.g. /etc/astep-cal/astep-cal.toml)")
    run.add_argument("--root", help="data root (overrides data_root in the config)")
    run.set_defaults(func=cmd_run)

    rescan = commands.add_parser("rescan", help="ask the running daemon to reload its config and rescan")
    rescan.add_argument("--config")
    rescan.add_argument("--root", help="data root (default: data_root from the config)")
    rescan.add_argument("--ledger")
    rescan.set_defaults(func=cmd_rescan)

    retry = commands.add_parser("retry", help="clear failed frames so they are tried again")
    retry.add_argument("root")
    retry.add_argument("--night", help="only this night (YYYY-MM-DD: every camera; YYYY-MM-DD-CAMR: one)")
    retry.add_argument("--config")
    retry.add_argument("--ledger")
    retry.set_defaults(func=cmd_retry)

    demo = commands.add_parser("demo", help="generate a synthetic night, process it, report the accuracy")
    demo.add_argument("--dir", help="where to put the demo data (default: a new temporary directory)")
    demo.set_defaults(func=cmd_demo)
    add_commands(commands, _settings, _root)
    return parser


# Commands that read or write a data root and its state: run as root, they run as the tree's owner.
ON_THE_TREE = {"once", "reprocess", "run", "rescan", "retry", "status", "report", "trends", "ack"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ON_THE_TREE:
            from astep_cal.frontends.privileges import run_as_tree_owner

            run_as_tree_owner(_settings(args), args.root)
        return args.func(args)
    except ConfigError as error:
        print(f"astep-cal: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerLocked as error:
        print(f"astep-cal: {error}", file=sys.stderr)
        return EXIT_LOCKED
    except StorageUnavailable as error:
        get_logger().error("storage_unavailable", error=str(error))
        print(f"astep-cal: {error}; what was done is kept, run again when the storage is back",
              file=sys.stderr)
        return EXIT_STORAGE
    except (FileNotFoundError, NotADirectoryError, PermissionError) as error:
        print(f"astep-cal: {error}", file=sys.stderr)
        return EXIT_NO_ROOT
    except KeyboardInterrupt:
        print("astep-cal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
