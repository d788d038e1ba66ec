"""Consumer benchmark: cross-process wake-up latency and zero-copy read throughput.

Latency (superseded by ``cometmp bench --scenario wakeup``, which measures the same edge
beside a C futex floor in the same run, idle and loaded, with run delay per sample; kept
for comparison with earlier figures): a writer process appends one 100-byte entry at random intervals (0.5-1.5 ms,
so the consumer is asleep on the futex each time) and records, per entry, the
CLOCK_MONOTONIC time at which ``append`` returned; a consumer in another process blocks
in ``read(timeout=None)`` and records when the batch holding the entry is in its hands.
Latency = seen - returned (CLOCK_MONOTONIC is shared by all processes); p50/p99/max.

Throughput: a stream is filled to DEPTH entries of 100 bytes; a consumer group then
reads it from the start (or, with DEPTH > --window, the last --window entries after a
reset_offset, i.e. DEPTH entries deep) through ``read(zero_copy=True)`` in batches of
--batch, acking each batch; shallow depths are re-read (after an untimed reset_offset
seek each time) until 200,000 entries were read. Reported per depth, entries/s (best of --rounds):

* ``batch``     read() + ack(): every entry validated (CRC) and held as a zero-copy
                reference in the Batch (views materialise lazily)
* ``views``     + ``batch.payloads()``: one memoryview per entry over the mapping
* ``touch``     + a Python loop calling len() on each view (user-code cost)
* ``bytes``     read() default (bytes copies) + payloads()

    .venv/bin/python benchmarks/bench_consumer.py            # depths 1e3 .. 1e6
    .venv/bin/python benchmarks/bench_consumer.py --full     # .. 1e7 (~1.2 GB of segments)
    .venv/bin/python benchmarks/bench_consumer.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cometmp  # noqa: E402

PAYLOAD = b"p" * 100


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


# ---- latency --------------------------------------------------------------------------------

def _lat_writer(root: str, n: int, out: str, go: float) -> None:
    with cometmp.Client(root) as c:
        log = c.log("lat", shards=1)
        rng = random.Random(1)
        stamps = []
        while time.time() < go:
            time.sleep(0.001)
        for i in range(n):
            time.sleep(rng.uniform(0.0005, 0.0015))
            log.append(struct.pack("<q", i) + b"l" * 92)
            stamps.append(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    with open(out, "wb") as f:
        f.write(struct.pack(f"<{n}q", *stamps))


def latency(n: int) -> dict:
    root = tempfile.mkdtemp(prefix="cometmp-bench-lat-")
    try:
        with cometmp.Client(root) as c:
            c.log("lat", shards=1)
            con = cometmp.Consumer(c, group="lat")
            con.read("lat:shard:*", timeout=0)      # claim the group, map the state page
            out = os.path.join(root, "stamps")
            go = time.time() + 0.5
            pid = os.fork()
            if pid == 0:
                try:
                    _lat_writer(root, n, out, go)
                finally:
                    os._exit(0)
            seen = {}
            while len(seen) < n:
                b = con.read("lat:shard:*", max_messages=1000, timeout=None)
                now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                for p in b.payloads():
                    seen[struct.unpack_from("<q", p)[0]] = now
                con.ack(b)
            os.waitpid(pid, 0)
            with open(out, "rb") as f:
                stamps = struct.unpack(f"<{n}q", f.read())
            lat = [(seen[i] - stamps[i]) / 1000 for i in range(n)]
            con.close()
        return {"samples": n, "p50_us": round(pct(lat, 0.5), 1), "p99_us": round(pct(lat, 0.99), 1),
                "max_us": round(max(lat), 1)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- throughput -----------------------------------------------------------------------------

def _fill(client, depth: int) -> None:
    log = client.log("tp", shards=1)
    chunk = [PAYLOAD] * 10000
    done = 0
    while done < depth:
        k = min(10000, depth - done)
        log.append_many(chunk if k == 10000 else chunk[:k])
        done += k


def _drain(con, start: int, count: int, batch: int, mode: str, total: int) -> float:
    """Read ``count`` entries from ``start`` (repeating, with a reset_offset seek each time,
    until ``total`` entries were read, so shallow depths are not timing one call)."""
    zc = mode != "bytes"
    done = 0
    spent = 0.0
    while done < total:
        con.reset_offset("tp:shard:0000", start)   # the seek is not timed
        n = 0
        t = time.perf_counter()
        while n < count:
            b = con.read("tp:shard:*", max_messages=min(batch, count - n), timeout=0, zero_copy=zc)
            if mode in ("views", "bytes"):
                b.payloads()
            elif mode == "touch":
                tot = 0
                for v in b.payloads():
                    tot += len(v)
            n += len(b)
            con.ack(b)
        spent += time.perf_counter() - t
        done += n
    return done / spent


def throughput(depths: list[int], batch: int, window: int, rounds: int) -> list[dict]:
    rows = []
    for depth in depths:
        root = tempfile.mkdtemp(prefix="cometmp-bench-tp-")
        try:
            with cometmp.Client(root) as c:
                t = time.perf_counter()
                _fill(c, depth)
                fill_s = time.perf_counter() - t
                count = min(depth, window)
                start = depth - count
                row = {"depth": depth, "read": count, "start": start, "batch": batch,
                       "fill_s": round(fill_s, 2)}
                for mode in ("batch", "views", "touch", "bytes"):
                    best = 0.0
                    for r in range(rounds):
                        con = cometmp.Consumer(c, group=f"{mode}-{r}")
                        best = max(best, _drain(con, start, count, batch, mode, max(count, 200_000)))
                        con.close()
                    row[mode + "_Mps"] = round(best / 1e6, 2)
                rows.append(row)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="include depth 1e7 (~1.2 GB on disk)")
    ap.add_argument("--depths", type=str, default=None, help="comma-separated depths")
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--window", type=int, default=1_000_000,
                    help="entries read per depth (the last ones, i.e. DEPTH deep)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-samples", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    depths = [int(float(x)) for x in a.depths.split(",")] if a.depths else \
        [10**3, 10**4, 10**5, 10**6] + ([10**7] if a.full else [])
    res = {"latency": latency(a.latency_samples),
           "throughput": throughput(depths, a.batch, a.window, a.rounds),
           "cpus": os.cpu_count(), "load": os.getloadavg()}
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    lat = res["latency"]
    print(f"append -> consumer sees it, cross-process ({lat['samples']} samples): "
          f"p50 {lat['p50_us']} us, p99 {lat['p99_us']} us, max {lat['max_us']} us")
    print(f"{'depth':>10} {'read':>9} {'batch M/s':>10} {'views M/s':>10} {'touch M/s':>10} "
          f"{'bytes M/s':>10}")
    for r in res["throughput"]:
        print(f"{r['depth']:>10} {r['read']:>9} {r['batch_Mps']:>10} {r['views_Mps']:>10} "
              f"{r['touch_Mps']:>10} {r['bytes_Mps']:>10}")
    print(f"(batch of {a.batch}, best of {a.rounds}; load average {res['load'][0]:.2f} on "
          f"{res['cpus']} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
