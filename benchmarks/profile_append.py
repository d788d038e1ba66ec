"""A steady append loop to run under a profiler, with its own CPU accounting.

Appends ``N`` 100-byte entries to a fresh log (``single``: one ``log.append`` per entry;
``batch``: ``append_many`` of 1,000) and prints wall time, the appending thread's CPU time
and the whole process's CPU time (appending thread + cometmp's background prefault thread),
each per entry. Meant for::

    perf stat -e task-clock,page-faults,context-switches python benchmarks/profile_append.py single 3000000
    perf record -F 3000 --call-graph dwarf,8192 -o append.data \\
        python benchmarks/profile_append.py single 3000000
    perf report -i append.data --children --sort sym --stdio -g none

    strace -f -c -e trace=fdatasync,fsync,msync \
        python benchmarks/profile_append.py single 300 --durability always

    python benchmarks/profile_append.py {single|batch} N [--dir DIR] [--durability MODE]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from itertools import repeat

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cometmp  # noqa: E402


def run(mode: str, n: int, parent: str | None, durability: str = "none") -> dict:
    d = tempfile.mkdtemp(prefix="cometmp-profile-", dir=parent)
    try:
        cfg = cometmp.Config()
        cfg.storage.durability = durability
        client = cometmp.Client(d, config=cfg)
        lg = client.log("profile", shards=1)
        p = bytes(range(100))
        append, am, batch = lg.append, lg.append_many, [p] * 1000
        if mode == "single":
            for _ in repeat(None, min(20000, n)):
                append(p)
        else:
            for _ in repeat(None, min(20, max(1, n // 1000))):
                am(batch)
        gc.disable()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        th0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        if mode == "single":
            for _ in repeat(None, n):
                append(p)
        else:
            n = n // 1000 * 1000
            for _ in repeat(None, n // 1000):
                am(batch)
        wall, th = time.perf_counter_ns() - t0, time.thread_time_ns() - th0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        gc.enable()
        client.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    cpu = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
    return {"mode": mode, "entries": n, "wall_ns_per_entry": wall / n,
            "thread_cpu_ns_per_entry": th / n, "process_cpu_ns_per_entry": cpu * 1e9 / n,
            "minor_faults": ru.ru_minflt - ru0.ru_minflt,
            "voluntary_switches": ru.ru_nvcsw - ru0.ru_nvcsw,
            "involuntary_switches": ru.ru_nivcsw - ru0.ru_nivcsw}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("single", "batch"))
    ap.add_argument("entries", type=int)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--durability", choices=("none", "interval", "always"), default="none")
    args = ap.parse_args(argv)
    r = run(args.mode, args.entries, args.dir, args.durability)
    print(f"{r['mode']}: {r['entries']} entries; per entry: wall {r['wall_ns_per_entry']:.0f} ns, "
          f"appending thread CPU {r['thread_cpu_ns_per_entry']:.0f} ns, process CPU "
          f"{r['process_cpu_ns_per_entry']:.0f} ns; minor faults {r['minor_faults']}, "
          f"context switches {r['voluntary_switches']} voluntary / "
          f"{r['involuntary_switches']} involuntary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
