"""Slow appends in a stream's first pages: one process appends 100 B entries one every
--gap-us (a slow stream, as a request log or the wakeup scenario's writer) and times each
call; a call over --slow-us is counted and its index printed.

Two cases, each in a fresh directory on the filesystem of --dir:
  new       the stream is created by this client (its first headroom is the ramp's 64 KiB)
  reopened  another client created it and closed (as every benchmark whose parent makes
            the stream first); this one opens it and appends

Periodic slow calls (one per 4 KiB of records) are work on the append path per page:
a write fault into a page nobody populated, or a fallocate per page while the headroom
ramps (docs/PERFORMANCE.md "The woken read, and the writer's first pages").

    .venv/bin/python benchmarks/append_first_pages.py
    .venv/bin/python benchmarks/append_first_pages.py --entries 600 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cometmp  # noqa: E402


def run(case: str, base: str, entries: int, gap_us: int, slow_us: float) -> dict:
    d = tempfile.mkdtemp(prefix="cometmp-first-pages-", dir=base)
    try:
        if case == "reopened":
            with cometmp.Client(d) as c:
                c.log("s", shards=1)
        ns = time.perf_counter_ns
        took = []
        with cometmp.Client(d) as c:
            log = c.log("s", shards=1)
            payload = b"p" * 100
            gc.disable()              # the runtime's collections are not the append's
            try:
                for _ in range(entries):
                    time.sleep(gap_us / 1e6)
                    t0 = ns()
                    log.append(payload)
                    took.append(ns() - t0)
            finally:
                gc.enable()
        slow = [(i, t / 1e3) for i, t in enumerate(took) if t > slow_us * 1e3]
        srt = sorted(took)
        return {"case": case, "entries": entries, "slow": len(slow),
                "slow_calls": [(i, round(us, 1)) for i, us in slow],
                "p50_us": srt[len(srt) // 2] / 1e3, "max_us": srt[-1] / 1e3}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=300)
    ap.add_argument("--gap-us", type=int, default=1000)
    ap.add_argument("--slow-us", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the directories go (default: $TMPDIR)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    out = []
    for _ in range(a.rounds):
        for case in ("new", "reopened"):
            out.append(run(case, a.dir, a.entries, a.gap_us, a.slow_us))
    if a.json:
        print(json.dumps({"load": os.getloadavg(), "runs": out}, indent=1))
        return 0
    for r in out:
        print(f"{r['case']:9} {r['entries']} appends: {r['slow']} over {a.slow_us:g} us, "
              f"p50 {r['p50_us']:.2f} us, max {r['max_us']:.1f} us; slow calls (index, us): "
              f"{r['slow_calls'][:12]}")
    print(f"load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
