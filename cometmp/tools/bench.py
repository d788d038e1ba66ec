"""``cometmp bench``: cometmp's append path side by side with its peers, in one run.

Runs in the calling process (and, for ``--scenario multiproc``, in forked children).
Prints a table, or with ``--json`` exactly one JSON document on stdout.

What is measured (100-byte payloads, docs/PERFORMANCE.md explains every figure):

``single`` scenario, in each of ``--rounds`` interleaved rounds:

* ``append``       ``log.append(payload)`` from a Python ``for`` loop (the C-API entry point).
  Mean per call = total time / calls. Two p99s, because no single method is right:

  - *batch100*: the loop is timed in groups of 100 calls with ``perf_counter_ns``; each
    group gives a mean per call, and the p99 is taken over the groups. The timer cost is
    negligible against 100 calls, but a spike inside a group is diluted by the other 99.
  - *sampled*: a second pass times every call on its own with a pair of
    ``perf_counter_ns`` calls; the median cost of an empty timer pair (measured in the same
    run, ``timer_overhead_ns``) is subtracted. This sees single-call spikes (segment
    preallocation, page faults, preemption) at the price of ~tens of ns of timer jitter.

* ``append_many``  ``log.append_many(batch)`` with batches of 1,000, entries/s.
* ``sqlite``       SQLite WAL, ``synchronous=NORMAL``, one ``INSERT`` per transaction
  (autocommit), timed like ``append`` (batch100 and sampled).
* ``filehandler``  ``logger.info(msg)`` on a logger whose only handler is a
  ``logging.FileHandler`` (``%(message)s``, 100-char message, flushed per record),
  i.e. what an application pays per line; timed like ``append``.
* ``read``         ``client.read(stream, entry)`` of the newest entry against an old one
  (the middle of a 200,000-entry stream), mean per call over 2,000 calls each; the two
  must be within 2x (the index is searched in its memory map).
* ``durable`` (unless ``--no-durable``): ``durability="always"`` single append (fsync per
  call) against SQLite ``synchronous=FULL`` autocommit.
* peers (``bench_peers``, the ``bench`` extra; each skipped with a note when its package or
  ``redis-server`` is missing): Redis Streams ``XADD`` one per call and 1,000 per pipeline,
  each with and without AOF, and LMDB ``put`` one per transaction and 1,000 per transaction,
  against ``append`` and ``append_many`` respectively; printed also as Markdown table rows.

Ratios are "times faster than the peer" (peer mean / cometmp mean) computed per round and
reported as the median over rounds: the machine drifts 10-20 % between runs, but both
sides of a ratio were measured seconds apart.

``multiproc`` scenario: for 1 and then 2 processes (``--procs``), each forked child opens
its own Client after the fork and appends to its own stream family (no shared shard, so no
lock contention); rate = all entries / wall time from a barrier release to the last child's
report. Scaling = aggregate(2) / aggregate(1); issue 3 targets >= 1.8x. Each child also
reports the CPU time of its appending thread and of its whole process (which includes
cometmp's background prefault thread). A ``control`` run of the same harness calls
``len(payload)`` instead of appending: its scaling is what the (shared) machine gave two
CPU-bound processes at that moment, the ceiling for cometmp's figure.

``groups`` scenario (cometmp/tools/bench_groups.py): a consumer group of 2 member processes
against Redis Streams consumer groups on the same work (entries/s end to end; 2 members vs 1
with a 1 ms-per-batch handler, beside a no-queue control; kill -9 of a member -> its unacked
entries redelivered; every entry accounted for); ``--entries`` per run (default 200,000).

Targets (issue 2) are printed as PASS/MISS from the figures of this run; nothing is
hard-coded except Comet's published-on-this-machine reference numbers, which are labelled.
Exit status: 0 after a completed run (also when a target is missed), 1 with ``--check`` when
a target is missed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from array import array
from itertools import repeat
from typing import Callable, Sequence

from . import bench_sustained

__all__ = ["main"]

PAYLOAD_BYTES = 100
BATCH = 1000
GROUP = 100  # calls per timed group for the batch100 p99

#: Comet (orbiterhq/comet 4646cd5, Go 1.27.3) measured on this machine type; medians of 3
#: runs, from /work/shared/reference/comet-measured.md. Reference only, never our figures.
COMET_REFERENCE = {
    "append_ns": 1091.0,
    "append_many_entries_per_s": 3.62e6,
    "multiproc_single_1proc_entries_per_s": 835e3,
    "multiproc_single_2proc_entries_per_s": 1.42e6,
    "source": "comet 4646cd5, go test -bench, median of 3 runs on this machine type",
    "file": "shared/reference/comet-measured.md",
}

TARGETS = {
    "append_mean_ns_max": 250.0,
    "append_many_entries_per_s_min": 20e6,
    "faster_than_sqlite_min": 50.0,
    "faster_than_filehandler_min": 30.0,
    "multiproc_scaling_min": 1.8,
}


# ---------------------------------------------------------------------------- timing


def _timer_overhead_ns(samples: int = 20001) -> float:
    """Median cost of an empty ``perf_counter_ns`` pair, as used by ``_sample_calls``."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * samples))
    for i in range(samples):
        t0 = pc()
        out[i] = pc() - t0
    return float(statistics.median(out))


def _grouped_calls(fn: Callable, arg, calls: int, group: int = GROUP) -> array:
    """Call ``fn(arg)`` ``calls`` times in groups of ``group``; return ns per group."""
    pc = time.perf_counter_ns
    groups = max(1, calls // group)
    out = array("q", bytes(8 * groups))
    r = range(group)
    for g in range(groups):
        t0 = pc()
        for _ in r:
            fn(arg)
        out[g] = pc() - t0
    return out


def _sample_calls(fn: Callable, arg, calls: int) -> array:
    """Call ``fn(arg)`` ``calls`` times, timing each call on its own (raw ns)."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * calls))
    for i in range(calls):
        t0 = pc()
        fn(arg)
        out[i] = pc() - t0
    return out


def _pct(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


def _per_call_stats(fn: Callable, arg, calls: int, sampled_calls: int, timer_ns: float) -> dict:
    """Mean (from grouped timing) and p50/p99/p99.9/max per call (both methods)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        groups = _grouped_calls(fn, arg, calls)
        samples = _sample_calls(fn, arg, sampled_calls) if sampled_calls else array("q")
    finally:
        if gc_was:
            gc.enable()
    n = len(groups) * GROUP
    per_group = sorted(g / GROUP for g in groups)
    s = sorted(max(0.0, v - timer_ns) for v in samples)
    mean = sum(groups) / n
    return {
        "calls": n,
        "mean_ns": mean,
        "calls_per_s": 1e9 / mean if mean > 0 else 0.0,
        "p50_batch100_ns": _pct(per_group, 50),
        "p99_batch100_ns": _pct(per_group, 99),
        "max_batch100_ns": per_group[-1],
        "sampled_calls": len(s),
        "p50_sampled_ns": _pct(s, 50),
        "p99_sampled_ns": _pct(s, 99),
        "p999_sampled_ns": _pct(s, 99.9),
        "max_sampled_ns": s[-1] if s else 0.0,
    }


def _call_floor_ns(calls: int) -> float:
    """Mean ns of ``len(payload)`` in the same timed loop: the Python call + loop floor."""
    p = b"x" * PAYLOAD_BYTES
    groups = _grouped_calls(len, p, calls)
    return sum(groups) / (len(groups) * GROUP)


# ------------------------------------------------------------------------- workloads


def _payload() -> bytes:
    return bytes(range(PAYLOAD_BYTES))


def _bench_cometmp_append(root: str, calls: int, sampled: int, warmup: int, timer_ns: float) -> dict:
    import cometmp

    d = tempfile.mkdtemp(prefix="append-", dir=root)
    with cometmp.Client(d, config=_config()) as client:
        lg = client.log("bench:single", shards=1)
        append = lg.append
        p = _payload()
        for _ in repeat(None, warmup):
            append(p)
        out = _per_call_stats(append, p, calls, sampled, timer_ns)
        out["entries_written"] = client.length("bench:single:shard:0000")
    shutil.rmtree(d, ignore_errors=True)
    return out


KEYED_SHARDS = 16
KEYED_KEYS = 4096  # distinct str keys, cycled


def _bench_cometmp_keyed(root: str, calls: int, warmup: int) -> dict:
    """Keyed vs unkeyed ``append(p, key)`` on one 16-shard family, in the same loop shape
    (``key=None`` for unkeyed), so the difference is the cost of routing by key."""
    import cometmp

    d = tempfile.mkdtemp(prefix="keyed-", dir=root)
    p = _payload()
    keys = [f"user-{i}" for i in range(KEYED_KEYS)]
    nones = [None] * KEYED_KEYS
    rounds = max(1, calls // KEYED_KEYS)
    pc = time.perf_counter_ns
    out = {}
    with cometmp.Client(d, config=_config()) as client:
        append = client.log("bench:keyed", shards=KEYED_SHARDS).append
        for ks in (keys, nones):
            for k in ks[:warmup]:
                append(p, k)
        gc_was = gc.isenabled()
        gc.disable()
        try:
            times: dict[str, list[int]] = {"keyed": [], "unkeyed": []}
            for _ in range(rounds):  # interleaved, so both see the same machine
                for name, ks in (("keyed", keys), ("unkeyed", nones)):
                    t0 = pc()
                    for k in ks:
                        append(p, k)
                    times[name].append(pc() - t0)
        finally:
            if gc_was:
                gc.enable()
    shutil.rmtree(d, ignore_errors=True)
    for name, t in times.items():
        out[f"{name}_mean_ns"] = sum(t) / (len(t) * KEYED_KEYS)
    out["calls"] = rounds * KEYED_KEYS
    out["shards"] = KEYED_SHARDS
    out["keyed_vs_unkeyed"] = out["keyed_mean_ns"] / out["unkeyed_mean_ns"]
    return out


def _batch_stats(fn: Callable, arg, entries: int, warmup_batches: int) -> dict:
    """Call ``fn(arg)`` (one batch of ``BATCH`` entries) ``entries // BATCH`` times after
    ``warmup_batches`` untimed calls, timing each call; entries/s and batch percentiles."""
    nb = max(1, entries // BATCH)
    pc = time.perf_counter_ns
    times = array("q", bytes(8 * nb))
    for _ in repeat(None, warmup_batches):
        fn(arg)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(nb):
            t0 = pc()
            fn(arg)
            times[i] = pc() - t0
    finally:
        if gc_was:
            gc.enable()
    total = sum(times)
    st = sorted(times)
    return {
        "batch_size": BATCH,
        "batches": nb,
        "entries": nb * BATCH,
        "entries_per_s": nb * BATCH / (total / 1e9),
        "ns_per_entry": total / (nb * BATCH),
        "p50_batch_us": _pct(st, 50) / 1e3,
        "p99_batch_us": _pct(st, 99) / 1e3,
        "max_batch_us": st[-1] / 1e3,
    }


def _bench_cometmp_append_many(root: str, entries: int, warmup_batches: int) -> dict:
    import cometmp

    d = tempfile.mkdtemp(prefix="many-", dir=root)
    with cometmp.Client(d, config=_config()) as client:
        lg = client.log("bench:batch", shards=1)
        out = _batch_stats(lg.append_many, [_payload()] * BATCH, entries, warmup_batches)
    shutil.rmtree(d, ignore_errors=True)
    return out


def _bench_reads(root: str, entries: int, calls: int) -> dict:
    """``client.read(stream, entry)`` of the newest entry (the active segment's tail: the
    index lookup hits the last entry of a table the writer is still filling) against an
    old one (the middle of the stream), mean per call. Both look the entry up in the mapped
    sparse index and walk at most one index interval (native/index.c, walker.c)."""
    import cometmp

    d = os.path.join(root, "reads")
    with cometmp.Client(d, config=_config()) as c:
        lg = c.log("read", shards=1)
        pay = _payload()
        for _ in range(0, entries, BATCH):
            lg.append_many([pay] * BATCH)
        stream = lg.streams[0]
        newest = c.length(stream) - 1
        old = newest // 2
        out = {}
        for key, entry in (("newest", newest), ("old", old)):
            for _ in range(min(100, calls)):
                c.read(stream, entry)
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                c.read(stream, entry)
            out[f"{key}_ns"] = (time.perf_counter_ns() - t0) / calls
        out["newest_vs_old"] = out["newest_ns"] / out["old_ns"]
        out["calls"] = calls
        out["entries"] = c.length(stream)
    shutil.rmtree(d, ignore_errors=True)
    return out


def _sqlite_conn(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: one txn per INSERT
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, data BLOB)")
    return conn


def _bench_sqlite(root: str, calls: int, sampled: int, warmup: int, timer_ns: float,
                  synchronous: str = "NORMAL") -> dict:
    d = tempfile.mkdtemp(prefix="sqlite-", dir=root)
    conn = _sqlite_conn(os.path.join(d, "log.db"), synchronous)
    execute = conn.execute
    sql = "INSERT INTO log(data) VALUES (?)"
    p = (_payload(),)

    def insert(params, _ex=execute, _sql=sql):
        _ex(_sql, params)

    for _ in repeat(None, warmup):
        insert(p)
    out = _per_call_stats(insert, p, calls, sampled, timer_ns)
    out["rows"] = execute("SELECT count(*) FROM log").fetchone()[0]
    out["synchronous"] = synchronous
    conn.close()
    shutil.rmtree(d, ignore_errors=True)
    return out


def _bench_filehandler(root: str, calls: int, sampled: int, warmup: int, timer_ns: float) -> dict:
    d = tempfile.mkdtemp(prefix="logging-", dir=root)
    path = os.path.join(d, "app.log")
    logger = logging.Logger("cometmp-bench-peer")  # not registered: no global side effects
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    msg = "m" * PAYLOAD_BYTES
    info = logger.info
    for _ in repeat(None, warmup):
        info(msg)
    out = _per_call_stats(info, msg, calls, sampled, timer_ns)
    handler.close()
    out["bytes_written"] = os.path.getsize(path)
    shutil.rmtree(d, ignore_errors=True)
    return out


def _bench_cometmp_durable(root: str, calls: int, timer_ns: float) -> dict:
    import cometmp

    d = tempfile.mkdtemp(prefix="durable-", dir=root)
    cfg = _config()
    cfg.storage.durability = "always"
    with cometmp.Client(d, config=cfg) as client:
        lg = client.log("bench:durable", shards=1)
        append = lg.append
        p = _payload()
        for _ in repeat(None, 5):
            append(p)
        out = _per_call_stats_sampled_only(append, p, calls, timer_ns)
    shutil.rmtree(d, ignore_errors=True)
    return out


def _per_call_stats_sampled_only(fn: Callable, arg, calls: int, timer_ns: float) -> dict:
    """For slow (fsync) calls: every call timed on its own; mean from the samples."""
    s = sorted(max(0.0, v - timer_ns) for v in _sample_calls(fn, arg, calls))
    mean = sum(s) / len(s)
    return {
        "calls": len(s),
        "mean_ns": mean,
        "calls_per_s": 1e9 / mean if mean > 0 else 0.0,
        "p50_sampled_ns": _pct(s, 50),
        "p99_sampled_ns": _pct(s, 99),
        "max_sampled_ns": s[-1],
    }


def _bench_sqlite_full(root: str, calls: int, timer_ns: float) -> dict:
    d = tempfile.mkdtemp(prefix="sqlite-full-", dir=root)
    conn = _sqlite_conn(os.path.join(d, "log.db"), "FULL")
    execute = conn.execute
    sql = "INSERT INTO log(data) VALUES (?)"
    p = (_payload(),)

    def insert(params, _ex=execute, _sql=sql):
        _ex(_sql, params)

    for _ in repeat(None, 5):
        insert(p)
    out = _per_call_stats_sampled_only(insert, p, calls, timer_ns)
    out["synchronous"] = "FULL"
    conn.close()
    shutil.rmtree(d, ignore_errors=True)
    return out


# ------------------------------------------------------------------------ multiproc


#: config.storage.prefault for every cometmp client the benchmarks open (--no-prefault)
PREFAULT = True


def _config():
    import cometmp

    cfg = cometmp.Config()
    cfg.storage.prefault = PREFAULT
    return cfg


def _mp_child(root: str, index: int, entries: int, mode: str, ready_w: int, go_r: int,
              result_w: int) -> None:
    """Runs in a forked child: open its own client, wait for the barrier, append."""
    code = 0
    try:
        import cometmp
        from cometmp import prealloc

        with cometmp.Client(root, config=_config()) as client:
            lg = client.log(f"bench:mp:p{index}", shards=1)
            p = _payload()
            if mode == "control":  # no cometmp at all: what the machine gives 2 processes
                append = len
            elif mode == "single":
                append = lg.append
            if mode in ("single", "control"):
                for _ in repeat(None, min(20000, entries)):
                    append(p)
            else:
                am = lg.append_many
                batch = [p] * BATCH
                for _ in repeat(None, 20):
                    am(batch)
            gc.disable()
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            rt0 = resource.getrusage(resource.RUSAGE_THREAD)
            pf0 = prealloc.stats()
            th0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            if mode in ("single", "control"):
                for _ in repeat(None, entries):
                    append(p)
            else:
                for _ in repeat(None, entries // BATCH):
                    am(batch)
            dt = time.perf_counter_ns() - t0
            th = time.thread_time_ns() - th0
            rt = resource.getrusage(resource.RUSAGE_THREAD)
            pf = {k: v - pf0[k] for k, v in prealloc.stats().items()}
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
            n = entries if mode in ("single", "control") else entries // BATCH * BATCH
            msg = json.dumps({"index": index, "entries": n, "ns": dt, "thread_cpu_ns": th,
                              "process_cpu_ns": int(cpu * 1e9),
                              "thread_minflt": rt.ru_minflt - rt0.ru_minflt,
                              "process_minflt": ru.ru_minflt - ru0.ru_minflt,
                              "prefault": pf,
                              "involuntary_switches": ru.ru_nivcsw - ru0.ru_nivcsw}) + "\n"
            os.write(result_w, msg.encode())
    except BaseException as e:  # report, never fall back into the parent's code
        try:
            os.write(result_w, (json.dumps({"index": index, "error": repr(e)}) + "\n").encode())
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


def _mp_run(root: str, nprocs: int, entries: int, mode: str) -> dict:
    d = tempfile.mkdtemp(prefix=f"mp{nprocs}-", dir=root)
    import cometmp

    cometmp.Client(d).close()  # create the directory marker once, before the fork
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    sys.stdout.flush()
    sys.stderr.flush()
    for i in range(nprocs):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            os.close(res_r)
            _mp_child(d, i, entries, mode, ready_w, go_r, res_w)
        pids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    os.close(res_w)
    results: list[dict] = []
    try:
        got = 0
        while got < nprocs:
            b = os.read(ready_r, nprocs - got)
            if not b:
                break
            got += len(b)
        t0 = time.perf_counter_ns()
        os.write(go_w, b"g" * nprocs)
        buf = b""
        while len(results) < nprocs:
            chunk = os.read(res_r, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                results.append(json.loads(line))
        wall = time.perf_counter_ns() - t0
    finally:
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in (ready_r, go_w, res_r):
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
    errors = [r["error"] for r in results if "error" in r]
    if errors or len(results) != nprocs:
        raise RuntimeError(f"multiproc child failed: {errors or 'missing results'}")
    results.sort(key=lambda r: r["index"])
    total = sum(r["entries"] for r in results)
    return {
        "procs": nprocs,
        "mode": mode,
        "entries": total,
        "wall_s": wall / 1e9,
        "entries_per_s": total / (wall / 1e9),
        "per_process_entries_per_s": [r["entries"] / (r["ns"] / 1e9) for r in results],
        # CPU of each child during its loop: the appending thread alone, and the whole
        # process (appending thread + the core's background page-cache warm-up thread)
        "per_process_loop_s": [r["ns"] / 1e9 for r in results],
        "per_process_thread_cpu_s": [r["thread_cpu_ns"] / 1e9 for r in results],
        "per_process_cpu_s": [r["process_cpu_ns"] / 1e9 for r in results],
        "per_process_involuntary_switches": [r["involuntary_switches"] for r in results],
        # load-independent costs per entry, summed over the children: CPU of the appending
        # threads, CPU of the prefault threads, minor faults the appending threads took, and
        # the pages the prefault threads populated
        "appender_cpu_ns_per_entry": sum(r["thread_cpu_ns"] for r in results) / total,
        "prefault_cpu_ns_per_entry": sum(r["prefault"]["thread_cpu_ns"] for r in results)
        / total,
        "process_cpu_ns_per_entry": sum(r["process_cpu_ns"] for r in results) / total,
        "appender_minflt_per_1k_entries": 1000 * sum(r["thread_minflt"] for r in results)
        / total,
        "prefault_pages_populated": sum(r["prefault"]["bytes_populated"] for r in results)
        // 4096,
        "prefault_failures": sum(r["prefault"]["failures"] for r in results),
    }


# --------------------------------------------------------------------------- reports


def _build_ids() -> dict:
    """Short sha256 of each compiled module in use, so figures can be tied to a build."""
    import hashlib
    import importlib

    out = {}
    for name in ("cometmp._appender", "cometmp._cffi"):
        try:
            path = importlib.import_module(name).__file__
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()[:12]
        except (ImportError, OSError, TypeError):
            out[name] = None
    return out


def _machine(root: str) -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fstype = ""
    try:
        best = ""
        real = os.path.realpath(root)
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return {
        "build": _build_ids(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "dir": root,
        "dir_fs": fstype,
        "loadavg": list(os.getloadavg()),
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _merge_rounds(rounds: list[dict]) -> dict:
    """Median of every numeric field over rounds; the per-round dicts are kept too."""
    out: dict = {}
    for k, v in rounds[0].items():
        if isinstance(v, int) and not isinstance(v, bool):
            out[k] = int(statistics.median_low([r[k] for r in rounds]))
        elif isinstance(v, float):
            out[k] = _median([r[k] for r in rounds])
        else:
            out[k] = v
    out["rounds"] = rounds
    return out


def _target(name: str, want: str, measured: float, ok: bool, unit: str) -> dict:
    return {"name": name, "target": want, "measured": measured, "unit": unit,
            "result": "PASS" if ok else "MISS"}


def _run_single(args, root: str) -> dict:
    from cometmp.tools import bench_peers  # Redis, LMDB (the bench extra): skipped if absent

    timing = bench_peers.Timing(_payload(), BATCH, _per_call_stats, _batch_stats)
    with bench_peers.Peers(root, timing) as peers:  # servers stopped by pid at the block's end
        return _run_single_rounds(args, root, peers)


def _run_single_rounds(args, root: str, peers) -> dict:
    from cometmp.tools import bench_peers

    n = args.entries
    sampled = min(n, args.sampled)
    peer_calls = max(200, n // 50)
    peer_sampled = min(peer_calls, max(200, sampled // 50))
    durable_calls = max(20, n // 5000) if not args.quick else 20
    warm = min(20000, max(1000, n // 50))
    timer_ns = _timer_overhead_ns()
    floor_ns = _call_floor_ns(min(n, 200000))
    rounds: dict[str, list[dict]] = {k: [] for k in
                                     ("append", "append_many", "keyed", "sqlite", "filehandler")}
    ratios: dict[str, list[float]] = {"vs_sqlite": [], "vs_filehandler": [],
                                      "batch_vs_single": []}
    peer_rounds: list[dict] = []
    peer_batch = max(BATCH, n // 10)
    durable: dict[str, list[dict]] = {"cometmp_always": [], "sqlite_full": []}
    for _ in range(args.rounds):
        a = _bench_cometmp_append(root, n, sampled, warm, timer_ns)
        b = _bench_cometmp_append_many(root, n, max(2, warm // BATCH))
        rounds["keyed"].append(_bench_cometmp_keyed(root, n, warm))
        s = _bench_sqlite(root, peer_calls, peer_sampled, 200, timer_ns)
        f = _bench_filehandler(root, peer_calls, peer_sampled, 200, timer_ns)
        rounds["append"].append(a)
        rounds["append_many"].append(b)
        rounds["sqlite"].append(s)
        rounds["filehandler"].append(f)
        ratios["vs_sqlite"].append(s["mean_ns"] / a["mean_ns"])
        ratios["vs_filehandler"].append(f["mean_ns"] / a["mean_ns"])
        ratios["batch_vs_single"].append(a["mean_ns"] / b["ns_per_entry"])
        peer_rounds.append(peers.round(peer_calls, peer_sampled, peer_batch, 200, timer_ns))
        for k, v in bench_peers.ratios(peer_rounds[-1], a, b).items():
            ratios.setdefault(k, []).append(v)
        if args.durable:
            durable["cometmp_always"].append(_bench_cometmp_durable(root, durable_calls, timer_ns))
            durable["sqlite_full"].append(_bench_sqlite_full(root, durable_calls, timer_ns))
    results = {k: _merge_rounds(v) for k, v in rounds.items()}
    results["peers"] = {k: _merge_rounds([r[k] for r in peer_rounds]) for k in peer_rounds[0]}
    results["read"] = _bench_reads(root, min(n, 200_000), 2000 if not args.quick else 200)
    res_ratios = {k: _median(v) for k, v in ratios.items()}
    res_ratios["vs_comet_append"] = COMET_REFERENCE["append_ns"] / results["append"]["mean_ns"]
    res_ratios["vs_comet_append_many"] = (results["append_many"]["entries_per_s"]
                                          / COMET_REFERENCE["append_many_entries_per_s"])
    if args.durable:
        results["durable"] = {k: _merge_rounds(v) for k, v in durable.items()}
        res_ratios["durable_vs_sqlite_full"] = _median(
            [s["mean_ns"] / c["mean_ns"] for c, s in
             zip(durable["cometmp_always"], durable["sqlite_full"])])
    a, b = results["append"], results["append_many"]
    targets = [
        _target("append mean per call", "<= 0.25 us", a["mean_ns"] / 1e3,
                a["mean_ns"] <= TARGETS["append_mean_ns_max"], "us"),
        _target("append_many, batches of 1,000", ">= 20 M entries/s", b["entries_per_s"] / 1e6,
                b["entries_per_s"] >= TARGETS["append_many_entries_per_s_min"], "M entries/s"),
        _target("faster than SQLite WAL NORMAL insert", ">= 50x", res_ratios["vs_sqlite"],
                res_ratios["vs_sqlite"] >= TARGETS["faster_than_sqlite_min"], "x"),
        _target("faster than logging.FileHandler emit", ">= 30x", res_ratios["vs_filehandler"],
                res_ratios["vs_filehandler"] >= TARGETS["faster_than_filehandler_min"], "x"),
    ]
    return {
        "settings": {"entries": n, "sampled_calls": sampled, "peer_calls": peer_calls,
                     "prefault": PREFAULT, "peer_batch_entries": peer_batch,
                     "durable_calls": durable_calls if args.durable else 0,
                     "rounds": args.rounds, "payload_bytes": PAYLOAD_BYTES, "batch": BATCH,
                     "group": GROUP, "quick": args.quick},
        "timer_overhead_ns": timer_ns,
        "call_floor_ns": floor_ns,
        "results": results,
        "ratios": res_ratios,
        "targets": targets,
        "peers": peers.describe(),
        "peers_skipped": dict(peers.skipped),
    }


def _run_multiproc(args, root: str) -> dict:
    procs = sorted({int(x) for x in args.procs.split(",") if x.strip()})
    if not procs or procs[0] < 1:
        raise ValueError("--procs must list positive process counts, e.g. 1,2")
    per = args.entries
    out: dict = {"settings": {"entries_per_process": per, "procs": procs, "rounds": args.rounds,
                              "prefault": PREFAULT,
                              "payload_bytes": PAYLOAD_BYTES, "batch": BATCH,
                              "quick": args.quick},
                 "results": {}, "ratios": {}, "targets": []}
    # "control" runs the same harness with len(payload) instead of an append: a pure-CPU
    # loop, so its scaling is the most this machine gives N processes at that moment
    for mode in args.modes.split(","):
        runs: dict[int, list[dict]] = {p: [] for p in procs}
        scal: dict[int, list[float]] = {p: [] for p in procs}
        for _ in range(args.rounds):  # interleave process counts within each round
            base = None
            for p in procs:
                r = _mp_run(root, p, per, mode)
                runs[p].append(r)
                if base is None:
                    base = r["entries_per_s"]
                scal[p].append(r["entries_per_s"] / base)
        out["results"][mode] = {str(p): _merge_rounds(v) for p, v in runs.items()}
        for p in procs[1:]:
            out["ratios"][f"{mode}_scaling_{p}_vs_{procs[0]}"] = _median(scal[p])
    if "single_scaling_2_vs_1" in out["ratios"] and procs[0] == 1:
        s = out["ratios"]["single_scaling_2_vs_1"]
        out["targets"].append(_target("2 processes vs 1, single appends", ">= 1.8x", s,
                                      s >= TARGETS["multiproc_scaling_min"], "x"))
        out["ratios"]["comet_single_scaling_2_vs_1"] = (
            COMET_REFERENCE["multiproc_single_2proc_entries_per_s"]
            / COMET_REFERENCE["multiproc_single_1proc_entries_per_s"])
    return out


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def _print_single(doc: dict) -> None:
    r, q = doc["results"], doc["ratios"]
    st = doc["settings"]
    print(f"cometmp bench (single process, {st['payload_bytes']}-byte entries, "
          f"median of {st['rounds']} round(s))")
    print(f"  timer pair overhead {doc['timer_overhead_ns']:.0f} ns (subtracted from sampled "
          f"figures); len(payload) in the same loop {doc['call_floor_ns']:.0f} ns")
    hdr = f"  {'workload':44} {'mean':>10} {'p99 b100':>10} {'p99 call':>10} {'p99.9':>10} {'calls':>9}"
    print(hdr)
    for key, label in (("append", "cometmp log.append"),
                       ("sqlite", "SQLite WAL NORMAL, 1 INSERT/txn"),
                       ("filehandler", "logging.FileHandler (logger.info)")):
        x = r[key]
        print(f"  {label:44} {_fmt_ns(x['mean_ns']):>10} {_fmt_ns(x['p99_batch100_ns']):>10} "
              f"{_fmt_ns(x['p99_sampled_ns']):>10} {_fmt_ns(x['p999_sampled_ns']):>10} "
              f"{x['calls']:>9}")
    b = r["append_many"]
    print(f"  {'cometmp append_many x1000':44} {_fmt_ns(b['ns_per_entry']):>10} per entry = "
          f"{b['entries_per_s'] / 1e6:.2f} M entries/s (p99 batch {b['p99_batch_us']:.0f} us)")
    k = r["keyed"]
    print(f"  {'cometmp append(p, key), 16 shards':44} {_fmt_ns(k['keyed_mean_ns']):>10} keyed, "
          f"{_fmt_ns(k['unkeyed_mean_ns'])} key=None: {k['keyed_vs_unkeyed']:.2f}x")
    if "durable" in r:
        c, s = r["durable"]["cometmp_always"], r["durable"]["sqlite_full"]
        print(f"  {'durable: cometmp durability=always':44} {_fmt_ns(c['mean_ns']):>10} "
              f"(p99 {_fmt_ns(c['p99_sampled_ns'])}, {c['calls']} calls)")
        print(f"  {'durable: SQLite WAL synchronous=FULL':44} {_fmt_ns(s['mean_ns']):>10} "
              f"(p99 {_fmt_ns(s['p99_sampled_ns'])}, {s['calls']} calls)")
    if "read" in r:
        x = r["read"]
        print(f"  {'client.read: newest entry / an old one':44} {_fmt_ns(x['newest_ns']):>10} / "
              f"{_fmt_ns(x['old_ns'])} per call ({x['newest_vs_old']:.2f}x, {x['entries']} entries)")
    print("  ratios (median over rounds of same-round figures):")
    print(f"    append vs SQLite insert        {q['vs_sqlite']:8.1f}x faster")
    print(f"    append vs FileHandler emit     {q['vs_filehandler']:8.1f}x faster")
    print(f"    append_many vs append          {q['batch_vs_single']:8.1f}x per entry")
    print(f"    append vs Comet (1.09 us, reference)        {q['vs_comet_append']:8.1f}x faster")
    print(f"    append_many vs Comet (3.62 M/s, reference)  {q['vs_comet_append_many']:8.1f}x")
    if "durable_vs_sqlite_full" in q:
        print(f"    durable append vs SQLite FULL  {q['durable_vs_sqlite_full']:8.1f}x faster")
    from cometmp.tools import bench_peers

    bench_peers.print_table(doc, _fmt_ns)


def _print_multiproc(doc: dict) -> None:
    st = doc["settings"]
    print(f"cometmp bench --scenario multiproc ({st['entries_per_process']} entries per process, "
          f"median of {st['rounds']} round(s))")
    for mode, per in doc["results"].items():
        for p, x in per.items():
            last = x["rounds"][-1]
            each = ", ".join(f"{v / 1e6:.2f}" for v in last["per_process_entries_per_s"])
            cpu = ", ".join(f"{c:.2f}/{t:.2f}/{w:.2f}" for c, t, w in zip(
                last["per_process_cpu_s"], last["per_process_thread_cpu_s"],
                last["per_process_loop_s"]))
            print(f"  {mode:7} {p} proc(s): {x['entries_per_s'] / 1e6:7.2f} M entries/s aggregate "
                  f"(last round, per process: {each} M/s; cpu process/thread/wall s: {cpu})")
            if mode != "control":
                print(f"          per entry (median): appender {x['appender_cpu_ns_per_entry']:.0f} "
                      f"ns CPU, prefault thread {x['prefault_cpu_ns_per_entry']:.0f} ns, "
                      f"process {x['process_cpu_ns_per_entry']:.0f} ns; appender "
                      f"{x['appender_minflt_per_1k_entries']:.2f} faults/1k entries; pages "
                      f"prefaulted {x['prefault_pages_populated']}")
    for k, v in doc["ratios"].items():
        print(f"  {k:32} {v:6.2f}x")


def _print_targets(targets: list[dict]) -> None:
    if not targets:
        return
    print("  targets:")
    for t in targets:
        print(f"    {t['result']:4}  {t['name']:42} target {t['target']:>18}   measured "
              f"{t['measured']:.3g} {t['unit']}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cometmp bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("single", "multiproc", "wakeup", "sustained", "async",
                                            "groups"),
                   default="single",
                   help="single: append/append_many vs SQLite and logging (default); "
                        "multiproc: aggregate rate of N forked writers; "
                        "wakeup: append -> consumer in another process, beside the futex floor; "
                        "sustained: every append's latency under rotation and retention "
                        "(cometmp/tools/bench_sustained.py); "
                        "async: read_async and gevent waits beside the blocking read "
                        "(cometmp/tools/bench_async.py); "
                        "groups: a consumer group of member processes beside Redis Streams "
                        "consumer groups (cometmp/tools/bench_groups.py)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds in all: 20,000 entries, one round")
    p.add_argument("--json", action="store_true", help="print exactly one JSON document")
    p.add_argument("--entries", type=int, default=None,
                   help="cometmp appends per workload and round (default 1,000,000; "
                        "peers get 1/50 of it; multiproc: per process; groups: per run, "
                        "default 200,000)")
    p.add_argument("--sampled", type=int, default=200000,
                   help="calls timed one by one for the sampled percentiles (default 200,000)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    p.add_argument("--procs", default="1,2", help="multiproc process counts (default 1,2)")
    p.add_argument("--modes", default="single,batch,control",
                   help="multiproc workloads, comma-separated, run in this order (default "
                        "single,batch,control)")
    p.add_argument("--no-durable", dest="durable", action="store_false",
                   help="skip the fsync-per-append comparison")
    p.add_argument("--dir", default=None,
                   help="parent directory for the temporary logs and databases (default: the "
                        "system temp dir); the filesystem matters, it is reported")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--no-prefault", dest="prefault", action="store_false",
                   help="open cometmp clients with config.storage.prefault=False (no background "
                        "prefault thread)")
    p.add_argument("--samples", type=int, default=None,
                   help="wakeup: samples per variant, row and round (default 500, --quick 100)")
    p.add_argument("--load", type=int, default=None,
                   help="wakeup: busy processes in the loaded row (default one per core; 0: "
                        "idle row only)")
    p.add_argument("--seed", type=int, default=None, help="wakeup, sustained: random seed (default: random, printed)")
    p.add_argument("--slice-us", type=int, default=0,
                   help="wakeup: every waiter (floor included) asks EEVDF for this time slice "
                        "(sched_setattr sched_runtime; default 0: the kernel's)")
    p.add_argument("--readers", type=int, default=None,
                   help="async: concurrent read_async calls (default 100)")
    bench_sustained.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    global PREFAULT
    PREFAULT = args.prefault
    if args.entries is None:
        big = 200_000 if args.scenario == "groups" else 1_000_000
        args.entries = 20000 if args.quick else big
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.entries < 1000 or args.rounds < 1 or args.sampled < 0:
        parser.error("--entries must be >= 1000, --rounds >= 1, --sampled >= 0")
    if not args.modes or set(args.modes.split(",")) - {"single", "batch", "control"}:
        parser.error("--modes takes single, batch and/or control, comma-separated")
    if args.quick:
        args.sampled = min(args.sampled, args.entries)
    parent = args.dir or tempfile.gettempdir()
    if not os.path.isdir(parent):
        parser.error(f"--dir {parent}: not a directory")
    root = tempfile.mkdtemp(prefix="cometmp-bench-", dir=parent)
    try:
        machine = _machine(root)
        if args.scenario == "wakeup":
            from . import bench_wakeup
            if args.samples is None:
                args.samples = 100 if args.quick else 500
            doc = bench_wakeup.run(args, root)
        elif args.scenario == "multiproc":
            doc = _run_multiproc(args, root)
        elif args.scenario == "sustained":
            doc = bench_sustained.run(args, root, int(_timer_overhead_ns()))
        elif args.scenario == "async":
            from . import bench_async
            doc = bench_async.run(args, root)
        elif args.scenario == "groups":
            from . import bench_groups
            doc = bench_groups.run(args, root)
        else:
            doc = _run_single(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    doc = {"tool": "cometmp bench", "scenario": args.scenario, "machine": machine,
           "comet_reference": COMET_REFERENCE,
           # --quick runs last milliseconds: good for "does it run", not for judging targets
           "indicative_only": bool(args.quick), **doc}
    doc["machine"]["loadavg_end"] = list(os.getloadavg())
    if args.json:
        json.dump(doc, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
    else:
        m = doc["machine"]
        print(f"{m['date_utc']}  {m['cpu']} x{m['cpus']}, Linux {m['kernel']}, Python "
              f"{m['python']}, SQLite {m['sqlite']}, dir on {m['dir_fs'] or '?'}, "
              f"load {m['loadavg'][0]:.2f}")
        if args.scenario == "wakeup":
            from . import bench_wakeup
            bench_wakeup.print_report(doc)
        elif args.scenario == "async":
            from . import bench_async
            bench_async.print_report(doc)
        elif args.scenario == "groups":
            from . import bench_groups
            bench_groups.print_report(doc)
        else:
            {"multiproc": _print_multiproc, "sustained": bench_sustained.print_doc}.get(
                args.scenario, _print_single)(doc)
        _print_targets(doc["targets"])
        if doc["indicative_only"]:
            print("  (--quick: runs too short to judge the targets; use a full run)")
    missed = any(t["result"] == "MISS" for t in doc["targets"])
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
