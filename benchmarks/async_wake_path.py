"""Where a read_async wake-up's time goes: the four hops from an append in another process
to ``await consumer.read_async()`` returning (cometmp/waiting.py, ARCHITECTURE §9.7).

A forked writer appends one stamped entry (CLOCK_MONOTONIC) a random 0.5-1.5 ms after the
reader says it is about to wait. ``cm_wait_many`` as the waiter module calls it and the
asyncio notify are wrapped to stamp each hop:

* ``futex``   append stamped -> the waiter thread back from cm_wait_many (the kernel's wake-up)
* ``pass``    -> the waiter calls notify (its pass over the registrations)
* ``loop``    -> the future's done callback runs in the loop thread (call_soon_threadsafe's
              self-pipe wakes the loop from epoll)
* ``task``    -> read_async has returned the batch (the task's step and a read(timeout=0))

    nice -n 15 .venv/bin/python benchmarks/async_wake_path.py [--samples 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cometmp  # noqa: E402
from cometmp import waiting  # noqa: E402
from cometmp._ffi import lib  # noqa: E402

_STAMP = struct.Struct("<q")


def measure(samples: int, seed: int) -> dict:
    root = tempfile.mkdtemp(prefix="cometmp-async-wake-")
    mark: dict[str, int] = {}
    hops: dict[str, list[int]] = {"futex": [], "pass": [], "loop": [], "task": []}
    try:
        c = cometmp.Client(root)
        c.append("s", _STAMP.pack(0))
        con = cometmp.Consumer(c, "g")
        con.ack(con.read("s", 10, 0))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(w)
                rng = random.Random(seed)
                c2 = cometmp.Client(root)
                while os.read(r, 1):
                    time.sleep(rng.uniform(0.0005, 0.0015))
                    c2.append("s", _STAMP.pack(time.monotonic_ns()))
                code = 0
            finally:
                os._exit(code)
        os.close(r)

        class StampedLib:
            def __getattr__(self, name):
                return getattr(lib, name)

            def cm_wait_many(self, *a):
                rc = lib.cm_wait_many(*a)
                mark["futex"] = time.monotonic_ns()
                return rc

        orig_notify = waiting._loop_notify

        def stamped_notify(loop, fut):
            n = orig_notify(loop, fut)
            fut.add_done_callback(lambda f: mark.__setitem__("loop", time.monotonic_ns()))

            def notify(v):
                mark["pass"] = time.monotonic_ns()
                n(v)
            return notify

        waiting.lib, waiting._loop_notify = StampedLib(), stamped_notify
        try:
            async def run():
                for _ in range(samples):
                    mark.clear()
                    os.write(w, b"x")
                    b = await con.read_async("s", 10, None)
                    t1 = time.monotonic_ns()
                    t0 = _STAMP.unpack(b[0].data)[0]
                    con.ack(b)
                    if {"futex", "pass", "loop"} <= mark.keys() and mark["futex"] > t0:
                        hops["futex"].append(mark["futex"] - t0)
                        hops["pass"].append(mark["pass"] - mark["futex"])
                        hops["loop"].append(mark["loop"] - mark["pass"])
                        hops["task"].append(t1 - mark["loop"])
            asyncio.run(run())
        finally:
            waiting.lib, waiting._loop_notify = lib, orig_notify
            os.close(w)
            os.waitpid(pid, 0)
            c.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {k: {"n": len(v), "p50_us": statistics.median(v) / 1e3} for k, v in hops.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    res = measure(a.samples, seed)
    print(f"read_async wake path (seed {seed}, load {os.getloadavg()[0]:.2f}), p50 per hop:")
    for k, v in res.items():
        print(f"  {k:6} {v['p50_us']:8.1f} us   ({v['n']} samples)")
    print(f"  total  {sum(v['p50_us'] for v in res.values()):8.1f} us (sum of medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
