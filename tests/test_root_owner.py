"""A command run as root on the service's tree runs as the tree's owner (issue 24 #6): `once`, `retry`
and `status` as root leave no root-owned `_CAL` directory, CAL file or ledger file the service could not
write. The tree is given to `nobody` (65534) and to a uid without a user-database entry."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import NO_SOLVE, REPO, make_night, small_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the situation under test)")


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(_where_others_can_run([sys.executable, "-m", "astep_cal", *map(str, args)]),
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@functools.cache
def _staging() -> Path:
    return Path(tempfile.mkdtemp(prefix="astep-python-"))  # an empty mount point, one per session


def _where_others_can_run(command: list[str]) -> list[str]:
    """This machine's Python lives under /root (0700): once the command is another user it could not
    import the rest of the standard library. On a station Python is under /usr or /opt. Here the command
    runs in a private mount namespace whose /root is an empty tmpfs (0755) holding only the directory
    of the interpreter, bind-mounted; nothing changes outside that namespace."""
    prefix = Path(sys.base_prefix).resolve()
    hidden = next((p for p in reversed(prefix.parents) if not p.stat().st_mode & 0o001), None)
    if hidden is None:
        return command
    if shutil.which("unshare") is None:
        pytest.skip(f"the interpreter is under {hidden}, which other users cannot enter, and no unshare(1)")
    inner = hidden / prefix.relative_to(hidden).parts[0]
    staging = _staging()
    script = ('mount --bind "$1" "$2" && mount -t tmpfs -o mode=0755 tmpfs "$3" && mkdir -p "$1" && '
              'mount --bind "$2" "$1" && shift 3 && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(inner), str(staging),
            str(hidden), *command]


def _owners(tree: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(tree)): (p.lstat().st_uid, p.lstat().st_gid) for p in [tree, *tree.rglob("*")]}


def _chown_tree(tree: Path, uid: int, gid: int) -> None:
    for path in [tree, *tree.rglob("*")]:
        os.lchown(path, uid, gid)


@pytest.fixture
def owned_tree():
    """A directory anyone may traverse (pytest's tmp_path is root's 0700), removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="astep-owner-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


@pytest.mark.parametrize("uid", [65534, 54321])  # nobody; a uid no user database knows
def test_once_and_retry_as_root_write_as_the_owner_of_the_tree(owned_tree, uid):
    date = "2026-07-01"
    root = owned_tree / "data"
    make_night(root, small_spec(date=date, shape=(128, 128), dead_column=40, n_science=2, n_darks=2, n_flats=2, n_flat_darks=1))
    config = owned_tree / "no-solve.toml"
    config.write_text(NO_SOLVE + "[photometry]\nenabled = false\n")
    (root / ".astep-cal").mkdir()  # the service's state directory, as the service account made it
    _chown_tree(root, uid, uid)

    done = _cli("once", root, "--config", config)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    written = _owners(root)
    assert f"{date}/{date}-CAMS_CAL" in written and ".astep-cal/ledger.json" in written
    assert any(name.endswith(".fits.fz") or name.endswith(".fits") for name in written if "_CAL/" in name)
    assert {owner for owner in written.values()} == {(uid, uid)}, \
        {name: owner for name, owner in written.items() if owner != (uid, uid)}
    assert f"(uid {uid})" in done.stderr  # says whom it runs as

    for args in (("retry", root, "--config", config), ("status", root, "--config", config),
                 ("once", root, "--config", config, "--force")):
        done = _cli(*args)
        assert done.returncode in (0, 1), (args, done.stderr[-2000:])
        assert {owner for owner in _owners(root).values()} == {(uid, uid)}, args


def test_a_root_owned_tree_is_left_to_root(owned_tree):
    root = owned_tree / "data"
    (root / ".astep-cal").mkdir(parents=True)
    done = _cli("status", root)
    assert done.returncode == 0, done.stderr
    assert "running as" not in done.stderr


def test_a_state_directory_owned_by_another_account_decides_over_the_data_root(owned_tree):
    """The ledger elsewhere (config `ledger`, e.g. /var/lib/astep-cal): its directory's owner is the service."""
    root, state = owned_tree / "data", owned_tree / "state"
    root.mkdir()
    state.mkdir()
    os.chown(root, 65534, 65534)
    os.chown(state, 54321, 54321)
    config = owned_tree / "c.toml"
    config.write_text(f'ledger = "{state}/ledger.json"\n')
    done = _cli("retry", root, "--config", config)
    assert done.returncode == 0, done.stderr
    assert {(p.stat().st_uid, p.stat().st_gid) for p in state.iterdir()} == {(54321, 54321)}
    assert "(uid 54321)" in done.stderr


def test_a_root_owned_state_directory_left_by_an_earlier_root_run_does_not_keep_commands_root(tmp_path):
    """An earlier ``sudo astep-cal once`` (before commands switched owner) left ``ROOT/.astep-cal`` owned by
    root under a data root the service owns: the data root's owner decides. Before, every later command run
    as root stayed root and left more root-owned files the service could not write."""
    from astep_cal.frontends.privileges import tree_owner

    root, state = tmp_path / "data", tmp_path / "data" / ".astep-cal"
    state.mkdir(parents=True)
    os.chown(root, 65534, 65534)
    assert tree_owner(state, root) == (65534, 65534)
    os.chown(state, 65533, 65533)
    assert tree_owner(state, root) == (65533, 65533)  # a state directory the service owns decides first
    os.chown(root, 0, 0)
    os.chown(state, 0, 0)
    assert tree_owner(state, root) is None  # root's own tree
