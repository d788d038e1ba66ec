"""Logging from several processes at once: cometmp.logging.CometHandler against
concurrent-log-handler's ConcurrentRotatingFileHandler (the usual answer to "multi-process
safe file logging"), with the unsafe stdlib FileHandler as a reference line.

Method: the parent forks P children; each child builds its handler after the fork, waits
on a barrier, then logs N records of ~100 bytes through a ``logging.Logger`` with the
format ``%(message)s``. Wall time runs from the barrier's release until the last child
finishes (its handler closed). rec/s is aggregate: P*N / wall time. Every run is checked:
the log must hold exactly P*N records afterwards.

``cometmp (json)`` is the same handler with ``format="json"`` (one ``cometmp.log/1``
object per record, docs/FORMAT.md §9; ~250 bytes instead of ~100), and ``loguru ->
cometmp`` is ``logger.add(CometHandler(...), format="{message}")``: the cost of the JSON
record and of loguru's front end, in the same interleaved run as the plain handler.
``--format-only`` times just ``Formatter.format()`` per record in one process (plain
``%(message)s`` vs JSON), the formatting cost without the append.

    .venv/bin/python benchmarks/bench_logging.py --procs 2 --records 100000
    .venv/bin/python benchmarks/bench_logging.py --format-only --records 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MESSAGE = "x" * 80  # with "p<p> <i> " the formatted record is ~90-100 bytes


def make_handler(kind: str, root: str) -> logging.Handler:
    if kind in ("cometmp", "cometmp (json)", "loguru -> cometmp"):
        from cometmp.logging import CometHandler

        return CometHandler(os.path.join(root, "cometmp"), stream="logs",
                            format="json" if kind == "cometmp (json)" else None)
    if kind == "concurrent-log-handler":
        from concurrent_log_handler import ConcurrentRotatingFileHandler

        return ConcurrentRotatingFileHandler(os.path.join(root, "clh.log"), "a",
                                             maxBytes=64 << 20, backupCount=10)
    if kind == "FileHandler (unsafe)":
        return logging.FileHandler(os.path.join(root, "plain.log"))
    raise ValueError(kind)


def count_records(kind: str, root: str) -> int:
    if kind.startswith("cometmp") or kind.startswith("loguru"):
        import cometmp

        with cometmp.Client(os.path.join(root, "cometmp"), readonly=True) as c:
            return c.length("logs")
    n = 0
    for name in os.listdir(root):
        if name.endswith(".log") or ".log." in name:
            with open(os.path.join(root, name), "rb") as f:
                n += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return n


def child(kind: str, root: str, p: int, n: int, barrier, out) -> None:
    h = make_handler(kind, root)
    if kind != "cometmp (json)":
        h.setFormatter(logging.Formatter("%(message)s"))
    if kind.startswith("loguru"):
        from loguru import logger as lg

        lg.remove()
        lg.add(h, format="{message}")
        barrier.wait()
        t0 = time.perf_counter()
        for i in range(n):
            lg.info("p{} {} {}", p, i, MESSAGE)
        lg.remove()  # closes h
        out.put((p, time.perf_counter() - t0, time.time()))
        return
    lg = logging.getLogger(f"bench.{p}")
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.setLevel(logging.INFO)
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(n):
        lg.info("p%d %d %s", p, i, MESSAGE)
    h.close()
    out.put((p, time.perf_counter() - t0, time.time()))


def run(kind: str, procs: int, n: int) -> dict:
    root = tempfile.mkdtemp(prefix="bench-logging-")
    try:
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(procs + 1)
        out = ctx.Queue()
        ps = [ctx.Process(target=child, args=(kind, root, p, n, barrier, out)) for p in range(procs)]
        for pr in ps:
            pr.start()
        barrier.wait()
        start = time.time()
        results = [out.get(timeout=600) for _ in ps]
        for pr in ps:
            pr.join()
        wall = max(r[2] for r in results) - start
        found = count_records(kind, root)
        assert found == procs * n, f"{kind}: {found} records, expected {procs * n}"
        return {"handler": kind, "procs": procs, "records_per_proc": n, "wall_s": wall,
                "rec_per_s": procs * n / wall, "us_per_rec": wall / (procs * n) * 1e6,
                "per_proc_us": sorted(r[1] / n * 1e6 for r in results), "records_found": found}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def format_only(n: int, repeat: int) -> dict:
    """ns per ``format()`` of one record, plain vs JSON, interleaved, best of ``repeat``."""
    from cometmp.logging import JSONFormatter

    fmts = {"plain %(message)s": logging.Formatter("%(message)s"), "json": JSONFormatter()}
    rec = logging.LogRecord("bench", logging.INFO, __file__, 1, "p%d %d %s", (0, 1, MESSAGE),
                            None)
    rec_extra = logging.LogRecord("bench", logging.INFO, __file__, 1, "p%d %d %s",
                                  (0, 1, MESSAGE), None)
    rec_extra.__dict__.update(request_id="r-123", user_id=42, path="/api/v1/items")
    cases = {"plain %(message)s": (fmts["plain %(message)s"], rec), "json": (fmts["json"], rec),
             "json + 3 extra fields": (fmts["json"], rec_extra)}
    best = {k: float("inf") for k in cases}
    for _ in range(repeat):
        for name, (f, r) in cases.items():
            t0 = time.perf_counter_ns()
            for _ in range(n):
                f.format(r)
            best[name] = min(best[name], (time.perf_counter_ns() - t0) / n)
    return {"ns_per_format": best, "bytes": {k: len(f.format(r).encode()) for k, (f, r) in cases.items()},
            "json_vs_plain": best["json"] / best["plain %(message)s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--records", type=int, default=100_000, help="records per process")
    ap.add_argument("--repeat", type=int, default=3, help="runs per handler; the best is kept")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--format-only", action="store_true",
                    help="time Formatter.format() alone: plain vs JSON (one process)")
    args = ap.parse_args(argv)
    if args.format_only:
        r = format_only(args.records, args.repeat)
        if args.json:
            json.dump(r, sys.stdout, indent=2)
            print()
            return 0
        print(f"Formatter.format() per record, {args.records} records, best of {args.repeat}")
        for k, v in r["ns_per_format"].items():
            print(f"{k:<24} {v / 1000:>7.2f} us  {r['bytes'][k]:>4} bytes")
        print(f"json / plain: {r['json_vs_plain']:.1f}x")
        return 0
    kinds = ["cometmp", "cometmp (json)", "loguru -> cometmp", "concurrent-log-handler",
             "FileHandler (unsafe)"]
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for kind in kinds:  # interleaved, so machine noise hits every handler alike
            r = run(kind, args.procs, args.records)
            if kind not in best or r["rec_per_s"] > best[kind]["rec_per_s"]:
                best[kind] = r
    ratio = best["cometmp"]["rec_per_s"] / best["concurrent-log-handler"]["rec_per_s"]
    json_cost = best["cometmp (json)"]["us_per_rec"] / best["cometmp"]["us_per_rec"]
    loguru_cost = best["loguru -> cometmp"]["us_per_rec"] / best["cometmp"]["us_per_rec"]
    if args.json:
        json.dump({"results": list(best.values()), "cometmp_vs_concurrent_log_handler": ratio,
                   "json_vs_plain_us_per_rec": json_cost, "loguru_vs_logging_us_per_rec": loguru_cost},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.procs} processes x {args.records} records, best of {args.repeat}, aggregate")
    print(f"{'handler':<26} {'rec/s':>10} {'us/rec':>8}  per-process us/rec")
    for r in best.values():
        per = " / ".join(f"{x:.1f}" for x in r["per_proc_us"])
        print(f"{r['handler']:<26} {r['rec_per_s']:>10,.0f} {r['us_per_rec']:>8.2f}  {per}")
    print(f"cometmp / concurrent-log-handler throughput: {ratio:.1f}x")
    print(f"cometmp (json) / cometmp us per record: {json_cost:.2f}x; "
          f"loguru -> cometmp / cometmp: {loguru_cost:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
