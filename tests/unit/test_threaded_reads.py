"""Threads sharing one Client read the right bytes: scans, point reads and time seeks of
one stream from several threads at once (the lookups run in C without the GIL, so any
state shared between calls would mix their answers)."""

from __future__ import annotations

import random
import threading

import cometmp
from conftest import small_config


def payload(i: int) -> bytes:
    return b"%08d:" % i + bytes([i % 251]) * (i % 300)


def test_concurrent_scans_point_reads_and_seeks_return_exact_entries(data_dir):
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    n = 6000
    with cometmp.Client(data_dir, config=small_config()) as c:
        ids = c.append("s", [payload(i) for i in range(n)])   # several segments and indexes
        ts = [c.read("s", i).timestamp_ns for i in range(0, n, 500)]
        errors: list[str] = []

        def scanner(k: int) -> None:
            rng = random.Random(seed + k)
            for _ in range(3):
                start = rng.randrange(n)
                for m in c.scan("s", start=start):
                    if m.data != payload(m.id.entry):
                        errors.append(f"scan from {start}: entry {m.id.entry} has wrong bytes")
                        return

        def reader(k: int) -> None:
            rng = random.Random(seed + 100 + k)
            for _ in range(1500):
                i = rng.randrange(n)
                m = c.read("s", i)
                if m.id.entry != i or m.data != payload(i):
                    errors.append(f"read({i}) returned entry {m.id.entry}")
                    return
                j = rng.randrange(len(ts))
                if c.seek_time("s", ts[j]) > j * 500:
                    errors.append(f"seek_time of entry {j * 500}'s timestamp went past it")
                    return

        threads = [threading.Thread(target=scanner, args=(k,)) for k in range(3)] + \
                  [threading.Thread(target=reader, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (seed, errors[:5])
        assert ids[-1].entry == n - 1
