"""A busy stream's reservation is extended on the prefault thread (native/headroom.c), and
that request in flight is as harmless as a spare: a close keeps nothing open and the
filesystem unmounts, a forked child closes its copy without waiting and keeps none of the
parent's descriptors, and the log reads back whole. The failing and killed thread is
tests/crash/test_prefault_faults.py (point `headroom.alloc`); a full filesystem,
tests/crash/test_disk_full.py and test_spare_segments.py."""

from __future__ import annotations

import os
import subprocess

import cometmp
from cometmp import prealloc
from conftest import check_entries, fds_under, fork_closing_inherited, small_config

STREAM = "hr:shard:0000"
ENTRY = b"h" * 1000


def config() -> cometmp.Config:
    # 64 KiB chunks: full headroom (256 KiB) after ~200 KiB, an extension every ~128 KiB
    return small_config(preallocate_bytes=64 * 1024)


def append_until_extending(lg, w, limit: int = 5_000) -> bool:
    """Append until an extension is in flight on the thread (True), or `limit` appends."""
    for _ in range(limit):
        lg.append(ENTRY)
        if w.headroom() == "extending":
            return True
    return False


def check_log(root: str, n: int) -> None:
    check_entries(root, STREAM, ENTRY, n, config())


def test_a_busy_streams_reservation_grows_on_the_prefault_thread(tmp_path):
    root = str(tmp_path / "log")
    before = prealloc.stats()
    with cometmp.Client(root, config=config()) as c:
        lg = c.log("hr", shards=1)
        w = c._writer(STREAM)
        for _ in range(3000):                       # ~3 MiB, three rotations
            lg.append(ENTRY)
        assert w.headroom() in ("none", "extending", "done")
        prealloc.drain()
        n = c.length(STREAM)
    after = prealloc.stats()
    # the ramp (64 -> 128 -> 256 KiB) is the appender's; from there on ~128 KiB per extension
    assert after["extensions"] - before["extensions"] >= 10, (before, after)
    assert after["extension_failures"] == before["extension_failures"]
    check_log(root, n)


def test_closing_with_an_extension_in_flight_keeps_nothing_open_and_the_filesystem_unmounts(tmpfs):
    seen = 0
    for _ in range(10):
        mnt = tmpfs("size=16m")
        root = os.path.join(mnt, "log")
        with cometmp.Client(root, config=config()) as c:
            lg = c.log("hr", shards=1)
            seen += append_until_extending(lg, c._writer(STREAM))
            n = c.length(STREAM)
        assert fds_under(mnt) == []
        check_log(root, n)
        p = subprocess.run(["umount", mnt], capture_output=True, text=True)
        assert p.returncode == 0, f"umount after close: {p.stderr}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)
    print(f"{seen} of 10 closes had an extension in flight")
    assert seen >= 1


def test_a_child_forked_with_an_extension_in_flight_closes_its_copy_without_waiting(tmp_path):
    root = str(tmp_path / "log")
    other = str(tmp_path / "child")
    seen = 0
    with cometmp.Client(root, config=config()) as c:
        lg = c.log("hr", shards=1)
        w = c._writer(STREAM)
        for _ in range(20):
            seen += append_until_extending(lg, w)
            assert fork_closing_inherited(c, other, lambda: fds_under(root)) == 0
        n = c.length(STREAM)
    print(f"{seen} of 20 forks had an extension in flight")
    assert seen >= 1
    check_log(root, n)
