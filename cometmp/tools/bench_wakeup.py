"""``cometmp bench --scenario wakeup``: append -> a consumer in another process sees it,
beside the futex ping-pong floor measured in the same run.

Runs in the calling process, which forks the waiters, the wakers and the load; it
compiles a small C program (``cc``) into the bench directory for the floor.

Every sample has the same shape: a *waker* process sleeps a random 0.5-1.5 ms (so the
waiter is asleep each time), reads CLOCK_MONOTONIC (``t0``) and publishes; a *waiter*
in another process is asleep and reads CLOCK_MONOTONIC as soon as it has the news
(``t1``); latency = t1 - t0. After each sample the waiter tells the waker over a pipe
that it is about to wait again. Variants, interleaved within each round:

* ``floor``     C on both sides: the waker stores t0 in a shared file page, bumps a
                32-bit word and FUTEX_WAKEs it (only when the waiter counted itself, as
                cometmp's publish() does); the waiter returns from FUTEX_WAIT. This is the
                kernel's wake-up and nothing else: the most any consumer can achieve.
* ``consumer``  a Python writer calls ``log.append(payload)``, the payload (the sample's
                number) built before t0, t0 in a side file; the consumer blocks in
                ``Consumer.read(timeout=None)`` and takes t1 as the batch is in its
                hands (before it looks at the payload).
* ``raw``       the same writer; the waiter sleeps in ``cm_wait`` on the stream's state
                page through cffi (the call ``Consumer.read`` makes) and takes t1 when it
                returns. consumer - raw = the consumer's own work on the wake path; raw -
                floor = the append, Python and cffi on both sides.

Each row runs every variant: ``idle`` (nothing started by the bench) and ``loaded``
(``--load N`` processes spinning in a Python loop, one per core by default), so the
loaded row shows what a woken consumer meets when every core is busy.

Per sample the waiter also records the growth of its own ``/proc/self/schedstat``
run delay (time spent runnable, waiting for a core) and of ``ru_minflt`` (page faults)
over the wait, so the report can split the tail into "waited for a core" (scheduling,
not cometmp's) and the rest.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from array import array

MIN_GAP_NS = 500_000
MAX_GAP_NS = 1_500_000
VARIANTS = ("floor", "consumer", "raw")
#: issue 10 item 3, on an idle machine: p50 <= 1.2x and p99 <= 2x the floor of the same run
TARGET_P50_VS_FLOOR = 1.2
TARGET_P99_VS_FLOOR = 2.0
#: per sample, the waiter writes (latency_ns, run_delay_ns, minflt) as three int64
_SAMPLE = struct.Struct("<qqq")

FLOOR_C = r"""
/* futex ping-pong floor for cometmp bench --scenario wakeup (see bench_wakeup.py) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct page { uint32_t seq; uint32_t waiters; int64_t t0; };

static int64_t now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}
static int64_t run_delay(int fd) {
    char b[128]; ssize_t k = pread(fd, b, sizeof b - 1, 0);
    if (k <= 0) return 0;
    b[k] = 0; long long a = 0, d = 0; sscanf(b, "%lld %lld", &a, &d); return d;
}
static int64_t minflt(void) { struct rusage r; getrusage(RUSAGE_SELF, &r); return r.ru_minflt; }
struct sattr { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio;
               uint64_t runtime, deadline, period; uint32_t umin, umax; };
static void set_slice(long ns) {      /* EEVDF custom slice (sched_runtime, Linux 6.12) */
    struct sattr a = { sizeof a, 0, 0, 0, 0, (uint64_t)ns, 0, 0, 0, 0 };
    if (ns > 0 && syscall(SYS_sched_setattr, 0, &a, 0) != 0) perror("sched_setattr");
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: page n seed min_ns max_ns out slice_ns\n"); return 2; }
    int n = atoi(argv[2]); unsigned seed = (unsigned)atol(argv[3]);
    long lo = atol(argv[4]), hi = atol(argv[5]);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 4096) != 0) { perror(argv[1]); return 1; }
    struct page *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    int ack[2]; if (pipe(ack) != 0) { perror("pipe"); return 1; }
    pid_t pid = fork();
    if (pid == 0) {                                   /* waiter */
        set_slice(atol(argv[7]));
        int sfd = open("/proc/self/schedstat", O_RDONLY);
        int64_t *out = malloc(sizeof(int64_t) * 3 * (size_t)n);
        for (int i = 0; i < n; i++) {
            uint32_t seen = __atomic_load_n(&p->seq, __ATOMIC_SEQ_CST);
            int64_t rd0 = run_delay(sfd), mf0 = minflt();
            char c = 1; if (write(ack[1], &c, 1) != 1) _exit(1);
            while (__atomic_load_n(&p->seq, __ATOMIC_SEQ_CST) == seen) {
                __atomic_add_fetch(&p->waiters, 1, __ATOMIC_SEQ_CST);
                if (__atomic_load_n(&p->seq, __ATOMIC_SEQ_CST) == seen)
                    syscall(SYS_futex, &p->seq, FUTEX_WAIT, seen, NULL, NULL, 0);
                __atomic_sub_fetch(&p->waiters, 1, __ATOMIC_SEQ_CST);
            }
            int64_t t1 = now_ns();
            out[3 * i] = t1 - __atomic_load_n(&p->t0, __ATOMIC_SEQ_CST);
            out[3 * i + 1] = run_delay(sfd) - rd0;
            out[3 * i + 2] = minflt() - mf0;
        }
        FILE *f = fopen(argv[6], "wb");
        if (!f || fwrite(out, sizeof(int64_t) * 3, (size_t)n, f) != (size_t)n) _exit(1);
        fclose(f); _exit(0);
    }
    srand(seed);
    for (int i = 0; i < n; i++) {                     /* waker */
        char c; if (read(ack[0], &c, 1) != 1) return 1;
        long gap = lo + (long)((double)rand() / RAND_MAX * (double)(hi - lo));
        struct timespec g = { gap / 1000000000l, gap % 1000000000l }; nanosleep(&g, NULL);
        __atomic_store_n(&p->t0, now_ns(), __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&p->seq, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&p->waiters, __ATOMIC_SEQ_CST))
            syscall(SYS_futex, &p->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
    int st = 0; waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
"""


class FloorUnavailable(RuntimeError):
    """No C compiler: the floor cannot be measured (the report says so)."""


def build_floor(directory: str) -> str:
    """Compile FLOOR_C into ``directory``; the path of the program."""
    src = os.path.join(directory, "wakeup_floor.c")
    exe = os.path.join(directory, "wakeup_floor")
    with open(src, "w") as f:
        f.write(FLOOR_C)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FloorUnavailable("no C compiler (cc) on PATH: the futex floor is not measured")
    r = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True)
    if r.returncode != 0:
        raise FloorUnavailable(f"{cc} failed to build the floor: {r.stderr.strip()[:300]}")
    return exe


# --------------------------------------------------------------------------- per-sample probes

class _Probe:
    """The waiter's own run delay (schedstat field 2) and minor faults, read before and
    after each wait; kept out of the timed edge."""

    def __init__(self):
        self.fd = os.open("/proc/self/schedstat", os.O_RDONLY)

    def run_delay(self) -> int:
        try:
            return int(os.pread(self.fd, 128, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    @staticmethod
    def minflt() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}


def set_slice(ns: int) -> None:
    """Ask EEVDF for a ``ns`` time slice for this process (``sched_attr.sched_runtime`` of
    SCHED_OTHER, Linux 6.12): a shorter request gives an earlier virtual deadline, so a
    woken task preempts a CPU hog instead of queueing behind its slice. 0: leave as is."""
    if ns <= 0:
        return
    import ctypes
    import platform

    nr = _SCHED_SETATTR.get(platform.machine())
    if nr is None:
        raise OSError(f"sched_setattr: no syscall number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("<IIQiIQQQII", 56, 0, 0, 0, 0, ns, 0, 0, 0, 0))
    if libc.syscall(nr, 0, attr, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"sched_setattr(sched_runtime={ns}): {os.strerror(e)}")


def _read_samples(path: str, n: int) -> list[tuple[int, int, int]]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != n * _SAMPLE.size:
        raise RuntimeError(f"{path}: {len(data)} bytes of samples, expected {n * _SAMPLE.size}")
    return list(_SAMPLE.iter_unpack(data))


def _run_floor(exe: str, root: str, n: int, seed: int, slice_ns: int = 0) -> list:
    out = os.path.join(root, "floor.samples")
    page = os.path.join(root, "floor.page")
    r = subprocess.run([exe, page, str(n), str(seed), str(MIN_GAP_NS), str(MAX_GAP_NS), out,
                        str(slice_ns)],
                       capture_output=True, text=True, timeout=60 + n * 0.05)
    if r.returncode != 0:
        raise RuntimeError(f"futex floor program failed ({r.returncode}): {r.stderr.strip()}")
    return _read_samples(out, n)


# --------------------------------------------------------------------------- cometmp variants

def _writer(root: str, stream: str, n: int, seed: int, ack_r: int, stamp_path: str) -> None:
    """Forked: append one entry per sample (its number in the payload, built before t0);
    t0 goes into the side file at the sample's slot."""
    import cometmp

    rng = random.Random(seed)
    side = _map_stamps(stamp_path)
    pad = b"w" * 92
    clock, mono, pack = time.clock_gettime_ns, time.CLOCK_MONOTONIC, struct.pack
    with cometmp.Client(root) as c:
        log = c.log(stream, shards=1)
        for i in range(n):
            if len(os.read(ack_r, 1)) != 1:
                raise RuntimeError("waiter went away")
            payload = pack("<q", i) + pad   # the caller's work, before t0 as in the floor
            gap = rng.randint(MIN_GAP_NS, MAX_GAP_NS)
            time.sleep(gap / 1e9)
            t0 = clock(mono)
            struct.pack_into("<q", side, 8 * i, t0)
            log.append(payload)
    side.close()


def _map_stamps(path: str):
    """The side file of t0 stamps, one int64 per sample (entry i: offset 8 * i)."""
    import mmap

    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _consumer_waiter(root: str, stream: str, n: int, ack_w: int, out: str,
                     slice_ns: int, stamp_path: str) -> None:
    import cometmp

    set_slice(slice_ns)
    probe = _Probe()
    side = _map_stamps(stamp_path)
    clock, mono, unpack = time.clock_gettime_ns, time.CLOCK_MONOTONIC, struct.unpack_from
    rows = array("q")
    with cometmp.Client(root) as c:    # a reader only: no appender, no background threads
        con = cometmp.Consumer(c, group="wake")
        pattern = stream + ":shard:*"
        con.read(pattern, timeout=0)   # claim the group, map the state page
        got = 0
        while got < n:
            rd0, mf0 = probe.run_delay(), probe.minflt()
            os.write(ack_w, b"1")
            b = con.read(pattern, timeout=None)   # default max_messages, as users call it
            t1 = clock(mono)
            rd1, mf1 = probe.run_delay(), probe.minflt()
            for p in b.payloads():
                t0 = unpack("<q", side, 8 * unpack("<q", p)[0])[0]
                rows.extend((t1 - t0, rd1 - rd0, mf1 - mf0))
                got += 1
            con.ack(b)
        con.close()
    side.close()
    with open(out, "wb") as f:
        f.write(rows[: 3 * n].tobytes())


def _raw_waiter(root: str, stream: str, n: int, ack_w: int, out: str, slice_ns: int,
                stamp_path: str) -> None:
    import cometmp
    from cometmp import paths
    from cometmp._ffi import lib
    from cometmp.cursor import StatePage
    from cometmp.format import CM_STATE_OFF_COMMITTED, CM_STATE_OFF_NOTIFY_SEQ

    set_slice(slice_ns)
    probe = _Probe()
    side = _map_stamps(stamp_path)
    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    u32, u64 = struct.Struct("=I"), struct.Struct("=Q")
    rows = array("q")
    with cometmp.Client(root):        # a reader only: no appender, no background threads
        name = stream + ":shard:0000"
        sp = StatePage(paths.stream_dir(root, name), True)
        ptr, wait = sp.ptr, lib.cm_wait
        for i in range(n):
            rd0, mf0 = probe.run_delay(), probe.minflt()
            seen = u32.unpack_from(sp.mm, CM_STATE_OFF_NOTIFY_SEQ)[0]
            os.write(ack_w, b"1")
            while u64.unpack_from(sp.mm, CM_STATE_OFF_COMMITTED)[0] <= i:
                if wait(ptr, seen, -1) < 0:
                    raise RuntimeError("cm_wait failed")
                seen = u32.unpack_from(sp.mm, CM_STATE_OFF_NOTIFY_SEQ)[0]
            t1 = clock(mono)
            rd1, mf1 = probe.run_delay(), probe.minflt()
            rows.extend((t1 - struct.unpack_from("<q", side, 8 * i)[0], rd1 - rd0, mf1 - mf0))
        del ptr
        sp.close()
    side.close()
    with open(out, "wb") as f:
        f.write(rows.tobytes())


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException as e:   # noqa: BLE001 - report and leave the child
            print(f"cometmp bench wakeup: {fn.__name__} failed: {e!r}", file=sys.stderr)
        finally:
            os._exit(code)
    return pid


def _run_cometmp(variant: str, root: str, n: int, seed: int, tag: str, slice_ns: int = 0) -> list:
    stream = f"wake-{tag}"
    out = os.path.join(root, f"{tag}.samples")
    stamp = os.path.join(root, f"{tag}.stamp")
    with open(stamp, "wb") as f:
        f.write(b"\0" * (8 * n))
    import cometmp

    with cometmp.Client(root) as c:      # the stream exists before either side opens it
        c.log(stream, shards=1)
    ack_r, ack_w = os.pipe()
    try:
        if variant == "consumer":
            wpid = _fork(_consumer_waiter, root, stream, n, ack_w, out, slice_ns, stamp)
        else:
            wpid = _fork(_raw_waiter, root, stream, n, ack_w, out, slice_ns, stamp)
        apid = _fork(_writer, root, stream, n, seed, ack_r, stamp)
    finally:
        os.close(ack_r)
        os.close(ack_w)
    codes = [os.waitpid(p, 0)[1] for p in (wpid, apid)]
    if any(codes):
        raise RuntimeError(f"wakeup {variant} children exited with {codes}")
    return _read_samples(out, n)


# --------------------------------------------------------------------------- load

def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


class Load:
    """``n`` processes spinning on a core each, started and stopped by the bench."""

    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(n)]
        deadline = time.monotonic() + 30
        for p in self.procs:             # running, not just forked
            while _cpu_ticks(p.pid) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs = []


# --------------------------------------------------------------------------- statistics

def _pct(sorted_values, q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))])


def summarize(samples: list[tuple[int, int, int]]) -> dict:
    """Latency percentiles (µs) and how much of them was waiting for a core."""
    lat = sorted(s[0] for s in samples)
    delay = sorted(s[1] for s in samples)
    rest = sorted(s[0] - s[1] for s in samples)
    n = len(samples)
    p99 = _pct(lat, 0.99)
    tail = [s for s in samples if s[0] >= p99]
    faulted = sorted(s[0] for s in samples if s[2] > 0)
    us = 1e3
    return {
        "samples": n,
        "p50_us": _pct(lat, 0.5) / us, "p99_us": p99 / us, "p999_us": _pct(lat, 0.999) / us,
        "max_us": lat[-1] / us if lat else 0.0,
        "run_delay_p50_us": _pct(delay, 0.5) / us, "run_delay_p99_us": _pct(delay, 0.99) / us,
        # latency minus the time the waiter was runnable but had no core
        "off_cpu_excluded_p50_us": _pct(rest, 0.5) / us,
        "off_cpu_excluded_p99_us": _pct(rest, 0.99) / us,
        # of the samples at or above p99: the share of their latency spent waiting for a core
        "tail_run_delay_share": (sum(min(s[1], s[0]) for s in tail) / sum(s[0] for s in tail))
        if tail and sum(s[0] for s in tail) > 0 else 0.0,
        "samples_with_minflt": len(faulted),
        "minflt_p50_us": _pct(faulted, 0.5) / us,
    }


def run(args, root: str, out=None) -> dict:
    """The whole scenario: rounds x rows x variants, interleaved. The seed goes to stderr
    (stdout may be the JSON document)."""
    out = out or sys.stderr
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"cometmp bench wakeup: seed {seed}", file=out, flush=True)
    load_n = (os.cpu_count() or 1) if args.load is None else args.load
    rows = ["idle"] + (["loaded"] if load_n > 0 else [])
    slice_ns = int(getattr(args, "slice_us", 0) or 0) * 1000
    try:
        exe = build_floor(root)
        floor_note = None
    except FloorUnavailable as e:
        exe, floor_note = None, str(e)
    variants = [v for v in VARIANTS if v != "floor" or exe]
    samples = {r: {v: [] for v in variants} for r in rows}
    per_round = {r: {v: [] for v in variants} for r in rows}
    rng = random.Random(seed)
    for rnd in range(args.rounds):
        for row in rows:
            load = Load(load_n) if row == "loaded" else None
            try:
                order = list(variants)
                rng.shuffle(order)       # no variant always runs first after the load starts
                for v in order:
                    s = rng.randrange(1 << 30)
                    tag = f"r{rnd}-{row}-{v}"
                    got = (_run_floor(exe, root, args.samples, s, slice_ns) if v == "floor"
                           else _run_cometmp(v, root, args.samples, s, tag, slice_ns))
                    samples[row][v].extend(got)
                    per_round[row][v].append(summarize(got))
            finally:
                if load is not None:
                    load.stop()
    results = {r: {v: summarize(samples[r][v]) for v in variants} for r in rows}
    ratios: dict = {}
    targets = []
    if exe:
        for r in rows:
            f = results[r]["floor"]
            for v in ("consumer", "raw"):
                x = results[r][v]
                for q in ("p50", "p99", "p999"):
                    ratios[f"{r}_{v}_{q}_vs_floor"] = x[f"{q}_us"] / f[f"{q}_us"]
                # the same ratio with each side's run delay (waiting for a core) taken out
                ratios[f"{r}_{v}_p99_off_cpu_excluded_vs_floor"] = (
                    x["off_cpu_excluded_p99_us"] / f["off_cpu_excluded_p99_us"])
        for q, want in (("p50", TARGET_P50_VS_FLOOR), ("p99", TARGET_P99_VS_FLOOR)):
            m = ratios[f"idle_consumer_{q}_vs_floor"]
            targets.append({"name": f"idle consumer {q} vs floor", "target": f"<= {want}x",
                            "measured": m, "unit": "x",
                            "result": "PASS" if m <= want else "MISS"})
    return {"settings": {"samples_per_round": args.samples, "rounds": args.rounds,
                         "load_processes": load_n, "seed": seed,
                         "waiter_slice_ns": slice_ns, "rows": rows,
                         "variants": variants, "gap_ns": [MIN_GAP_NS, MAX_GAP_NS],
                         "floor_note": floor_note},
            "results": results, "per_round": per_round, "ratios": ratios, "targets": targets}


def print_report(doc: dict) -> None:
    st = doc["settings"]
    print(f"cometmp bench --scenario wakeup ({st['samples_per_round']} samples x "
          f"{st['rounds']} round(s) per variant and row, loaded row: {st['load_processes']} "
          f"busy process(es), seed {st['seed']})")
    if st["floor_note"]:
        print(f"  note: {st['floor_note']}")
    print(f"  {'row':7} {'variant':9} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9} "
          f"{'rundly p99':>10} {'p99-rundly':>10} {'tail rundly':>11} {'minflt':>6}  (us)")
    for r, per in doc["results"].items():
        for v, x in per.items():
            print(f"  {r:7} {v:9} {x['p50_us']:8.1f} {x['p99_us']:8.1f} {x['p999_us']:8.1f} "
                  f"{x['max_us']:9.1f} {x['run_delay_p99_us']:10.1f} "
                  f"{x['off_cpu_excluded_p99_us']:10.1f} {100 * x['tail_run_delay_share']:10.0f}% "
                  f"{x['samples_with_minflt']:6}")
    for k, v in doc["ratios"].items():
        print(f"  {k:44} {v:6.2f}x")
