"""A worker of tests/multiprocess/test_app_metrics_mp.py (and the benchmark's peer runs):

    python app_metrics_worker.py cometmp DIR INDEX WORKERS   # registry slot + enable_prometheus
    python app_metrics_worker.py pc PCDIR INDEX WORKERS      # prometheus_client multiprocess mode

It makes the application metrics of ``workload(INDEX)`` — a counter, a gauge of every
multiprocess_mode, a histogram, a summary — prints ``ready <pid> <slot>`` and then waits
for a line on stdin ("exit", or EOF) before leaving the registry and exiting normally. ``slot`` is the registry
entry it holds (cometmp) or "-" (pc). Values are multiples of 1/4, so sums are exact in
any order.
"""

from __future__ import annotations

import os
import sys
import time

MODES = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
         "mostrecent", "livemostrecent")


def workload(i: int) -> None:
    """The metrics of worker ``i``; the same calls under either value class."""
    from prometheus_client import Counter, Gauge, Histogram, Summary

    c = Counter("app_requests", "Requests served.", ["path"])
    c.labels("/a").inc(i + 1)
    if i % 2 == 0:
        c.labels("/b").inc(0.25)
    for k, mode in enumerate(MODES):
        g = Gauge(f"app_g_{mode}", f"Gauge in mode {mode}.", ["kind"], multiprocess_mode=mode)
        if mode.endswith("mostrecent"):
            g.labels("x").set(10 * i + k)
            time.sleep(0.002)     # distinct timestamps, in the order the workers run
        else:
            g.labels("x").set(10 * i + k)
            g.labels("x").inc(0.5)
            g.labels("x").dec(0.25)
        if i == 0:
            g.labels("only0").set(-5 - k)     # a child only worker 0 has
    # only ever incremented: a replacement must start from 0, not from the dead worker's
    Gauge("app_inflight", "Requests in flight.", multiprocess_mode="all").inc()
    h = Histogram("app_latency", "Latency.", ["route"], buckets=(0.25, 1.0, 4.0))
    for v in (0.125, 0.5 * (i + 1), 3.0, 8.0 * i):
        h.labels("r").observe(v)
    s = Summary("app_size", "Sizes.")
    s.observe(2.0 * (i + 1))


def main() -> None:
    kind, directory, index, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    slot = "-"
    if kind == "pc":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    else:
        import cometmp
        import cometmp.metrics

        cometmp.registry.join(directory, create_count=workers, start_thread=False)
        cometmp.metrics.enable_prometheus(directory)
        slot = str(cometmp.registry.membership.entry_index())
    workload(index)
    print(f"ready {os.getpid()} {slot}", flush=True)
    sys.stdin.readline()
    if kind != "pc":
        cometmp.registry.leave()     # the last one to leave removes the registry


if __name__ == "__main__":
    main()
