"""Runs one close race many times in this process; used by test_close_races.py.

    python close_race_driver.py RACE SEED ITERATIONS DIR

Each iteration draws its random delays from ``seed = SEED * 100000 + i`` and prints
``seed=<seed>`` before it starts, so a crash (SIGSEGV kills this process) names the
iteration that caused it. Every call racing a close must either succeed or raise
cometmp.ClosedError (an empty batch from an interrupted wait counts as success); any
other exception is printed and the process exits 3. Exit 0 prints ``ok <iterations>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import sys
import threading
import time

import cometmp
from cometmp import ClosedError

MiB = 1024 * 1024
BIG = 80 * 1024          # 4 of these make a batch above the appender's 256 KiB GIL-free path


class Bad(Exception):
    """A call racing close() ended in something other than success or ClosedError."""


def config() -> cometmp.Config:
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1 * MiB
    cfg.storage.preallocate_bytes = 256 * 1024
    cfg.retention.max_shard_bytes = 2 * MiB
    return cfg


class Outcomes:
    def __init__(self):
        self.bad: list[str] = []
        self.lock = threading.Lock()

    def run(self, fn, *args):
        """Call fn(*args) until it raises: ClosedError ends the loop cleanly."""
        try:
            while True:
                fn(*args)
        except ClosedError:
            return
        except BaseException as e:  # noqa: BLE001 - the point: anything else is a failure
            with self.lock:
                self.bad.append(f"{threading.current_thread().name}: {type(e).__name__}: {e}")

    def thread(self, fn, *args, name=None) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(fn, *args), name=name or fn.__name__,
                             daemon=True)
        t.start()
        return t

    def check(self):
        if self.bad:
            raise Bad("; ".join(self.bad))


def expect_closed(fn, *args):
    try:
        fn(*args)
    except ClosedError:
        return
    raise Bad(f"{getattr(fn, '__name__', fn)} after close did not raise ClosedError")


def join(threads, timeout=20.0):
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive():
            raise Bad(f"thread {t.name} still running {timeout} s after close")


# ---- the races ---------------------------------------------------------------------------

def race_append(rng: random.Random, d: str) -> None:
    """close() while threads append: contended lock, append_many, a >= 256 KiB batch."""
    cfg = config()
    if rng.random() < 0.5:             # appends hold the lock through an fdatasync: long windows
        cfg.storage.durability = "always"
    c = cometmp.Client(d, cfg)
    lg = c.log("ev", shards=1)          # one shard: the appenders contend for its lock
    out = Outcomes()
    small, big = b"x" * rng.randint(1, 200), [b"y" * BIG] * 4
    ts = [out.thread(lg.append, small, name="append"),
          out.thread(lg.append_many, [small] * 8, name="append_many"),
          out.thread(lg.append_many, big, name="append_big"),
          out.thread(lg.append_many, big, name="append_big2"),
          out.thread(c.append, "plain", small, name="client_append")]
    time.sleep(rng.uniform(0, 0.004))
    c.close()
    join(ts)
    out.check()
    expect_closed(lg.append, b"late")
    expect_closed(lg.append_many, [b"late"])


def _filled(d: str, n: int = 300) -> cometmp.Client:
    c = cometmp.Client(d, config())
    c.append("s", [os.urandom(64) for _ in range(n)])
    c.append("s", [b"z" * 200_000] * 8)   # a few rotations: several segments to scan
    return c


def race_scan_after_close(rng: random.Random, d: str) -> None:
    """A scan() iterator (and every other read) continued after close()."""
    c = _filled(d)
    it = c.scan("s", start=rng.randint(0, 250))
    for _ in range(rng.randint(0, 20)):
        next(it)
    c.close()
    expect_closed(next, it)
    expect_closed(c.read, "s", 1)
    expect_closed(c.length, "s")
    expect_closed(c.list_recent, "s", 5)
    expect_closed(c.scan, "s")


def race_scan(rng: random.Random, d: str) -> None:
    """close() while other threads scan, read and measure the stream."""
    c = _filled(d)
    out = Outcomes()

    def scan_all():
        for _m in c.scan("s", start=rng.randint(0, 300)):
            pass

    def point():
        c.read("s", rng.randint(0, 299))
        c.length("s")
        c.list_recent("s", 3)
        c.seek_time("s", 0)

    ts = [out.thread(scan_all), out.thread(scan_all), out.thread(point)]
    time.sleep(rng.uniform(0, 0.01))
    c.close()
    join(ts)
    out.check()


def race_consumer(rng: random.Random, d: str) -> None:
    """Consumer.close() (then Client.close()) while a thread reads, waits and acks."""
    c = cometmp.Client(d, config())
    lg = c.log("ev", shards=4)
    lg.append_many([b"m"] * 50)
    con = cometmp.Consumer(c, "g", zero_copy=rng.random() < 0.5)
    out = Outcomes()

    def consume():
        b = con.read("ev:*", 64, timeout=rng.choice([0, 0.001, 0.05, 1.0]))
        if len(b):
            b.payloads()
            con.ack(b)
        con.lag("ev:*")

    def produce():
        lg.append(b"p")
        time.sleep(0.0005)

    ts = [out.thread(consume), out.thread(produce)]
    time.sleep(rng.uniform(0, 0.02))
    con.close()
    if rng.random() < 0.5:
        c.close()
    time.sleep(rng.uniform(0, 0.002))
    c.close()
    join(ts)
    out.check()
    expect_closed(con.read, "ev:*", 1, 0)


def race_acks(rng: random.Random, d: str) -> None:
    """Consumer.close() while threads ack out of order (the window's update), nack with a
    delay, list pending entries and the assignment, and read redeliveries (ack_wait)."""
    c = cometmp.Client(d, config())
    lg = c.log("ev", shards=2)
    lg.append_many([b"m%d" % i for i in range(200)])
    con = cometmp.Consumer(c, "g", ack_wait=rng.choice([0.001, 0.01, 1.0]), max_deliveries=4)
    out = Outcomes()
    lock = threading.Lock()          # one Consumer per thread is the contract for read/ack
    seen: list = []
    trng = random.Random(rng.randrange(1 << 30))   # the thread's own: the seed replays it

    def consume():
        with lock:
            b = con.read("ev:*", 32, timeout=trng.choice([0, 0.001, 0.01]))
            msgs = list(b)
            trng.shuffle(msgs)
            half = len(msgs) // 2
            if msgs[:half]:
                con.ack(*msgs[:half])                          # out of order: the window
            if msgs[half:]:
                con.nack(*msgs[half:], delay=trng.choice([0.0, 0.001]))
            seen.append(len(msgs))

    def inspect():
        with lock:
            con.pending("ev:*")
            con.assigned()
            con.lag("ev:*")

    ts = [out.thread(consume), out.thread(inspect)]
    time.sleep(rng.uniform(0, 0.02))
    con.close()
    if rng.random() < 0.5:
        c.close()
    join(ts)
    c.close()
    out.check()
    expect_closed(con.ack)
    expect_closed(con.pending, "ev:*")
    expect_closed(con.nack)


def race_batches(rng: random.Random, d: str) -> None:
    """async for over Consumer.batches(): cancelled (or not), then the consumer closed."""
    c = cometmp.Client(d, config())
    lg = c.log("ev", shards=2)
    con = cometmp.Consumer(c, "g")
    out = Outcomes()
    cancel = rng.random() < 0.6

    async def consume():
        try:
            async for b in con.batches("ev:*", 32, wait_slice=rng.choice([0.01, 0.1, 0.25])):
                con.ack(b)
        except ClosedError:
            pass

    async def main():
        task = asyncio.ensure_future(consume())
        if rng.random() < 0.5:
            lg.append_many([b"a"] * 5)
        await asyncio.sleep(rng.uniform(0, 0.02))
        if cancel:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            con.close()            # the waiter thread may still sleep on its pages (L4)
        else:
            con.close()            # the waiting read ends in ClosedError (or a batch)
            await asyncio.wait_for(task, 5)
        if rng.random() < 0.5:
            c.close()

    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001
        out.bad.append(f"batches: {type(e).__name__}: {e}")
    c.close()
    out.check()


def race_retention(rng: random.Random, d: str) -> None:
    """close() while threads run retention and append (segments rotate and go away)."""
    c = cometmp.Client(d, config())
    lg = c.log("ev", shards=1)
    out = Outcomes()
    ts = [out.thread(c.run_retention), out.thread(lg.append_many, [b"r" * 50_000] * 4),
          out.thread(c.stats), out.thread(c.sync)]
    time.sleep(rng.uniform(0, 0.01))
    c.close()
    join(ts)
    out.check()
    expect_closed(c.run_retention)


def race_handler(rng: random.Random, d: str) -> None:
    """CometHandler.close() while threads log through it (as at interpreter exit)."""
    from cometmp.logging import CometHandler

    out = Outcomes()
    h = CometHandler(d, "logs", config=config())

    def failed(record):
        e = sys.exc_info()[1]
        if not isinstance(e, ClosedError):
            out.bad.append(f"handler: {type(e).__name__}: {e}")

    h.handleError = failed
    lg = logging.getLogger(f"race{rng.random()}")
    lg.propagate = False
    lg.addHandler(h)
    stop = threading.Event()

    def log_some():
        if stop.is_set():
            raise ClosedError("done")
        lg.warning("record %d", 7)

    ts = [out.thread(log_some), out.thread(log_some)]
    time.sleep(rng.uniform(0, 0.005))
    h.close()
    stop.set()
    join(ts)
    h.close()                      # a record after close() reopened the client: close it
    lg.removeHandler(h)
    out.check()


def race_views(rng: random.Random, d: str) -> None:
    """Zero-copy views outlive Consumer.close() and Client.close(): they stay readable."""
    c = cometmp.Client(d, config())
    c.append("v", [bytes([i % 256]) * 100 for i in range(100)])
    con = cometmp.Consumer(c, "g", zero_copy=True)
    b = con.read("v", 100, timeout=0)
    views = b.payloads()
    if rng.random() < 0.5:
        del b
    out = Outcomes()
    seen = []

    def touch():
        seen.append(sum(v[0] for v in views))
        if len(seen) > 200:
            raise ClosedError("enough")

    ts = [out.thread(touch)]
    time.sleep(rng.uniform(0, 0.003))
    con.close()
    c.close()
    join(ts)
    out.check()
    for i, v in enumerate(views):
        if bytes(v) != bytes([i % 256]) * 100:
            raise Bad(f"view {i} changed after close")


RACES = {name[5:]: fn for name, fn in globals().items() if name.startswith("race_")}


def main() -> int:
    race, seed0, iterations, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    fn = RACES[race]
    for i in range(iterations):
        seed = seed0 * 100000 + i
        print(f"seed={seed}", flush=True)
        d = os.path.join(root, str(i))
        try:
            fn(random.Random(seed), d)
        except Bad as e:
            print(f"FAILED {race} seed={seed}: {e}", flush=True)
            return 3
        shutil.rmtree(d, ignore_errors=True)
    print(f"ok {iterations}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
