"""A consumer blocked in read() sleeps without burning CPU and wakes as soon as a writer
in another process appends to any of the streams it reads."""

from __future__ import annotations

import struct
import subprocess
import sys
import time

import cometmp
from conftest import child_env, sleeping_readers, wait_until

#: How long the blocked consumer is watched for burning CPU. Not a condition: the property
#: is that nothing happens (no CPU time accrues), which only a span of time can show. It
#: starts once the consumer is counted as asleep on every shard's futex (the condition
#: below), so none of it is start-up; a consumer that polled instead of sleeping would
#: accrue CPU in it, and the ``cpu < 0.2`` assertion would say so.
BLOCKED_WINDOW = 1.0


CONSUMER = r"""
import resource, struct, sys, time
import cometmp
root = sys.argv[1]
with cometmp.Client(root) as c:
    con = cometmp.Consumer(c, group="w")
    assert len(con.read("wake:shard:*", timeout=0)) == 0
    print("ready", flush=True)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    b = con.read("wake:shard:*", timeout=None)
    seen = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sent = struct.unpack("<q", b[0].data)[0]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(len(b), b[0].id.stream, seen - sent, cpu, flush=True)
"""


def test_blocked_consumer_uses_no_cpu_and_wakes_on_append_from_another_process(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root) as c:
        log = c.log("wake", shards=4)
        p = subprocess.Popen([sys.executable, "-c", CONSUMER, root], env=child_env(),
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        shards = [f"wake:shard:{i:04d}" for i in range(4)]
        wait_until(lambda: all(sleeping_readers(root, s) == 1 for s in shards), 30,
                   "the consumer to sleep on every shard's futex")
        time.sleep(BLOCKED_WINDOW)                       # the consumer sleeps meanwhile
        mid = log.append(struct.pack("<q", time.clock_gettime_ns(time.CLOCK_MONOTONIC)), key="k")
        out, _ = p.communicate(timeout=30)
    n, stream, latency_ns, cpu = out.split()
    assert int(n) == 1 and stream == mid.stream
    assert int(latency_ns) < 200_000_000                 # woken, not polled (generous: shared CI)
    assert float(cpu) < 0.2                              # asleep, not spinning
