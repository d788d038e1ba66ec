"""A process that dies holding a stream's robust mutex (kill -9 inside the critical
section) leaves the lock usable: the next locker repairs the tail first (I4, I5)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cometmp
from cometmp import format as fmt

from conftest import child_env, frame_for, oracle_walk, segment_files, small_config

STREAM = "lock:shard:0000"

# The child takes the stream's lock exactly as the C writer does (pthread_mutex_lock on
# the robust mutex in the state page), declares an in-progress write by moving
# reserve_end (I4), writes some or all of a frame after the published tail, and dies.
DIE_HOLDING_LOCK = r"""
import ctypes, mmap, os, signal, struct, sys
state, seg, frame_hex, nbytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
OFF_LOCK, OFF_TAIL, OFF_RESERVE = (int(x) for x in sys.argv[5:8])
frame = bytes.fromhex(frame_hex)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(state, os.O_RDWR)
mm = mmap.mmap(fd, 4096)
lock = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(mm, OFF_LOCK)))
assert libc.pthread_mutex_lock(lock) == 0
tail = struct.unpack_from("=Q", mm, OFF_TAIL)[0]
struct.pack_into("=Q", mm, OFF_RESERVE, tail + len(frame))
sfd = os.open(seg, os.O_WRONLY)
os.pwrite(sfd, frame[:nbytes], tail)
sys.stdout.write("%d\n" % tail)
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def die_holding_lock(root: str, frame: bytes, nbytes: int) -> int:
    d = os.path.join(root, "streams", STREAM)
    (_, seg), = segment_files(root, STREAM)[-1:]
    p = subprocess.run([sys.executable, "-c", DIE_HOLDING_LOCK, os.path.join(d, "state"), seg,
                        frame.hex(), str(nbytes), str(fmt.CM_STATE_OFF_LOCK),
                        str(fmt.CM_STATE_OFF_TAIL), str(fmt.CM_STATE_OFF_RESERVE_END)],
                       env=child_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == -9, p.stderr
    return int(p.stdout)


@pytest.mark.parametrize("written", ["nothing", "half-frame", "whole-frame"])
@pytest.mark.parametrize("who", ["open-handle", "new-client"])
def test_writer_recovers_a_lock_whose_owner_was_killed(tmp_path, written, who):
    root = str(tmp_path / "log")
    cfg = small_config()
    c = cometmp.Client(root, config=cfg)
    try:
        lg = c.log("lock", shards=1)
        lg.append_many([b"one", b"two", b"three"])
        ghost = frame_for(segment_files(root, STREAM)[-1][1], b"ghost entry never published", 1, 3)
        nbytes = {"nothing": 0, "half-frame": len(ghost) // 2, "whole-frame": len(ghost)}[written]
        tail = die_holding_lock(root, ghost, nbytes)
        if who == "new-client":
            c.close()
            c = cometmp.Client(root, config=cfg)
            lg = c.log("lock", shards=1)
        assert lg.append(b"four").entry == 3              # the lock is usable; no renumbering
        assert [m.data for m in c.scan(STREAM)] == [b"one", b"two", b"three", b"four"]
        counters = c.stats()["streams"][STREAM]["counters"]
        assert counters["lock_recoveries"] == 1
        assert counters["bytes_dropped"] == len(ghost[:nbytes].rstrip(b"\0"))
        assert lg.append(b"five").entry == 4
    finally:
        c.close()
    (_, seg), = segment_files(root, STREAM)
    recs, damage = oracle_walk(seg)
    assert not damage and [r.payload for r in recs] == [b"one", b"two", b"three", b"four", b"five"]
    with open(seg, "rb") as f:
        buf = f.read()
    end = recs[-1].offset + recs[-1].frame_bytes
    assert end > tail and buf[end:] == bytes(len(buf) - end)
