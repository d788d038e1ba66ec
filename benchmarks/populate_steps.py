"""What the prefault thread's populate step costs an mmap() in the same process.

    .venv/bin/python benchmarks/populate_steps.py [--dir /var/tmp] [--rounds 3] [--mib 256]

Issue 10 item 2 (docs/PERFORMANCE.md, "Populate steps"). ``MADV_POPULATE_WRITE`` holds the
process's mmap lock for reading for the whole range it is given; an ``mmap``/``munmap``
needs it for writing, so it waits for the populate in flight (a rotation maps the new
segment and its index on the appending thread while the prefault thread populates). Per
step size, interleaved over rounds: a thread populates fresh pages of a ``--mib`` file in
steps of that size (as ``native/prealloc.c`` does), while the main thread maps and unmaps
an 8 MiB file every ~200 us and times each ``mmap`` call. Prints the populate's CPU per
page and wall per step, and the mmap call's p50 / p99 / max, beside an idle control (no
populate running). Put --dir on the log's filesystem.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import threading
import time

STEPS = (16 << 10, 32 << 10, 64 << 10, 256 << 10)
MADV_POPULATE_WRITE = 23
PROT_RW = 0x1 | 0x2
MAP_SHARED = 0x01

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def fresh_file(path: str, size: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    os.posix_fallocate(fd, 0, size)
    return fd


def one(directory: str, step: int | None, size: int) -> dict:
    """One timed run: populate in ``step`` (None: no populate) beside timed mmaps."""
    big = os.path.join(directory, f"populate_steps.{os.getpid()}.big")
    small = os.path.join(directory, f"populate_steps.{os.getpid()}.small")
    fd, sfd = fresh_file(big, size), fresh_file(small, 8 << 20)
    addr = libc.mmap(None, size, PROT_RW, MAP_SHARED, fd, 0)
    done = threading.Event()
    pop = {"cpu_ns": 0, "steps": 0, "wall_ns": 0}

    def populate() -> None:
        try:
            t0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            for off in range(0, size, step):
                if libc.madvise(addr + off, min(step, size - off), MADV_POPULATE_WRITE):
                    pop["error"] = os.strerror(ctypes.get_errno())
                    return
                pop["steps"] += 1
            pop["cpu_ns"] = time.thread_time_ns() - t0
            pop["wall_ns"] = time.perf_counter_ns() - w0
        finally:
            done.set()

    def running() -> bool:   # the populate still runs, or the control's 0.5 s
        return not done.is_set() if step is not None else time.monotonic() < deadline

    calls = []
    try:
        if step is not None:
            threading.Thread(target=populate, daemon=True).start()
        deadline = time.monotonic() + 0.5
        while running():
            t0 = time.perf_counter_ns()
            a = libc.mmap(None, 8 << 20, PROT_RW, MAP_SHARED, sfd, 0)
            calls.append(time.perf_counter_ns() - t0)
            libc.munmap(a, 8 << 20)
            time.sleep(0.0002)
    finally:
        if step is not None:
            done.wait()
        libc.munmap(addr, size)
        for f, p in ((fd, big), (sfd, small)):
            os.close(f)
            os.unlink(p)
    if "error" in pop:
        raise SystemExit(f"madvise(MADV_POPULATE_WRITE) failed: {pop['error']}")
    calls.sort()
    out = {"step_kib": step >> 10 if step else 0, "mmaps": len(calls),
           "mmap_p50_us": calls[len(calls) // 2] / 1e3,
           "mmap_p99_us": calls[min(len(calls) - 1, int(len(calls) * 0.99))] / 1e3,
           "mmap_max_us": calls[-1] / 1e3}
    if step is not None:
        out["populate_cpu_ns_per_page"] = pop["cpu_ns"] / (size // 4096)
        out["populate_wall_us_per_step"] = pop["wall_ns"] / max(1, pop["steps"]) / 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256, help="populated per run (fresh pages)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for r in range(a.rounds):
        order = [None, *STEPS] if r % 2 == 0 else [*reversed(STEPS), None]
        for step in order:
            row = one(a.dir, step, a.mib << 20)
            row["round"] = r + 1
            rows.append(row)
            if not a.json:
                pop = (f"populate {row['populate_cpu_ns_per_page']:6.0f} ns/page, "
                       f"{row['populate_wall_us_per_step']:7.1f} us/step"
                       if step else "no populate (control)".ljust(40))
                print(f"round {r + 1} step {row['step_kib']:4d} KiB: {pop}   mmap p50 "
                      f"{row['mmap_p50_us']:7.1f}  p99 {row['mmap_p99_us']:8.1f}  max "
                      f"{row['mmap_max_us']:8.1f} us  ({row['mmaps']} calls)")
    if a.json:
        print(json.dumps({"load": os.getloadavg()[0], "rows": rows}))
    else:
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
