"""Real processes: writers in N processes, consumers in M others killed with SIGKILL
again and again. Every entry is processed at least once, none is skipped, and each
consumer restart redelivers at most one batch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import cometmp
from conftest import child_env, small_config

SHARDS = 4
WRITERS = 2
PER_WRITER = 4000
CONSUMERS = 2
BATCH = 50

WRITER = r"""
import sys, time
import cometmp
from conftest import small_config
root, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with cometmp.Client(root, config=small_config()) as c:
    log = c.log("mp", shards=%d)
    i = 0
    while i < n:
        k = min(20, n - i)
        for j in range(k):
            log.append(b"w%%d:%%d" %% (wid, i + j), key=str(i + j))
        i += k
        time.sleep(0.025)     # ~5 s of steady appends while consumers are being killed
""" % SHARDS

CONSUMER = r"""
import os, sys, time
import cometmp
from conftest import small_config
root, index, count, out, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
stop = os.path.join(root, "..", "stop")
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
with cometmp.Client(root, config=small_config()) as c:
    con = cometmp.Consumer(c, group="mp-group:" + "x" * 300)
    while True:
        b = con.read("mp:shard:*", max_messages=batch, timeout=0.2, assignment=(index, count))
        if len(b):
            # "process" the batch: one write of all its lines, then ack (at-least-once)
            os.write(fd, b"".join(b"%s %d %s\n" % (m.id.stream.encode(), m.id.entry, m.data) for m in b))
            time.sleep(0.01)   # the rest of the work: a kill here must redeliver this batch
            con.ack(b)
        elif os.path.exists(stop):
            lag = con.lag("mp:shard:*")
            if all(v == 0 for s, v in lag.items() if int(s[-4:]) % count == index):
                break
"""


def _spawn(code, *args, cwd):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=_env(cwd))


def _env(cwd):
    env = child_env()
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + env["PYTHONPATH"]
    return env


def _lines(path):
    out = []
    try:
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                parts = line.split(b" ")
                if len(parts) == 3:
                    out.append((parts[0].decode(), int(parts[1]), parts[2]))
    except FileNotFoundError:
        pass
    return out


def test_consumers_killed_repeatedly_process_everything_with_bounded_redelivery(tmp_path):
    rng = random.Random(int(os.environ.get("COMETMP_TEST_SEED", "4")))
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.log("mp", shards=SHARDS)
    writers = [_spawn(WRITER, root, w, PER_WRITER, cwd=tmp_path) for w in range(WRITERS)]
    instances: dict[int, list[str]] = {i: [] for i in range(CONSUMERS)}
    procs = {}

    def start(i):
        out = str(tmp_path / f"c{i}-{len(instances[i])}.txt")
        instances[i].append(out)
        procs[i] = _spawn(CONSUMER, root, i, CONSUMERS, out, BATCH, cwd=tmp_path)

    for i in range(CONSUMERS):
        start(i)
    kills = 0
    t_end = time.monotonic() + 8
    while time.monotonic() < t_end or any(w.poll() is None for w in writers):
        time.sleep(rng.uniform(0.1, 0.4))
        if time.monotonic() > t_end + 30:
            break
        i = rng.randrange(CONSUMERS)
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        kills += 1
        start(i)
    for w in writers:
        assert w.wait(timeout=60) == 0
    (tmp_path / "stop").write_text("")
    for i in range(CONSUMERS):
        assert procs[i].wait(timeout=60) == 0
    assert kills >= 10

    with cometmp.Client(root, readonly=True) as c:
        expected = {}
        for s in c.streams("mp:shard:*"):
            for m in c.scan(s):
                expected[(s, m.id.entry)] = m.data
    assert len(expected) == WRITERS * PER_WRITER

    # A kill leaves at most one batch processed but not acked (the consumer acks every
    # batch), so: what instance k redoes of its killed predecessor's work is at most one
    # batch, and all redeliveries together are at most one batch per kill. (Instance k
    # may also redo a batch of k-2 if k-1 died before acking anything: that batch is
    # charged to the kill of k-2.)
    processed = {}
    times: dict = {}
    total_redelivered = 0
    for i in range(CONSUMERS):
        prev: set = set()
        for k, path in enumerate(instances[i]):
            lines = _lines(path)
            mine = {(s, e) for s, e, _ in lines}
            for s, e, data in lines:
                assert expected[(s, e)] == data, (s, e)
                assert int(s[-4:]) % CONSUMERS == i           # assignment: no overlap
                processed[(s, e)] = data
                times[(s, e)] = times.get((s, e), 0) + 1
            assert len(mine & prev) <= BATCH, (i, k, len(mine & prev))
            prev = mine
    total_redelivered = sum(n - 1 for n in times.values())
    assert total_redelivered <= kills * BATCH
    assert set(processed) == set(expected)                     # none skipped
    print(f"kills={kills} redelivered={total_redelivered} entries={len(expected)}")
