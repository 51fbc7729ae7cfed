"""Journald output keeps tracebacks: an exception logged by the daemon reaches the journal as an
``EXCEPTION`` field and in ``MESSAGE`` (it was reduced to ``EXC_INFO=True`` before).

The journal path is exercised for real as far as this machine allows: libsystemd's ``sd_journal_sendv``
(through systemd-python) sends the native journal protocol to ``/run/systemd/journal/socket``; the test
runs the logging process in a private mount namespace whose ``/run`` is a tmpfs where it listens on that
socket itself and decodes what arrives. (tests/systemd/run.sh checks the field in a real journald.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from astep_cal.support.logs import journal_fields

LISTENER = textwrap.dedent('''
    import json, os, socket, struct
    from astep_cal.support import logs

    os.makedirs("/run/systemd/journal")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind("/run/systemd/journal/socket")
    logs.configure("journal", "info")
    try:
        {}["missing"]
    except KeyError:
        logs.get_logger().exception("worker_error", error="KeyError: 'missing'")
    sink.settimeout(10)
    data, fields = sink.recv(1 << 20), {}
    while data:  # KEY=value\\n, or KEY\\n<64-bit little-endian length><value>\\n for values with newlines
        line, _, rest = data.partition(b"\\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            data = rest
        else:
            key, (size,) = line, struct.unpack("<Q", rest[:8])
            value, data = rest[8:8 + size], rest[9 + size:]
        fields[key.decode()] = value.decode()
    print(json.dumps(fields))
''')


def _raise_and_log_fields() -> dict[str, str]:
    import structlog

    try:
        {}["missing"]
    except KeyError:
        event = structlog.processors.format_exc_info(None, "exception", {"event": "worker_error", "exc_info": True,
                                                                          "error": "KeyError: 'missing'"})
    return journal_fields("exception", event)


def test_journal_fields_carry_the_traceback():
    fields = _raise_and_log_fields()
    assert fields["EVENT"] == "worker_error" and fields["PRIORITY"] == "3"
    assert "Traceback (most recent call last)" in fields["EXCEPTION"] and "KeyError: 'missing'" in fields["EXCEPTION"]
    first, _, rest = fields["MESSAGE"].partition("\n")
    assert first == "worker_error error=KeyError: 'missing'"
    assert rest.startswith("Traceback (most recent call last)") and "_raise_and_log_fields" in rest


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_a_logged_exception_reaches_the_journal_socket_with_its_traceback():
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs tmpfs /run && exec "$0" -c "$1"', sys.executable, LISTENER],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    assert fields["EVENT"] == "worker_error" and fields["SYSLOG_IDENTIFIER"] == "astep-cal"
    assert "Traceback (most recent call last)" in fields["EXCEPTION"]
    assert "KeyError: 'missing'" in fields["EXCEPTION"]
    assert "Traceback (most recent call last)" in fields["MESSAGE"]
    assert "EXC_INFO" not in fields
