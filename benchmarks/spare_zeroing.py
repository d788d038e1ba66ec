"""What a segment's pages cost its writer: fresh file vs recycled file, by how the spare is zeroed.

    .venv/bin/python benchmarks/spare_zeroing.py [--mib 64] [--rounds 5] [--dir /var/tmp]

Issue 10 item 1 (docs/PERFORMANCE.md, "Recycled segments"). Per round, in rotating order,
four variants each prepare a file of --mib MiB and then write every byte of it through a
shared mapping, 4 KiB at a time, as the appender does:

* ``fresh``: a new file, ftruncate + posix_fallocate (what rotation did before spares);
* ``pwrite``: a file whose pages are in the page cache (written, then the segment
  "deleted"), zeroed with pwrite and fdatasynced - what the recycling design measured in docs/PERFORMANCE.md ("Recycled segments") did;
* ``memset``: the same file zeroed through a shared mapping instead;
* ``zero_range``: the same file zeroed with fallocate(FALLOC_FL_ZERO_RANGE);
* ``punch``: the same file with its blocks punched out (FALLOC_FL_PUNCH_HOLE) and
  reallocated.

Printed, as medians over the rounds: the preparation's wall time and CPU (zeroing + fdatasync, off
the request path in cometmp: retention's thread), and the write pass per 4 KiB page with
its minor faults (the request path's cost: what the appender and its prefault thread pay).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import resource
import statistics
import tempfile
import time

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
PAGE = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd: int, mode: int, off: int, n: int) -> None:
    if _libc.fallocate(fd, mode, off, n) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def write_pass(fd: int, size: int) -> tuple[float, int]:
    """Write every byte through a shared mapping: (ns per page, minor faults per page)."""
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    page = b"\x5a" * PAGE
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter_ns()
    for off in range(0, size, PAGE):
        mm[off:off + PAGE] = page
    dt = time.perf_counter_ns() - t0
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    mm.close()
    return dt / (size // PAGE), (f1 - f0) / (size // PAGE)


def cached_file(d: str, size: int) -> int:
    """A file of `size` written once (its pages in the page cache): a deleted segment."""
    fd = os.open(os.path.join(d, "old.seg"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    os.posix_fallocate(fd, 0, size)
    write_pass(fd, size)
    os.fdatasync(fd)
    return fd


def variant(name: str, d: str, size: int) -> dict:
    if name == "fresh":
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        fd = os.open(os.path.join(d, "new.seg"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
    else:
        fd = cached_file(d, size)
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        if name == "memset":
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            zero = bytes(1 << 20)
            for off in range(0, size, len(zero)):
                mm[off:off + len(zero)] = zero
            mm.close()
        elif name == "pwrite":
            zero = bytes(1 << 16)
            for off in range(0, size, len(zero)):
                os.pwrite(fd, zero, off)
        elif name == "zero_range":
            fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, size)
        else:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)
            os.posix_fallocate(fd, 0, size)
        os.fdatasync(fd)
    prep = time.perf_counter_ns() - t0
    prep_cpu = time.thread_time_ns() - c0
    per_page, faults = write_pass(fd, size)
    os.close(fd)
    for n in ("new.seg", "old.seg"):
        try:
            os.unlink(os.path.join(d, n))
        except FileNotFoundError:
            pass
    return {"prep_ms": prep / 1e6, "prep_cpu_ms": prep_cpu / 1e6, "write_ns_per_page": per_page, "faults_per_page": faults}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the files go (default: system temp)")
    a = ap.parse_args(argv)
    size = a.mib << 20
    names = ["fresh", "pwrite", "memset", "zero_range", "punch"]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="spare-zeroing-", dir=a.dir) as d:
        for r in range(a.rounds):
            for n in names[r % 5:] + names[:r % 5]:
                rows[n].append(variant(n, d, size))
    med = statistics.median
    print(f"{a.mib} MiB file, median of {a.rounds} interleaved rounds, load "
          f"{os.getloadavg()[0]:.1f}")
    base = med([x["write_ns_per_page"] for x in rows["fresh"]])
    for n, xs in rows.items():
        w = med([x["write_ns_per_page"] for x in xs])
        print(f"  {n:10} prepare {med([x['prep_ms'] for x in xs]):7.1f} ms wall, "
              f"{med([x['prep_cpu_ms'] for x in xs]):6.1f} ms CPU; write pass "
              f"{w:7.0f} ns per 4 KiB page ({w / base:.2f}x fresh), "
              f"{med([x['faults_per_page'] for x in xs]):.2f} faults per page")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
