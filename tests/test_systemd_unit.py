"""The systemd unit and what `make install` lays out, checked without a running systemd.

`systemd-analyze` judges the unit file itself (syntax, hardening exposure); `make install-files` is run
into a temporary DESTDIR and its config is loaded by the real settings loader. The unit under a real
systemd is `make test-systemd` (tests/systemd/run.sh).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from astep_cal.support.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "service" / "astep-cal.service"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (keys such as SystemCallFilter= repeat)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def seconds(value: str) -> float:
    """systemd time span (the forms the unit uses: 30s, 3min, 1min 30s)."""
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, value
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


@needs_analyze
def test_hardening_exposure_at_most_2():
    completed = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                               capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for astep-cal\.service: (\d+(?:\.\d+)?)", completed.stdout)
    assert match, completed.stdout[-2000:] + completed.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, completed.stdout


@needs_analyze
def test_unit_verifies_without_a_warning(tmp_path):
    # verify checks that ExecStart exists: point it at this environment's real astep-cal command.
    command = Path(sys.prefix) / "bin" / "astep-cal"
    assert command.exists(), command
    unit = tmp_path / "astep-cal.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/astep-cal", str(command)))
    completed = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or unparsable values: it only warns, so no output is the test.
    assert completed.returncode == 0 and not (completed.stdout + completed.stderr).strip(), completed.stderr


def test_unit_agrees_with_the_daemon():
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"] == ["/usr/local/bin/astep-cal run --config /etc/astep-cal/astep-cal.toml"]
    assert unit["Restart"] == ["on-failure"] and unit["User"] == ["astep-cal"]
    assert "yes" in unit["PrivateTmp"]  # solve-field's temporary directories
    daemon = Settings().daemon
    # The daemon's stop: up to stop_grace_s for the frame in progress, plus the 2 s solve-field grace.
    assert seconds(unit["TimeoutStopSec"][0]) >= daemon.stop_grace_s + 5
    # Pings come every WatchdogSec/2 from a main thread that ticks every second.
    assert seconds(unit["WatchdogSec"][0]) >= 60
    # Memory bounded by the unit from mem_limit_gb (issue 24): throttled at it, ended at 1.5x.
    gigabytes = {key: float(unit[key][0].rstrip("G")) for key in ("MemoryHigh", "MemoryMax")}
    assert gigabytes["MemoryHigh"] == Settings().mem_limit_gb
    assert gigabytes["MemoryMax"] == 1.5 * Settings().mem_limit_gb
    assert int(unit["LimitNOFILE"][0]) >= 4096
    assert int(unit["CPUWeight"][0]) < 100 and int(unit["IOWeight"][0]) < 100
    # The sysusers file creates the unit's user.
    sysusers = (REPO / "service" / "astep-cal.sysusers.conf").read_text()
    assert re.search(r"^u astep-cal\s", sysusers, re.M)


def make_install_files(destdir: Path, *variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(REPO), "install-files", f"DESTDIR={destdir}", *variables],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_install_files_lay_out_unit_config_and_user(tmp_path):
    completed = make_install_files(tmp_path, "DATA_ROOT=/data/astep", "PREFIX=/usr")
    assert completed.returncode == 0, completed.stderr
    unit = unit_settings((tmp_path / "etc/systemd/system/astep-cal.service").read_text())
    assert unit["ExecStart"] == ["/usr/bin/astep-cal run --config /etc/astep-cal/astep-cal.toml"]
    assert unit["ReadWritePaths"] == ["-/data/astep"]
    assert (tmp_path / "usr/bin/astep-cal").readlink() == Path("/opt/astep-cal/bin/astep-cal")
    assert (tmp_path / "usr/lib/sysusers.d/astep-cal.conf").is_file()

    # The installed config is valid for the real loader; its ledger is in the unit's StateDirectory.
    config = tmp_path / "etc/astep-cal/astep-cal.toml"
    settings = load_settings(config)
    assert settings.data_root == "/data/astep"
    assert Path(settings.ledger).parent == Path("/var/lib") / unit["StateDirectory"][0]

    # A second install keeps the site's edited config.
    config.write_text(config.read_text().replace("mem_limit_gb = 2.0", "mem_limit_gb = 3.0"))
    again = make_install_files(tmp_path, "DATA_ROOT=/data/astep", "PREFIX=/usr")
    assert again.returncode == 0, again.stderr
    assert "keeping existing" in again.stdout
    assert load_settings(config).mem_limit_gb == 3.0
