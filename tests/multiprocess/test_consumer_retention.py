"""Retention under load, with the owner (a writer process running background retention)
and a consumer in another process: soft limits never delete unread data; the hard cap
drops only what it reports, and the consumer is told exactly which ranges it lost."""

from __future__ import annotations

import os
import subprocess
import sys

import cometmp
from conftest import child_env, small_config

STREAM = "ret:shard:0000"

WRITER = r"""
import sys, time
import cometmp
from conftest import small_config, wait_until
root, n, soft, hard, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = small_config()
cfg.retention.check_interval = 0.05
cfg.retention.max_shard_bytes = soft
cfg.retention.hard_max_total_bytes = hard
cfg.retention.hard_min_free_ratio = 0.0   # only the limits under test
with cometmp.Client(root, config=cfg) as c:
    log = c.log("ret", shards=1)
    for i in range(0, n, 50):
        log.append_many([b"%08d" % j + b"." * 992 for j in range(i, min(n, i + 50))])
        time.sleep(0.01)
    deleted = lambda: c.stats()["streams"]["ret:shard:0000"]["counters"]["retention_segments"]
    # the background thread (every 0.05 s) deletes behind the reader: wait for it to
    # have deleted the segments the test expects, instead of for a guessed time
    wait_until(lambda: deleted() >= want, 60, f"background retention to delete {want} segments",
               interval=0.05)
    print(deleted())
"""

CONSUMER = r"""
import os, sys, time
import cometmp
from conftest import small_config
root, out, drops, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
stop = os.path.join(root, "..", "stop")
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
dfd = os.open(drops, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
with cometmp.Client(root, readonly=False, config=small_config()) as c:
    con = cometmp.Consumer(c, group="g", zero_copy=True,
                           on_drop=lambda s, a, b: os.write(dfd, b"%d %d\n" % (a, b)))
    while True:
        b = con.read("ret:shard:*", max_messages=100, timeout=0.1)
        if len(b):
            for m in b:
                assert bytes(m.data[:8]) == b"%08d" % m.id.entry
            os.write(fd, b"".join(b"%d\n" % m.id.entry for m in b))
            time.sleep(delay)
            con.ack(b)
        elif os.path.exists(stop) and con.lag("ret:shard:*")[sys.argv[5]] == 0:
            break
"""


def _env():
    env = child_env()
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = tests + os.pathsep + env["PYTHONPATH"]
    return env


MIN_DELETED = 2   # segments retention must delete in each test (~6-8 MiB through 1 MiB segments)


def _run(tmp_path, n, soft, hard, delay):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.log("ret", shards=1)
        # the group exists (and protects) from its first read, before the writer starts
        cometmp.Consumer(c, group="g").read("ret:shard:*", timeout=0)
    out, drops = str(tmp_path / "out"), str(tmp_path / "drops")
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, root, out, drops, str(delay), STREAM],
                                env=_env())
    writer = subprocess.run([sys.executable, "-c", WRITER, root, str(n), str(soft), str(hard),
                             str(MIN_DELETED)],
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert writer.returncode == 0, writer.stderr
    (tmp_path / "stop").write_text("")
    assert consumer.wait(timeout=120) == 0
    with open(out) as f:
        processed = [int(x) for x in f.read().split()]
    with open(drops) as f:
        ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    with cometmp.Client(root, readonly=True) as c:
        groups = c.consumer_groups()
    return int(writer.stdout.split()[-1]), processed, ranges, groups


def test_soft_limits_under_load_delete_only_acked_segments(tmp_path):
    n = 6000                                  # ~6 MiB through 1 MiB segments
    deleted, processed, ranges, _ = _run(tmp_path, n, soft=1, hard=0, delay=0.002)
    assert deleted >= MIN_DELETED     # retention ran and deleted behind the reader
    assert ranges == []                       # ... never anything unread
    assert set(processed) == set(range(n))


def test_hard_cap_under_load_reports_exactly_what_the_consumer_lost(tmp_path):
    n = 8000
    deleted, processed, ranges, groups = _run(tmp_path, n, soft=0, hard=2 * 1024 * 1024, delay=0.08)
    assert deleted >= MIN_DELETED and ranges    # the slow consumer lost data ...
    lost = set()
    for a, b in ranges:
        assert a < b
        assert not lost & set(range(a, b))
        lost |= set(range(a, b))
    got = set(processed)
    assert not got & lost                                 # ... never both lost and delivered
    assert got | lost == set(range(n))                    # ... and nothing vanished silently
    (g,) = groups
    assert g["streams"][STREAM]["dropped"] >= len(lost)   # the owner counted at least as much
