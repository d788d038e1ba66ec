"""A writer kill -9'ed while it holds a shard's lock mid-record never wedges the shard.

The real C writer appends large records (4 MiB), and the test kills it once the stream's
state page shows it mid-record: ``reserve_end`` past the published ``tail`` (I4), which the
writer sets under the lock, after reserving the blocks and before filling the frames, and
clears when it publishes. Another process's append must then proceed within a bounded
time (EOWNERDEAD -> repair of the torn tail -> consistent, I5), and afterwards every
record in the stream is whole: the torn one is gone, nothing is corrupt. (The kill used to
land after a random delay and "usually" mid-memcpy; on a loaded machine 30 such kills once
tore no record. tests/crash/test_lock_owner_death.py does the same with a scripted owner.)
"""

from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import time

from conftest import stream_path

import cometmp
from cometmp import format as fmt
from cometmp import paths

MiB = 1024 * 1024
RECORD = 4 * MiB


def _config() -> cometmp.Config:
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 64 * MiB
    cfg.storage.max_entry_bytes = 8 * MiB
    cfg.compression.min_bytes = 0  # keep the records large on disk
    return cfg


def _writer(data_dir: str, ready_w: int, tag: int) -> None:
    """Child: append 4 MiB records forever (until SIGKILL)."""
    try:
        c = cometmp.Client(data_dir, _config())
        lg = c.log("big", 1)
        body = bytes([tag % 251]) * (RECORD - 16)
        n = 0
        while True:
            lg.append(b"%08d%08d" % (tag, n) + body)
            if n == 0:
                os.write(ready_w, b"x")
            n += 1
    finally:
        os._exit(1)


def wait_mid_record(data_dir: str, timeout: float) -> None:
    """Spin until the writer has declared bytes past the published tail (I4: it holds the
    lock and is filling frames), or ``timeout`` passed: the kill follows either way, and
    the final ``bytes_dropped`` check says whether any kill landed mid-record."""
    with open(os.path.join(stream_path(data_dir, "big:shard:0000"), paths.STATE), "rb") as f:
        st = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tail, = struct.unpack_from("=Q", st, fmt.CM_STATE_OFF_TAIL)
            reserve, = struct.unpack_from("=Q", st, fmt.CM_STATE_OFF_RESERVE_END)
            if reserve > tail:
                return
    finally:
        st.close()


def test_a_writer_killed_inside_the_shard_lock_is_repaired_and_others_proceed(tmp_path):
    data_dir = str(tmp_path / "log")
    rng = random.Random(7)
    with cometmp.Client(data_dir, _config()) as c:
        lg = c.log("big", 1)
        waits = []
        for i in range(30):  # until a kill has torn a record (at least 6 kills)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _writer(data_dir, w, i + 1)
            os.close(w)
            assert os.read(r, 1) == b"x"
            os.close(r)
            time.sleep(rng.uniform(0.0, 0.01))   # a different record each time
            wait_mid_record(data_dir, timeout=10.0)   # then inside the lock, mid-record
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            t0 = time.monotonic()
            lg.append(b"after-kill-%d" % i)
            waits.append(time.monotonic() - t0)
            stats = c.stats()["streams"]["big:shard:0000"]["counters"]
            if i >= 5 and stats["lock_recoveries"] and stats["bytes_dropped"]:
                break
    print(f"{len(waits)} kills: {stats['lock_recoveries']} inside the lock, "
          f"{stats['bytes_dropped']} bytes of torn records dropped")
    assert max(waits) < 2.0, waits
    # the kill landed inside the lock at least once (the state shows the repair)
    assert stats["lock_recoveries"] >= 1, stats
    assert stats["bytes_dropped"] > 0, stats  # a torn record was cut off
    with cometmp.Client(data_dir, readonly=True) as rc:
        n_after = 0
        for m in rc.scan("big:shard:0000"):
            data = bytes(m.data)
            if data.startswith(b"after-kill-"):
                n_after += 1
                continue
            assert len(data) == RECORD, (m.id, len(data))
            tag = int(data[:8])
            assert data[16:] == bytes([tag % 251]) * (RECORD - 16), m.id
        skipped = rc.stats()["streams"]["big:shard:0000"].get("corrupt_skipped", 0)
    assert n_after == len(waits)
    assert skipped == 0
