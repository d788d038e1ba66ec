"""``cometmp bench --scenario sustained``: request-path latency under sustained load.

Runs in the calling process (the conductor) and in forked worker processes, like a
gunicorn master and its workers. Two modes:

**Latency** (default). First the disk's sustained writeback bandwidth for the target
directory is measured: ``--probe-mb`` (default 256) MiB are written with ``write()`` in
4 MiB blocks and ``fdatasync``ed, and bandwidth = bytes / (time to write + sync). That is
what the kernel can push to the device while pages keep being dirtied, the ceiling a log
sustains (less, and the probe's dirty pages would still be in flight). Then ``--workers``
processes (default: one per core) each open their own ``Client`` after the fork and
append single entries of 100 B-1 KiB (sizes from ``random.Random(seed + worker)``) to
their own stream (``sustained:w<i>``, the shard a registry would give each worker) in one
data directory, at a fixed aggregate rate (``--rate`` bytes/s, default ``--rate-fraction``
0.5 of the measured bandwidth) for ``--seconds`` (default 60), with small segments
(``--segment-mb``, default 8) so rotation is frequent and a retention policy
(``max_shard_bytes`` = ``--retain-segments`` segments, checked every 0.5 s) that deletes
segments during the run. Pacing: every millisecond a worker appends the entries due by
then and sleeps; the latency of *every* append is ``perf_counter_ns`` around the call
(minus the median cost of an empty timer pair, measured first), stored in a preallocated
array. Reported per run: p50, p99, p99.9, max, the slowest call (worker, time, entry) and
the nearest rotation (the append that created a segment: its entry number is the
segment's base) and retention deletion (seen by the conductor polling the stream
directories every 10 ms), the number of calls over 50 us / 1 ms / 5 ms, and
``/proc/vmstat`` deltas (dirty throttling and reclaim counters) and per-worker rusage.
With matplotlib importable, ``--plot FILE.png`` draws latency over time.

**Volume** (``--volume 10G``): one process appends ``append_many`` batches of 1,000 x
100 B until that much was written, once without retention and once with it (the stream
kept at ``--retain-segments`` segments), and prints throughput per 256 MiB written as a
text curve (and a PNG with ``--plot``).

Speed is measured here, never in tests; absolute figures on a shared machine are
inflated, so compare runs side by side (``--prefault/--no-prefault``, two builds).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import threading
import time
from array import array

__all__ = ["measure_writeback", "parse_size", "run"]

MiB = 1 << 20
MIN_ENTRY, MAX_ENTRY = 100, 1024
TICK_NS = 1_000_000          # pacing tick: entries due are appended, then the worker sleeps
POLL_S = 0.002               # conductor poll: directories (retention deletions), stacks
VMSTAT_KEYS = ("nr_dirty", "nr_writeback", "nr_dirtied", "nr_written", "pgscan_direct",
               "pgsteal_direct", "allocstall_normal", "allocstall_movable", "pgscan_kswapd",
               "compact_stall", "pgmajfault", "pgfault", "thp_fault_alloc")
VOLUME_STEP = 256 * MiB
SLOW_NS = 1_000_000          # calls slower than this get their run-queue wait recorded


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``64K`` or a byte count -> bytes."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMGT" else t
    return int(float(num) * mult)


def _vmstat() -> dict:
    out = {}
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                k, v = line.split()
                out[k] = int(v)
    except OSError:
        pass
    return out


def _vm_delta(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in VMSTAT_KEYS if k in b}


def measure_writeback(parent: str, mb: int = 256) -> dict:
    """Sustained writeback bandwidth of ``parent``'s filesystem: write ``mb`` MiB in 4 MiB
    blocks and fdatasync; bytes / (write + sync time). The file is removed afterwards."""
    block = os.urandom(4 * MiB)
    path = os.path.join(parent, f".cometmp-bw-probe-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(max(1, mb // 4)):
            os.write(fd, block)
        t1 = time.perf_counter()
        os.fdatasync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
        os.unlink(path)
    n = max(1, mb // 4) * 4 * MiB
    return {"bytes": n, "write_s": t1 - t0, "sync_s": t2 - t1,
            "bytes_per_s": n / (t2 - t0), "page_cache_bytes_per_s": n / max(t1 - t0, 1e-9)}


def _config(args, retention: bool):
    import cometmp

    cfg = cometmp.Config()
    cfg.storage.segment_bytes = args.segment_mb * MiB
    cfg.storage.prefault = args.prefault
    if retention:
        cfg.retention.max_shard_bytes = args.retain_segments * args.segment_mb * MiB
        cfg.retention.check_interval = args.retention_interval
    return cfg


# ------------------------------------------------------------------- latency mode


def _worker(args, root: str, index: int, per_worker_rate: float, timer_ns: int,
            ready_w: int, go_r: int, out_path: str) -> None:
    """Runs in a forked child: open its own client, wait for the barrier, append paced."""
    code = 0
    try:
        import resource

        import cometmp
        from cometmp import paths

        rng = random.Random(args.seed + index)
        pool = [os.urandom(rng.randint(MIN_ENTRY, MAX_ENTRY)) for _ in range(4096)]
        mean_size = sum(len(p) for p in pool) / len(pool)
        entries_per_s = per_worker_rate / mean_size
        total = int(entries_per_s * args.seconds)
        lat = array("i", bytes(4 * total))       # ns, timer cost subtracted
        at = array("i", bytes(4 * total))        # start, us since the barrier
        with cometmp.Client(root, config=_config(args, retention=True)) as client:
            # retention of this worker's own stream only, as a registry's placement gives a
            # prefork worker its own shards: a standalone client retains every stream of
            # the directory, and its writer handle on another worker's stream takes that
            # stream's lock (docs/PERFORMANCE.md "The prefault thread yields between steps")
            stream = f"sustained:w{index}:shard:0000"
            client._retention_streams = lambda: [stream]
            lg = client.log(f"sustained:w{index}", shards=1)
            first = lg.append(b"warm-up").entry + 1
            append = lg.append
            pc = time.perf_counter_ns
            interval = 1e9 / entries_per_s
            gc.disable()
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            # run-queue wait of this thread (/proc schedstat field 2, ns): read at each tick
            # and after each call over SLOW_NS, so a slow call's time spent runnable but
            # not running (another process had the core) is told from time it was blocked
            # or working in the kernel (what cometmp can remove)
            try:
                sfd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            except OSError:
                sfd = -1
            pread = os.pread
            slow_wait = {}
            start = pc()
            k = 0
            late_max = 0
            rd0 = 0
            while k < total:
                if sfd >= 0:
                    rd0 = int(pread(sfd, 128, 0).split()[1])
                now = pc()
                due = min(total, int((now - start) / interval) + 1)
                if due - k > entries_per_s * 0.010:   # >10 ms behind schedule
                    late_max = max(late_max, now - start - int(k * interval))
                while k < due:
                    p = pool[k & 4095]
                    t0 = pc()
                    append(p)
                    t1 = pc()
                    lat[k] = min(t1 - t0 - timer_ns, 2**31 - 1)
                    at[k] = (t0 - start) // 1000
                    if t1 - t0 > SLOW_NS and sfd >= 0:
                        rd1 = int(pread(sfd, 128, 0).split()[1])
                        slow_wait[k] = rd1 - rd0
                        rd0 = rd1
                    k += 1
                nxt = start + int(k * interval)
                slack = nxt - pc()
                if slack > TICK_NS:
                    time.sleep(slack / 1e9)
                elif slack > 0:
                    time.sleep(0)
            wall = pc() - start
            ru = resource.getrusage(resource.RUSAGE_SELF)
            # rotations that took a segment made ahead (native/spare.c); a baseline build
            # without the counter reports 0
            counters = client.stats()["streams"][paths.shard_stream(f"sustained:w{index}", 0)][
                "counters"]
        with open(out_path, "wb") as f:
            head = {"index": index, "calls": total, "first_entry": first, "wall_ns": wall,
                    "mean_size": mean_size, "behind_schedule_max_ns": late_max,
                    "minflt": ru.ru_minflt - ru0.ru_minflt, "majflt": ru.ru_majflt - ru0.ru_majflt,
                    "nvcsw": ru.ru_nvcsw - ru0.ru_nvcsw, "nivcsw": ru.ru_nivcsw - ru0.ru_nivcsw,
                    "cpu_s": (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime),
                    "spare_rotations": counters.get("spare_rotations", 0),
                    "slow_runqueue_wait_ns": {str(i): v for i, v in slow_wait.items()}}
            f.write((json.dumps(head) + "\n").encode())
            lat.tofile(f)
            at.tofile(f)
    except BaseException as e:  # report, never fall back into the conductor's code
        try:
            with open(out_path + ".err", "w") as f:
                f.write(repr(e))
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


def _read_worker(path: str) -> tuple[dict, array, array]:
    with open(path, "rb") as f:
        head = json.loads(f.readline())
        lat, at = array("i"), array("i")
        lat.fromfile(f, head["calls"])
        at.fromfile(f, head["calls"])
    return head, lat, at


class _DirWatch(threading.Thread):
    """Polls the stream directories: segment creations and deletions with their times
    (us since the barrier, +-POLL_S), and /proc/vmstat every 100 ms."""

    def __init__(self, dirs: list[str], pids: list[int] | None = None):
        super().__init__(daemon=True, name="bench-dirwatch")
        self.dirs, self.start_ns, self.pids = dirs, 0, pids or []
        #: kernel stacks of workers' appending threads seen blocked (state D) at a poll,
        #: by stack: what the kernel was waiting for (readable as root; else empty)
        self.stacks: dict[str, int] = {}
        self.events: list[dict] = []
        self.vm: list[tuple[int, dict]] = []
        self.stop = threading.Event()

    def _list(self, d):
        try:
            return {n for n in os.listdir(d) if n.endswith(".seg")}
        except OSError:
            return set()

    def _sample_stack(self, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state != "D":
                return
            with open(f"/proc/{pid}/stack") as f:
                frames = [ln.split()[1].split("+")[0] for ln in f if len(ln.split()) > 1]
        except (OSError, IndexError):
            return
        key = " < ".join(frames[:8])
        self.stacks[key] = self.stacks.get(key, 0) + 1

    def run(self):
        seen = {d: self._list(d) for d in self.dirs}
        last_vm = 0
        while not self.stop.wait(POLL_S):
            now = (time.perf_counter_ns() - self.start_ns) // 1000
            for i, d in enumerate(self.dirs):
                cur = self._list(d)
                for n in sorted(seen[d] - cur):
                    self.events.append({"t_us": now, "worker": i, "kind": "delete",
                                        "base": int(n[:-4])})
                seen[d] = cur
            for pid in self.pids:
                self._sample_stack(pid)
            if now - last_vm >= 100_000:
                self.vm.append((now, _vmstat()))
                last_vm = now


def _pct(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return 0.0
    return float(sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))])


def _nearest(events: list[dict], t_us: int, kind: str, worker: int | None = None) -> dict | None:
    best = None
    for e in events:
        if e["kind"] != kind or (worker is not None and e["worker"] != worker):
            continue
        if best is None or abs(e["t_us"] - t_us) < abs(best["t_us"] - t_us):
            best = e
    if best is None:
        return None
    return {**best, "dt_us": best["t_us"] - t_us}


def run_latency(args, root: str, timer_ns: int) -> dict:
    probe_dir = args.dir or tempfile.gettempdir()
    bw = measure_writeback(probe_dir, args.probe_mb)
    rate = args.rate if args.rate else bw["bytes_per_s"] * args.rate_fraction
    nworkers = args.workers or os.cpu_count() or 1
    import cometmp

    # the conductor creates the directory and the streams, then forks (gunicorn --preload)
    with cometmp.Client(root, config=_config(args, retention=False)) as c:
        for i in range(nworkers):
            c.log(f"sustained:w{i}", shards=1)
    from .. import paths

    dirs = [paths.stream_dir(root, paths.shard_stream(f"sustained:w{i}", 0)) for i in range(nworkers)]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    outs = [os.path.join(root, f".worker{i}.lat") for i in range(nworkers)]
    pids = []
    for i in range(nworkers):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            _worker(args, root, i, rate / nworkers, timer_ns, ready_w, go_r, outs[i])
        pids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    for _ in range(nworkers):
        if not os.read(ready_r, 1):
            break
    watch = _DirWatch(dirs, pids if args.sample_stacks else None)
    vm0 = _vmstat()
    watch.start_ns = time.perf_counter_ns()
    watch.start()
    os.write(go_w, b"g" * nworkers)
    failed = []
    for i, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(i)
    vm1 = _vmstat()
    watch.stop.set()
    watch.join()
    os.close(go_w)
    os.close(ready_r)
    if failed:
        errs = []
        for i in failed:
            try:
                with open(outs[i] + ".err") as f:
                    errs.append(f"worker {i}: {f.read()}")
            except OSError:
                errs.append(f"worker {i}: exited without a report")
        raise RuntimeError("; ".join(errs))
    heads, lats, ats = [], [], []
    for p in outs:
        h, lat, at = _read_worker(p)
        heads.append(h)
        lats.append(lat)
        ats.append(at)
    # rotations: the append whose entry number is a segment's base created that segment
    events = list(watch.events)
    for i, d in enumerate(dirs):
        bases = set(paths.list_segment_bases(d)) | {e["base"] for e in events
                                                    if e["worker"] == i}
        for b in sorted(bases):
            k = b - heads[i]["first_entry"]
            if 0 < k < heads[i]["calls"]:
                events.append({"t_us": ats[i][k], "worker": i, "kind": "rotate", "base": b,
                               "call_ns": lats[i][k]})
    allv = sorted(v for lat in lats for v in lat)
    n = len(allv)
    slow = []  # the 10 slowest calls over all workers
    for i, lat in enumerate(lats):
        top = sorted(range(len(lat)), key=lat.__getitem__, reverse=True)[:10]
        slow.extend({"worker": i, "call": k, "entry": heads[i]["first_entry"] + k,
                     "t_us": ats[i][k], "ns": lat[k]} for k in top)
    slow.sort(key=lambda s: -s["ns"])
    slow = slow[:10]
    for s in slow:
        s["runqueue_wait_ns"] = heads[s["worker"]]["slow_runqueue_wait_ns"].get(str(s["call"]))
    # each slow call minus its run-queue wait: the part that was not CPU contention
    own = sorted(max(0, lats[i][int(k)] - w) for i, h in enumerate(heads)
                 for k, w in h["slow_runqueue_wait_ns"].items())
    waited = sum(1 for i, h in enumerate(heads) for k, w in h["slow_runqueue_wait_ns"].items()
                 if w >= lats[i][int(k)] // 2)
    nslow = sum(len(h["slow_runqueue_wait_ns"]) for h in heads)
    for s in slow:
        s["nearest_rotation"] = _nearest(events, s["t_us"], "rotate", s["worker"])
        s["nearest_deletion"] = _nearest(events, s["t_us"], "delete", s["worker"])
        s["is_rotation"] = bool(s["nearest_rotation"] and s["nearest_rotation"]["base"] == s["entry"])
    rot = sorted(e["call_ns"] for e in events if e["kind"] == "rotate")
    wall = max(h["wall_ns"] for h in heads)
    return {
        "writeback": bw, "rate_bytes_per_s": rate, "workers": nworkers, "timer_ns": timer_ns,
        "seconds": args.seconds, "segment_bytes": args.segment_mb * MiB,
        "retain_segments": args.retain_segments, "prefault": args.prefault, "seed": args.seed,
        "calls": n, "achieved_bytes_per_s": sum(h["calls"] * h["mean_size"] for h in heads) / (wall / 1e9),
        "p50_ns": _pct(allv, 0.50), "p99_ns": _pct(allv, 0.99), "p999_ns": _pct(allv, 0.999),
        "max_ns": float(allv[-1]) if allv else 0.0,
        "over_50us": sum(1 for v in allv if v > 50_000),
        "over_1ms": sum(1 for v in allv if v > 1_000_000),
        "over_5ms": sum(1 for v in allv if v > 5_000_000),
        "slow_calls": nslow, "slow_calls_mostly_runqueue_wait": waited,
        "max_without_runqueue_wait_ns": float(own[-1]) if own else 0.0,
        "over_1ms_without_runqueue_wait": sum(1 for v in own if v > SLOW_NS),
        "over_5ms_without_runqueue_wait": sum(1 for v in own if v > 5_000_000),
        "rotations": len(rot), "rotation_call_p50_ns": _pct(rot, 0.5),
        "spare_rotations": sum(h.get("spare_rotations", 0) for h in heads),
        "rotation_call_max_ns": float(rot[-1]) if rot else 0.0,
        "deletions": sum(1 for e in events if e["kind"] == "delete"),
        "slowest": slow, "per_worker": heads,
        "blocked_stacks": dict(sorted(watch.stacks.items(), key=lambda kv: -kv[1])[:12]), "vmstat_delta": _vm_delta(vm0, vm1),
        "_series": (lats, ats, events),
    }


# -------------------------------------------------------------------- volume mode


def run_volume(args, root: str, volume: int, retention: bool) -> dict:
    import cometmp

    sub = os.path.join(root, "ret" if retention else "noret")
    step = parse_size(args.volume_step)
    curve = []
    vm0 = _vmstat()
    with cometmp.Client(sub, config=_config(args, retention=retention)) as client:
        lg = client.log("volume", shards=1)
        batch = [b"x" * 100] * 1000
        per_batch = 1000 * (100 + 20)   # payload + frame header (FORMAT.md §2.3)
        am = lg.append_many
        written, step_bytes = 0, 0
        pc = time.perf_counter_ns
        t_step = pc()
        worst = 0
        while written < volume:
            t0 = pc()
            am(batch)
            dt = pc() - t0
            worst = max(worst, dt)
            written += per_batch
            step_bytes += per_batch
            if step_bytes >= step:
                now = pc()
                curve.append({"mib": written // MiB, "entries_per_s": step_bytes / 120 / ((now - t_step) / 1e9),
                              "worst_batch_ns": worst})
                t_step, step_bytes, worst = now, 0, 0
    return {"retention": retention, "volume_bytes": volume, "curve": curve,
            "vmstat_delta": _vm_delta(vm0, _vmstat())}


# --------------------------------------------------------------------- output


def _us(ns: float) -> str:
    return f"{ns / 1000:.1f} us" if ns < 1e6 else f"{ns / 1e6:.2f} ms"


def print_latency(d: dict) -> None:
    bw = d["writeback"]
    print(f"  writeback bandwidth: {bw['bytes_per_s'] / MiB:.0f} MiB/s ({bw['bytes'] // MiB} MiB "
          f"write {bw['write_s']:.2f} s + fdatasync {bw['sync_s']:.2f} s)")
    print(f"  load: {d['workers']} workers, {d['rate_bytes_per_s'] / MiB:.1f} MiB/s target, "
          f"{d['achieved_bytes_per_s'] / MiB:.1f} MiB/s achieved, {d['seconds']} s, segments "
          f"{d['segment_bytes'] // MiB} MiB, keep {d['retain_segments']}, prefault "
          f"{d['prefault']}, seed {d['seed']}, timer {d['timer_ns']} ns subtracted")
    print(f"  {d['calls']:,} appends   p50 {_us(d['p50_ns'])}   p99 {_us(d['p99_ns'])}   "
          f"p99.9 {_us(d['p999_ns'])}   max {_us(d['max_ns'])}")
    print(f"  calls > 50 us: {d['over_50us']}   > 1 ms: {d['over_1ms']}   > 5 ms: {d['over_5ms']}")
    print(f"  of the {d['slow_calls']} calls > 1 ms, {d['slow_calls_mostly_runqueue_wait']} spent half "
          f"or more runnable waiting for a core; without that wait: max "
          f"{_us(d['max_without_runqueue_wait_ns'])}, > 1 ms: {d['over_1ms_without_runqueue_wait']}, "
          f"> 5 ms: {d['over_5ms_without_runqueue_wait']}")
    print(f"  rotations {d['rotations']}, {d.get('spare_rotations', 0)} of them took a spare made "
          f"ahead (the rotating call: p50 {_us(d['rotation_call_p50_ns'])}, "
          f"max {_us(d['rotation_call_max_ns'])}), retention deletions {d['deletions']}")
    print("  slowest calls:")
    for s in d["slowest"]:
        r, x = s["nearest_rotation"], s["nearest_deletion"]
        rt = "this call rotated" if s["is_rotation"] else (
            f"rotation {r['dt_us'] / 1000:+.1f} ms" if r else "no rotation")
        dt = f"deletion {x['dt_us'] / 1000:+.1f} ms" if x else "no deletion"
        rq = s.get("runqueue_wait_ns")
        rq = f"runnable {_us(rq)}" if rq is not None else "runnable ?"
        print(f"    {_us(s['ns']):>9}  worker {s['worker']} at {s['t_us'] / 1e6:7.3f} s  "
              f"entry {s['entry']:>9}  {rq}; {rt}; {dt}")
    vm = d["vmstat_delta"]
    print("  /proc/vmstat during the run: " + ", ".join(f"{k} {v:+d}" for k, v in vm.items() if v))
    if d.get("blocked_stacks"):
        print(f"  appending threads seen blocked in the kernel (polls every {POLL_S * 1000:.0f} ms):")
        for k, v in d["blocked_stacks"].items():
            print(f"    {v:5}  {k}")
    for h in d["per_worker"]:
        print(f"  worker {h['index']}: {h['calls']:,} calls, cpu {h['cpu_s']:.1f} s, minflt "
              f"{h['minflt']}, majflt {h['majflt']}, ctx switches {h['nvcsw']}+{h['nivcsw']} inv, "
              f"behind schedule max {h['behind_schedule_max_ns'] / 1e6:.1f} ms")


def print_volume(runs: list[dict]) -> None:
    for r in runs:
        print(f"  append_many 1,000 x 100 B, {'with' if r['retention'] else 'without'} retention "
              f"(M entries/s per step written; worst batch):")
        top = max((c["entries_per_s"] for c in r["curve"]), default=1.0)
        for c in r["curve"]:
            bar = "#" * int(40 * c["entries_per_s"] / top)
            print(f"    {c['mib']:>7} MiB  {c['entries_per_s'] / 1e6:6.2f}  {_us(c['worst_batch_ns']):>9}  {bar}")
        vm = r["vmstat_delta"]
        print("    vmstat: " + ", ".join(f"{k} {v:+d}" for k, v in vm.items() if v))


def plot(path: str, latency: dict | None, volume: list[dict] | None) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2 if latency and volume else 1, 1, figsize=(11, 7), squeeze=False)
    ax_i = 0
    if latency:
        ax = axes[ax_i][0]
        ax_i += 1
        lats, ats, events = latency["_series"]
        for i, (lat, at) in enumerate(zip(lats, ats)):
            ax.plot([t / 1e6 for t in at], [v / 1000 for v in lat], ",", label=f"worker {i}")
        for e in events:
            ax.axvline(e["t_us"] / 1e6, color="red" if e["kind"] == "delete" else "grey",
                       lw=0.3, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("s")
        ax.set_ylabel("append latency (us)")
        ax.set_title("every append; grey = rotation, red = retention deletion")
    if volume:
        ax = axes[ax_i][0]
        for r in volume:
            ax.plot([c["mib"] for c in r["curve"]], [c["entries_per_s"] / 1e6 for c in r["curve"]],
                    label="with retention" if r["retention"] else "without retention")
        ax.set_xlabel("MiB written")
        ax.set_ylabel("M entries/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--scenario sustained")
    g.add_argument("--seconds", type=float, default=60.0, help="latency run length (default 60)")
    g.add_argument("--rate", type=float, default=None,
                   help="aggregate bytes/s (default --rate-fraction of the measured bandwidth)")
    g.add_argument("--rate-fraction", type=float, default=0.5)
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    g.add_argument("--segment-mb", type=int, default=8, help="segment size in MiB (default 8)")
    g.add_argument("--retain-segments", type=int, default=4,
                   help="retention keeps this many segments' bytes per stream (default 4)")
    g.add_argument("--retention-interval", type=float, default=0.5)
    g.add_argument("--probe-mb", type=int, default=256, help="writeback probe size (MiB)")
    g.add_argument("--volume", default=None,
                   help="batch-throughput-over-volume mode instead, e.g. 10G")
    g.add_argument("--sample-stacks", action="store_true",
                   help="poll /proc/<worker>/stack and count the kernel stacks appenders block in")
    g.add_argument("--volume-step", default="256M", help="curve resolution (default 256M)")
    g.add_argument("--plot", default=None, help="PNG path (needs matplotlib)")


def run(args, root: str, timer_ns: int) -> dict:
    """The scenario; ``timer_ns``: the cost of an empty perf_counter_ns pair, subtracted
    from every sample (measured by bench.py, which imports this module)."""
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.volume:
        vol = parse_size(args.volume)
        runs = [run_volume(args, root, vol, retention=False),
                run_volume(args, root, vol, retention=True)]
        doc = {"mode": "volume", "runs": runs}
    else:
        doc = {"mode": "latency", **run_latency(args, root, timer_ns)}
    if args.plot:
        doc["plot"] = plot(args.plot, doc if doc["mode"] == "latency" else None,
                           doc.get("runs"))
    doc.pop("_series", None)
    doc["targets"] = []
    if doc["mode"] == "latency":
        doc["targets"] = [
            {"name": "sustained p99.9", "target": "<= 50 us", "measured": doc["p999_ns"] / 1000,
             "unit": "us", "result": "PASS" if doc["p999_ns"] <= 50_000 else "MISS"},
            {"name": "sustained max", "target": "<= 5 ms", "measured": doc["max_ns"] / 1e6,
             "unit": "ms", "result": "PASS" if doc["max_ns"] <= 5e6 else "MISS"},
        ]
    return doc


def print_doc(doc: dict) -> None:
    if doc["mode"] == "volume":
        print_volume(doc["runs"])
    else:
        print_latency(doc)
    if doc.get("plot"):
        print(f"  plot: {doc['plot']}")

