"""The consumer's own work on the wake-up path: from the futex wait returning inside
``Consumer.read`` to ``read`` returning the batch (the part of
``cometmp bench --scenario wakeup``'s ``consumer - raw`` gap that is Python in read()).

A forked writer appends one 100-byte entry every --gap-us; this process blocks in
``read(timeout=None)``. ``Consumer._wait`` is wrapped to stamp the moment it returns, so the
figure is the post-wake work only, with the caches as a sleeper finds them.

    .venv/bin/python benchmarks/consumer_wake_path.py            # 1500 wake-ups
    .venv/bin/python benchmarks/consumer_wake_path.py --samples 5000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cometmp  # noqa: E402
from cometmp import consumer as _consumer  # noqa: E402


def measure(samples: int, gap_us: int) -> dict:
    ns = time.perf_counter_ns
    woke = [0]
    inner = _consumer.Consumer._wait

    def stamped(self, *a):
        r = inner(self, *a)
        woke[0] = ns()
        return r

    root = tempfile.mkdtemp(prefix="cometmp-wake-path-")
    _consumer.Consumer._wait = stamped
    try:
        with cometmp.Client(root) as c:
            c.log("w", shards=1)
            con = cometmp.Consumer(c, group="g")
            con.read("w:shard:*", timeout=0)
            pid = os.fork()
            if pid == 0:
                try:
                    with cometmp.Client(root) as wc:
                        log = wc.log("w", shards=1)
                        for _ in range(samples):
                            time.sleep(gap_us / 1e6)
                            log.append(b"x" * 100)
                finally:
                    os._exit(0)
            post, got = [], 0
            while got < samples:
                woke[0] = 0
                b = con.read("w:shard:*", timeout=None)
                t = ns()
                if woke[0]:
                    post.append(t - woke[0])
                got += len(b)
                con.ack(b)
            os.waitpid(pid, 0)
            con.close()
    finally:
        _consumer.Consumer._wait = inner
        shutil.rmtree(root, ignore_errors=True)
    post.sort()
    q = lambda p: post[min(len(post) - 1, int(len(post) * p))] / 1e3  # noqa: E731
    return {"wakeups": len(post), "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99),
            "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--gap-us", type=int, default=700)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.samples, a.gap_us)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"post-wake work in Consumer.read: {r['wakeups']} wake-ups, p50 {r['p50_us']:.1f} us, "
              f"p90 {r['p90_us']:.1f} us, p99 {r['p99_us']:.1f} us (load {r['load']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
