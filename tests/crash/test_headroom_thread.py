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
            if w.headroom() == "extending":
                # let it finish before the tail can catch up with it (on a busy machine the
                # appender would then make that extension itself, as it should)
                prealloc.drain()
        n = c.length(STREAM)
    after = prealloc.stats()
    # the ramp (64 -> 128 -> 256 KiB) is the appender's; from there on one extension per
    # ~128 KiB: ~20 in 3 MiB
    assert after["extensions"] - before["extensions"] >= 15, (before, after)
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


def test_a_child_forked_after_a_rotation_abandoned_a_queued_extension_closes_the_parents_copy(tmp_path):
    """A rotation lets go of an extension still queued behind other work on the thread
    (here a 300 ms call of usleep, standing in for a slow populate or spare of another
    stream); a child forked then has no shard pointing at its copy and its thread never
    runs it, so the fork itself closes what the copy holds: the old segment's descriptor
    (prealloc.c, the orphan list). Before, every such child kept it for its whole life,
    pinning the segment's disk space after retention deleted it."""
    import ctypes
    from cometmp import _cffi
    core = ctypes.CDLL(_cffi.__file__)              # the loaded core: the same thread and queue
    core.cm_prealloc_call.restype = ctypes.c_uint64
    core.cm_prealloc_call.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    usleep = ctypes.cast(ctypes.CDLL(None).usleep, ctypes.c_void_p).value
    root = str(tmp_path / "log")
    other = str(tmp_path / "child")
    with cometmp.Client(root, config=config()) as c:
        lg = c.log("hr", shards=1)
        w = c._writer(STREAM)
        assert append_until_extending(lg, w)        # at full headroom
        for _ in range(3):
            prealloc.drain()
            assert core.cm_prealloc_call(usleep, 300_000)   # the thread is busy for 300 ms
            assert append_until_extending(lg, w), "no extension queued behind the busy thread"
            lg.append(os.urandom(1 << 20))           # a segment of its own: a rotation abandons it
            assert w.headroom() == "none"
            assert fork_closing_inherited(c, other, lambda: fds_under(root)) == 0
        n = c.length(STREAM)
    with cometmp.Client(root, config=config()) as c:
        assert c.length(STREAM) == n
        assert sum(1 for m in c.scan(STREAM) if m.data == ENTRY) == n - 3
