"""Structured logging with structlog: readable in a terminal, JSON lines in files, fields in journald.

Every event has a stable name (``frame_calibrated``, ``frame_failed`` …, catalogued in docs/pages/log-events.md) and
typed fields (``night``, ``frame``, ``stage``, ``duration_s``, ``error``), so monitoring can be written
against the names rather than against prose.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}


def _journal_renderer(_logger: Any, method: str, event_dict: dict[str, Any]) -> str:
    """Send the event to journald with every field as an upper-case journal field (EVENT=, NIGHT= …).

    Runs after ``format_exc_info``: an exception's traceback is the ``EXCEPTION`` field and follows
    the one-line summary in ``MESSAGE`` (what ``journalctl -u astep-cal`` shows), instead of the
    ``EXC_INFO=True`` it was reduced to before.
    """
    from systemd import journal  # imported here: only needed under systemd

    journal.send(**journal_fields(method, event_dict))
    raise structlog.DropEvent


def journal_fields(method: str, event_dict: dict[str, Any]) -> dict[str, str]:
    """The journal fields of one event (``MESSAGE`` included), as ``journal.send`` takes them."""
    event_dict = dict(event_dict)
    event = str(event_dict.pop("event", ""))
    fields = {key.upper(): str(value) for key, value in event_dict.items() if key not in ("timestamp",)}
    message = event + "".join(f" {k.lower()}={v}" for k, v in fields.items() if k not in ("LEVEL", "EXCEPTION"))
    if "EXCEPTION" in fields:
        message += "\n" + fields["EXCEPTION"].rstrip()
    return {"MESSAGE": message, "EVENT": event, "PRIORITY": str(_PRIORITY.get(method, 6)),
            "SYSLOG_IDENTIFIER": "astep-cal", **{k: v for k, v in fields.items() if k not in _RESERVED}}


_RESERVED = ("MESSAGE", "EVENT", "PRIORITY", "SYSLOG_IDENTIFIER")


def choose_format(requested: str) -> str:
    """``auto``: journald under systemd, colours in a terminal, JSON lines otherwise."""
    if requested != "auto":
        return requested
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        return "journal"
    return "console" if sys.stderr.isatty() else "json"


def configure(log_format: str = "auto", level: str = "info") -> str:
    """Configure structlog for the whole process; returns the format chosen."""
    chosen = choose_format(log_format)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if chosen == "journal":
        processors += [structlog.processors.format_exc_info, _journal_renderer]
    elif chosen == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=True)]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return chosen


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("astep_cal").bind(**bound)
