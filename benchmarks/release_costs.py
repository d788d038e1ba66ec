"""What giving a segment back costs in one system call: the munmap of its populated
mapping, and the unlink that frees its page cache (the last reference to a file whose
pages are all cached and dirty, as retention's deletions are). Both run as one call on
one CPU; docs/PERFORMANCE.md "The prefault thread yields between steps" says why that
matters (an appender woken on that CPU waits for the call, or for the scheduler's tick).

    .venv/bin/python benchmarks/release_costs.py [--dir /var/tmp] [--sizes 8,64] [--repeat 5]

Per size: the median wall and CPU time of the munmap and of the unlink over --repeat
files, each fallocated, mapped shared and written one byte per 4 KiB page first.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time

MiB = 1 << 20


def one(path: str, size: int) -> tuple[float, float, float, float]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        m = mmap.mmap(fd, size)
        for off in range(0, size, 4096):
            m[off] = 1
    finally:
        os.close(fd)
    w, c = time.perf_counter(), time.thread_time()
    m.close()                                   # munmap
    w1, c1 = time.perf_counter(), time.thread_time()
    os.unlink(path)                             # the last reference: the page cache goes
    w2, c2 = time.perf_counter(), time.thread_time()
    return (w1 - w) * 1e3, (c1 - c) * 1e3, (w2 - w1) * 1e3, (c2 - c1) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--sizes", default="8,64", help="MiB, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    path = os.path.join(args.dir, f".cometmp-release-{os.getpid()}")
    for mb in (int(x) for x in args.sizes.split(",")):
        runs = [one(path, mb * MiB) for _ in range(args.repeat)]
        med = [statistics.median(r[i] for r in runs) for i in range(4)]
        print(f"{mb:4d} MiB: munmap {med[0]:.2f} ms (cpu {med[1]:.2f}), "
              f"unlink {med[2]:.2f} ms (cpu {med[3]:.2f})  median of {args.repeat}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
