"""`make demo` (the README's first set-up command) runs end to end and meets its own accuracy claims."""

from __future__ import annotations

from conftest import run_cli_subprocess


def test_demo_processes_a_night_and_reports_the_accuracy(tmp_path):
    done = run_cli_subprocess("demo", "--dir", tmp_path / "demo", timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "3 calibrated, 3 solved, 0 failed" in done.stdout
    assert "Traceback" not in done.stderr
    assert "Warning" not in done.stderr, done.stderr  # no Python warning on the console (VerifyWarning ...)
