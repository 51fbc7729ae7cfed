"""A command run as root on the service's tree runs as the tree's owner.

Operators run ``astep-cal once``, ``retry``, ``reprocess`` … with sudo, on a data root and a state
directory that belong to the service account (``astep-cal``, deploy/layout.sh). Run as root, those
commands left root-owned ``_CAL`` directories, CAL files and ledger files behind that the service then
could not write (its next night failed with ``PermissionError``), and every file they opened was opened
with root's rights in directories the service account and the transfer group can write.

So before anything is read or written under the tree, a process running as root looks at who owns the
state directory (the ledger's directory; the data root when there is no state yet) and, when that is
not root, becomes that user: its groups (``os.setgroups``, from the user database when the uid has an
entry), then its gid, then its uid. This cannot be undone in the process, which is the point: nothing
after it can write as root. A tree owned by root is left as it is (root's own tree, a test machine).
"""

from __future__ import annotations

import os
import pwd
import sys
import tempfile
from pathlib import Path

from astep_cal.support.settings import Settings


def tree_owner(state_dir: Path, root: Path) -> tuple[int, int] | None:
    """(uid, gid) owning the state directory, else the data root: the first of them that exists and is not
    root's; None when neither is. A root-owned state directory under a data root the service owns is the
    trace of an earlier command run as root (before this module): the data root's owner still decides,
    or every later command run as root would leave more root-owned files the service cannot write."""
    for candidate in (state_dir, root):
        try:
            status = os.stat(candidate)
        except OSError:
            continue
        if status.st_uid != 0:
            return status.st_uid, status.st_gid
    return None


def become(uid: int, gid: int) -> str:
    """Switch this process to ``uid``/``gid`` for good (groups first: after ``setuid`` nothing may change
    them); returns the user's name. ``HOME`` follows, so that libraries write their caches there."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:  # a uid without an entry in the user database: its own gid as its only group
        name, groups, home = str(uid), [gid], None
    else:
        name, home = entry.pw_name, entry.pw_dir
        groups = sorted(set(os.getgrouplist(name, gid)))
    try:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as error:
        raise PermissionError(f"cannot switch to the owner of the tree ({name}, uid {uid}): {error}") from None
    os.environ.update({"USER": name, "LOGNAME": name})
    # A uid without an entry has no home: root's (HOME=/root, 0700) would stay, and astropy's first look at
    # its configuration there failed the command ("Permission denied: '/root/.astropy/config'", found by
    # make test with Debian's /usr/bin/python3). It gets a private directory of its own instead.
    os.environ["HOME"] = home or tempfile.mkdtemp(prefix=f"astep-cal-home-{uid}-")
    return name


def run_as_tree_owner(settings: Settings, given_root: str | None) -> str | None:
    """When running as root on a tree someone else owns, become that owner; returns their name (or None)."""
    if os.geteuid() != 0:
        return None
    root_text = given_root or settings.data_root
    if not root_text:
        return None  # the command reports the missing root itself
    root = Path(root_text).resolve()
    state_dir = settings.ledger_path(root).parent
    owner = tree_owner(state_dir, root)  # before any switch: root may stat all
    if owner is None:
        return None
    state_is_roots = state_dir.exists() and state_dir.stat().st_uid == 0
    name = become(*owner)
    print(f"astep-cal: running as {name} (uid {owner[0]}), the owner of {root}'s state, not as root",
          file=sys.stderr)
    if state_is_roots:
        print(f"astep-cal: the state directory {state_dir} belongs to root (an earlier command run as root?): "
              f"give it back to the service with 'chown -R {name}: {state_dir}'", file=sys.stderr)
    return name
