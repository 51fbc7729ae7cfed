"""The set-up from a clean clone: `make venv` with the oldest interpreter pip the README supports.

Debian bookworm's `/usr/bin/python3 -m venv` brings pip 23.0.1, which resolves an extra such as
`dask[array]` (required by dask-image) against the index instead of the pinned `dask`, and refused the
whole lock the day a newer dask appeared there. This test puts such a newer release in front of pip
(a find-links folder holding `dask 2099.1.0` and `numpy 2099.1.0`, as if published today) and runs the
real `make venv` in a clean clone with the network available: it must succeed and install exactly the
locked versions. On the old recipe (`pip install --require-hashes -r requirements.lock ...` with the
interpreter's pip) it fails as it did on 2026-12-06.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bundle import fake_wheel, lock_pins

REPO = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def debian_pip_version() -> str:
    out = subprocess.run([str(DEBIAN_PYTHON), "-c", "import ensurepip; print(ensurepip.version())"],
                         capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.skipif(not DEBIAN_PYTHON.exists(), reason="no Debian /usr/bin/python3 on this machine")
def test_make_venv_from_a_clean_clone_ignores_newer_releases_on_the_index(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # The working tree's set-up files and package, committed or not (the test checks this tree, not HEAD).
    for name in ("Makefile", "requirements-bootstrap.lock", "requirements.lock", "requirements-test.lock",
                 "pyproject.toml"):
        shutil.copy2(REPO / name, clone / name)
    shutil.rmtree(clone / "daemon")
    shutil.copytree(REPO / "daemon", clone / "daemon", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    newer = tmp_path / "newer-releases"
    newer.mkdir()
    fake_wheel(newer, "dask", "2099.1.0")
    fake_wheel(newer, "numpy", "2099.1.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env["PIP_FIND_LINKS"] = str(newer)  # in front of the index, as a release published today would be
    done = subprocess.run(["make", "-C", str(clone), "venv", f"PYTHON={DEBIAN_PYTHON}"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    python = clone / ".venv" / "bin" / "python"
    locked = {**lock_pins(clone / "requirements.lock"), **lock_pins(clone / "requirements-test.lock"),
              **lock_pins(clone / "requirements-bootstrap.lock")}
    report = subprocess.run(
        [str(python), "-c", "import json, importlib.metadata as m; "
                            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version "
                            "for d in m.distributions()}))"],
        capture_output=True, text=True, check=True)
    import json

    installed = json.loads(report.stdout)
    for name, (version, _) in locked.items():
        assert installed.get(name) == version, f"{name}: {installed.get(name)} installed, {version} locked"
    extra = set(installed) - set(locked) - {"astep-cal"}
    assert not extra, f"installed but not locked: {sorted(extra)}"
    assert subprocess.run([str(clone / ".venv" / "bin" / "astep-cal"), "--version"]).returncode == 0


def test_the_readme_names_the_supported_interpreters_and_pip():
    readme = (REPO / "README.md").read_text()
    assert "pip 23.0.1" in readme and "/usr/bin/python3" in readme
    if DEBIAN_PYTHON.exists():
        assert debian_pip_version() in readme or debian_pip_version() == ""
