"""What the first store into a fresh part of a mapped file costs, with and without read-around.

    .venv/bin/python benchmarks/read_around.py [--dir /var/tmp] [--runs 3]

Issue 10 (docs/PERFORMANCE.md, "Read-around on the append path"). Per run and advice
(the default, then ``MADV_RANDOM``), a fresh 64 MiB file with its first 1 MiB fallocated
(a new segment's shape) is mapped shared, and one byte is stored at 4 KiB, 8 KiB, 3 MiB and
9 MiB, each store timed alone. With the default advice a fault on a page not in the page
cache reads around it (``read_ahead_kb`` of the file's device, printed), allocating that
many zero pages in the faulting call. Put --dir on the log's filesystem.
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

OFFSETS = (4096, 8192, 3 << 20, 9 << 20)


def probe(path: str, advice: int | None, size: int = 64 << 20) -> list[float]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, 1 << 20)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if advice is not None:
            m.madvise(advice)
        out = []
        for off in OFFSETS:
            t0 = time.perf_counter_ns()
            m[off] = 1
            out.append((time.perf_counter_ns() - t0) / 1000)
        m.close()
        return out
    finally:
        os.close(fd)
        os.unlink(path)


def read_ahead_kb(directory: str) -> str:
    dev = os.stat(directory).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/queue/read_ahead_kb") as f:
            return f.read().strip()
    except OSError:   # a partition: its disk's queue
        try:
            real = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
            with open(os.path.join(os.path.dirname(real), "queue", "read_ahead_kb")) as f:
                return f.read().strip()
        except OSError:
            return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    print(f"read_ahead_kb of {a.dir}'s device: {read_ahead_kb(a.dir)}")
    print("store at:          " + "".join(f"{o // 1024:>12} KiB" for o in OFFSETS))
    path = os.path.join(a.dir, f"cm-read-around-{os.getpid()}.bin")
    for _ in range(a.runs):
        for name, adv in (("default", None), ("MADV_RANDOM", mmap.MADV_RANDOM)):
            print(f"{name:18} " + "".join(f"{t:13.1f} us" for t in probe(path, adv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
