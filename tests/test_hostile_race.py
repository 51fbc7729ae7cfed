"""A temp-file swap race (issue 24 #4): another process that may write the directory (the service
account, the transfer group) keeps replacing the temporary files of atomic writes, and the target
file itself, with symlinks to a victim file while a command running as root writes. Nothing may be
written through a link: the victim stays as it was, every write either lands in a regular file of its
own or is refused, and the target is never left a link."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import struct
import time

import pytest

from astep_cal.frontends.control import RETRY_REQUEST, write_retry_request
from astep_cal.support.storage import TEMP_MARKER, atomic_write

VICTIM_TEXT = b"root:$6$precious:19000:0:99999:7:::\n"


def _swapper(directory: str, victim: str, targets: tuple[str, ...], stop: "multiprocessing.Event") -> None:
    """The attacker: told by inotify of every file created in the directory, it replaces each temporary
    file (and every target) with a link to the victim at once — within microseconds of ``mkstemp``,
    which is what the window before a reopen by name is."""
    libc = ctypes.CDLL(None, use_errno=True)
    watch = libc.inotify_init1(os.O_NONBLOCK)
    libc.inotify_add_watch(watch, directory.encode(), 0x100)  # IN_CREATE
    count = 0
    while not stop.is_set():
        if not select.select([watch], [], [], 0.1)[0]:
            continue
        events, offset, created = os.read(watch, 1 << 16), 0, []
        while offset < len(events):
            length = struct.unpack_from("iIII", events, offset)[3]
            created.append(events[offset + 16:offset + 16 + length].rstrip(b"\0").decode())
            offset += 16 + length
        for name in [n for n in created if TEMP_MARKER in n] + (list(targets) if created else []):
            link = os.path.join(directory, f"attack-{count}")
            count += 1
            try:
                os.symlink(victim, link)
                os.rename(link, os.path.join(directory, name))  # atomic: the name is now the link
            except OSError:
                pass


def _slow_writer(payload: bytes):
    """Write in small pieces, pausing, to keep the temporary file around for the attacker."""
    def write(handle) -> None:
        for start in range(0, len(payload), 256):
            handle.write(payload[start:start + 256])
            time.sleep(0.0002)
    return write


@pytest.mark.parametrize("swap_targets", [True, False], ids=["temporaries-and-targets", "temporaries"])
def test_swapping_temporaries_and_the_target_for_links_never_writes_through_them(tmp_path, swap_targets):
    directory = tmp_path / "state"
    directory.mkdir()
    victim = tmp_path / "victim-shadow"
    victim.write_bytes(VICTIM_TEXT)
    target = directory / "ledger.json"
    stop = multiprocessing.get_context("fork").Event()
    attacker = multiprocessing.get_context("fork").Process(
        target=_swapper, args=(str(directory), str(victim), ("ledger.json", RETRY_REQUEST) if swap_targets else (), stop), daemon=True)
    attacker.start()
    written = refused = 0
    try:
        deadline = time.monotonic() + 8
        index = 0
        while time.monotonic() < deadline and index < 3000:
            payload = b'{"write": %d}' % index + b" " * 2048
            try:
                if index % 4 == 3:
                    write_retry_request(directory / "ledger.json", [f"2026-07-{index % 28 + 1:02d}"])
                else:
                    atomic_write(target, _slow_writer(payload))
                    if not swap_targets:  # a write that says it is done left its own file there, not a link
                        assert not target.is_symlink() and target.read_bytes() == payload, f"write {index}"
                written += 1
            except OSError:  # ELOOP on the reopen, or "replaced while being written": refused
                refused += 1
            assert victim.read_bytes() == VICTIM_TEXT, f"written through a link at write {index}"
            index += 1
    finally:
        stop.set()
        attacker.join(10)
    assert victim.read_bytes() == VICTIM_TEXT
    assert refused > 0 and written > 0, (written, refused)  # the race was really run, and writes got through
    atomic_write(target, _slow_writer(b"final"))  # the attacker gone: the target is a file of our own again
    assert not target.is_symlink() and target.read_bytes() == b"final"
    # temporary names left are the attacker's links (renamed onto a name after it was gone), no file of ours
    assert all((directory / name).is_symlink() for name in os.listdir(directory) if TEMP_MARKER in name)
