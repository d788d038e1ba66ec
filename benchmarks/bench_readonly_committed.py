"""What I27a costs a readonly reader: reads of a stopped server's directory (no writer holds
the state page, so the newest segment's walk decides the length) beside reads of the same
stream while a writer holds it (the page is trusted), in one run, side by side.

    .venv/bin/python benchmarks/bench_readonly_committed.py [--entries 20000] [--reads 20000]

Prints per-call figures for ``read()`` of random entries and ``length()``, the ratio
stopped/live, and the one-off cost of the first ``length()`` of a stopped stream (one walk
of its newest segment). Rounds alternate the two modes so load drift hits both.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cometmp  # noqa: E402

STREAM = "bench:shard:0000"


def per_call(ro: cometmp.Client, entries: int, reads: int, rnd: random.Random) -> tuple[float, float]:
    picks = [rnd.randrange(entries) for _ in range(reads)]
    t = time.perf_counter()
    for e in picks:
        ro.read(STREAM, e)
    read_us = (time.perf_counter() - t) / reads * 1e6
    t = time.perf_counter()
    for _ in range(reads):
        ro.length(STREAM)
    length_us = (time.perf_counter() - t) / reads * 1e6
    return read_us, length_us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**32))
    a = ap.parse_args()
    print(f"seed {a.seed}, {a.entries} entries of 200 B, {a.reads} calls per round, "
          f"{a.rounds} rounds; load {os.getloadavg()[0]:.1f}")
    rnd = random.Random(a.seed)
    root = tempfile.mkdtemp(prefix="cometmp-bench-ro-")
    try:
        cfg = cometmp.Config()
        with cometmp.Client(root, config=cfg) as w:
            w.append(STREAM, [os.urandom(200) for _ in range(a.entries)])
        first = []
        stopped, live = [], []
        for _ in range(a.rounds):
            with cometmp.Client(root, readonly=True) as ro:
                t = time.perf_counter()
                assert ro.length(STREAM) == a.entries
                first.append((time.perf_counter() - t) * 1e3)
                stopped.append(per_call(ro, a.entries, a.reads, rnd))
            with cometmp.Client(root, config=cfg) as w:
                w.append(STREAM, [b"x"])          # the writer's open holds the page now
                with cometmp.Client(root, readonly=True) as ro:
                    live.append(per_call(ro, a.entries, a.reads, rnd))
            a.entries += 1
        for i, what in enumerate(("read()", "length()")):
            s = statistics.median(x[i] for x in stopped)
            lv = statistics.median(x[i] for x in live)
            print(f"{what:9s} stopped (files decide) {s:8.2f} us   live writer (page) {lv:8.2f} us"
                  f"   ratio {s / lv:.2f}")
        print(f"first length() of a stopped stream (walks from the last indexed record): "
              f"median {statistics.median(first):.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
