"""Where the time goes between an append and the consumer in another process holding it:
CLOCK_MONOTONIC stamps at every step of the wake-up path, per sample, median per step.

The core is rebuilt once with -DCM_WAKE_STAMPS (native/stamps.h; cached under $TMPDIR, keyed
by a hash of native/) and loaded as ``cometmp._cffi`` before ``cometmp`` is imported, as the
failpoint build is (tests/failpoints.py); the installed package is not touched. Steps:

  writer  t0 (Python, before log.append) -> append_in (C entry, cm_append_ex) -> publish_in
          (publish(): every byte written) -> published (notify_seq bumped) -> wake_sent
          (FUTEX_WAKE returned) -> append_ret (Python, append returned)
  waiter  futex_ret (C, FUTEX_WAIT returned in cm_wait) -> cffi_ret (Python, the cffi call
          returned) -> [consumer: wait_ret (_wait returned) -> synced (the last _sync done)
          -> fill_in -> fill_out (the Batch built) -> read_ret (read() handed it over)]
          [raw: seen (committed read past the entry, what the wakeup scenario stamps)]

plus the C futex ping-pong floor of ``cometmp bench --scenario wakeup`` in the same run.
Each step's figure is the median over samples of (stamp - previous stamp), so one preempted
sample does not move it; rounds interleave the variants (and ``--tree`` checkouts, for a
before/after in one run: each tree is run with PYTHONPATH=<tree>, the same stamped core).

    .venv/bin/python benchmarks/wake_breakdown.py                       # 300 samples x 3 rounds
    .venv/bin/python benchmarks/wake_breakdown.py --tree /tmp/before --tree . --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent.parent
NATIVE = HERE / "native"
MIN_GAP_NS, MAX_GAP_NS = 500_000, 1_500_000
W_STEPS = ("t0", "append_in", "publish_in", "published", "wake_sent", "append_ret")
C_STEPS = ("futex_ret", "cffi_ret", "wait_ret", "touched", "listed", "stale_checked", "sync_in",
           "synced", "fill_in", "read_into_in", "read_into_out", "fill_out", "read_ret",
           "run_delay")
R_STEPS = ("futex_ret", "cffi_ret", "seen", "run_delay")
#: raw: cm_wait untimed, as the wakeup scenario; raw_timed: with Consumer's 0.5 s slice;
#: bare: Consumer.read unwrapped (total only: with the woken read, futex_ret -> read returned
#: is one C call and its return); consumer: Consumer.read with a stamp per step of the full
#: iteration, the woken read turned off (Consumer._woken_plan -> None) so that every step runs
VARIANTS = ("raw", "raw_timed", "bare", "consumer")
ST_APPEND_IN, ST_PUBLISH_IN, ST_PUBLISHED, ST_WOKE_SENT, ST_FUTEX_RET = range(5)


def build_stamped_core() -> str:
    spec = importlib.util.spec_from_file_location("_cometmp_build_ffi", NATIVE / "build_ffi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_variant("stamps")


# ------------------------------------------------------------------ child (one tree, one variant)

def _bootstrap(so_path: str):
    spec = importlib.util.spec_from_file_location("cometmp._cffi", so_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["cometmp._cffi"] = mod
    return mod.lib


def _writer(root, stream, n, seed, ack_r, out, lib):
    import cometmp

    rng = random.Random(seed)
    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    st = lib.cm_wake_stamps
    rows = []
    with cometmp.Client(root) as c:
        log = c.log(stream, shards=1)
        pad = b"w" * 92
        for i in range(n):
            if len(os.read(ack_r, 1)) != 1:
                raise RuntimeError("waiter went away")
            payload = struct.pack("<q", i) + pad     # built before t0: the caller's work
            time.sleep(rng.randint(MIN_GAP_NS, MAX_GAP_NS) / 1e9)
            t0 = clock(mono)
            log.append(payload)
            t9 = clock(mono)
            rows.append((t0, st[ST_APPEND_IN], st[ST_PUBLISH_IN], st[ST_PUBLISHED],
                         st[ST_WOKE_SENT], t9))
    with open(out, "w") as f:
        json.dump(rows, f)


def _consumer_waiter(root, stream, n, ack_w, out, lib):
    import cometmp
    from cometmp import consumer as cm
    from cometmp.cursor import Cursor

    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    mark = {}
    real_lib = cm.lib

    class _Lib:                           # the consumer's `lib`, stamping cm_wait_many's return
        def __getattr__(self, k):
            return getattr(real_lib, k)

        @staticmethod
        def cm_wait_many(*a):
            rd = _run_delay(sfd)
            r = real_lib.cm_wait_many(*a)
            mark["cffi_ret"] = clock(mono)
            mark["rd_wait"] = _run_delay(sfd) - rd   # runnable without a core, over the wait
            return r

    def wrap(cls, name, before=None, after=None):
        """Stamp entry/exit of a method, the first call after the wake-up only."""
        inner = getattr(cls, name)

        def first(step):      # after the wake-up, not yet stamped, no later step stamped
            later = C_STEPS[C_STEPS.index(step) + 1:]
            return "wait_ret" in mark and step not in mark and not any(x in mark for x in later)

        def w(self, *a, **k):
            if before and first(before):
                mark[before] = clock(mono)
            r = inner(self, *a, **k)
            if after and (after == "wait_ret" or first(after)):
                mark[after] = clock(mono)
            return r
        setattr(cls, name, w)

    sfd = os.open("/proc/self/schedstat", os.O_RDONLY)
    if hasattr(cm.Consumer, "_woken_plan"):   # the steps of the full iteration, each stamped
        cm.Consumer._woken_plan = lambda self, g, zc: None
    cm.lib = _Lib()
    wrap(cm.Consumer, "_wait", after="wait_ret")
    wrap(cm.Consumer, "_touch", after="touched")
    wrap(cm.Consumer, "_cursors_for", after="listed")
    wrap(cm.Consumer, "_check_stale", after="stale_checked")
    wrap(cm.Consumer, "_sync", before="sync_in", after="synced")
    wrap(cm.Consumer, "_fill", before="fill_in", after="fill_out")
    wrap(Cursor, "read_into", before="read_into_in", after="read_into_out")
    st = lib.cm_wake_stamps
    rows = []
    with cometmp.Client(root) as c:
        con = cometmp.Consumer(c, group="wake")
        pattern = stream + ":shard:*"
        con.read(pattern, timeout=0)
        while len(rows) < n:
            mark.clear()
            os.write(ack_w, b"1")
            b = con.read(pattern, timeout=None)
            t9 = clock(mono)
            i = struct.unpack_from("<q", b.payloads()[0])[0] if len(b) else -1
            rows.append((i, st[ST_FUTEX_RET]) + tuple(mark.get(k, 0) for k in C_STEPS[1:-2])
                        + (t9, mark.get("rd_wait", 0), len(b)))
            con.ack(b)
        con.close()
    with open(out, "w") as f:
        json.dump(rows, f)


def _run_delay(fd) -> int:
    """This process's time runnable but not running (schedstat field 2), ns."""
    return int(os.pread(fd, 128, 0).split()[1])


def _bare_waiter(root, stream, n, ack_w, out, lib):
    """Consumer.read without any wrapper: futex_ret (C) and read returned only."""
    import cometmp

    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    st = lib.cm_wake_stamps
    rows = []
    with cometmp.Client(root) as c:
        con = cometmp.Consumer(c, group="wake")
        pattern = stream + ":shard:*"
        con.read(pattern, timeout=0)
        sfd = os.open("/proc/self/schedstat", os.O_RDONLY)
        while len(rows) < n:
            rd0 = _run_delay(sfd)
            os.write(ack_w, b"1")
            b = con.read(pattern, timeout=None)
            t9 = clock(mono)
            rd = _run_delay(sfd) - rd0
            i = struct.unpack_from("<q", b.payloads()[0])[0] if len(b) else -1
            rows.append((i, st[ST_FUTEX_RET], st[ST_FUTEX_RET], t9, rd))
            con.ack(b)
        con.close()
    with open(out, "w") as f:
        json.dump(rows, f)


def _raw_timed_waiter(root, stream, n, ack_w, out, lib):
    _raw_waiter(root, stream, n, ack_w, out, lib, timeout_ns=500_000_000)


def _raw_waiter(root, stream, n, ack_w, out, lib, timeout_ns=-1):
    import cometmp
    from cometmp import paths
    from cometmp.cursor import StatePage
    from cometmp.format import CM_STATE_OFF_COMMITTED, CM_STATE_OFF_NOTIFY_SEQ

    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    u32, u64 = struct.Struct("=I"), struct.Struct("=Q")
    st = lib.cm_wake_stamps
    rows = []
    with cometmp.Client(root):
        sp = StatePage(paths.stream_dir(root, stream + ":shard:0000"), True)
        ptr, wait = sp.ptr, lib.cm_wait
        sfd = os.open("/proc/self/schedstat", os.O_RDONLY)
        for i in range(n):
            seen = u32.unpack_from(sp.mm, CM_STATE_OFF_NOTIFY_SEQ)[0]
            os.write(ack_w, b"1")
            tc = rd = 0
            while u64.unpack_from(sp.mm, CM_STATE_OFF_COMMITTED)[0] <= i:
                rd0 = _run_delay(sfd)
                if wait(ptr, seen, timeout_ns) < 0:
                    raise RuntimeError("cm_wait failed")
                tc = clock(mono)
                rd += _run_delay(sfd) - rd0      # runnable without a core, over the wait
                seen = u32.unpack_from(sp.mm, CM_STATE_OFF_NOTIFY_SEQ)[0]
            t9 = clock(mono)
            rows.append((i, st[ST_FUTEX_RET], tc, t9, rd))
        del ptr
        sp.close()
    with open(out, "w") as f:
        json.dump(rows, f)


def _fork(fn, *a):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*a)
            code = 0
        except BaseException as e:  # noqa: BLE001
            print(f"wake_breakdown: {fn.__name__}: {e!r}", file=sys.stderr)
        finally:
            os._exit(code)
    return pid


def child(variant: str, so_path: str, n: int, seed: int) -> dict:
    lib = _bootstrap(so_path)
    import cometmp

    root = tempfile.mkdtemp(prefix="cometmp-wake-bd-")
    try:
        with cometmp.Client(root) as c:
            c.log("wb", shards=1)
        wout, rout = os.path.join(root, "w.json"), os.path.join(root, "r.json")
        ack_r, ack_w = os.pipe()
        waiter = {"consumer": _consumer_waiter, "bare": _bare_waiter, "raw": _raw_waiter,
                  "raw_timed": _raw_timed_waiter}[variant]
        pids = [_fork(waiter, root, "wb", n, ack_w, rout, lib),
                _fork(_writer, root, "wb", n, seed, ack_r, wout, lib)]
        os.close(ack_r)
        os.close(ack_w)
        codes = [os.waitpid(p, 0)[1] for p in pids]
        if any(codes):
            raise RuntimeError(f"children exited {codes}")
        with open(wout) as f:
            w = json.load(f)
        with open(rout) as f:
            r = json.load(f)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"writer": w, "waiter": r}


# ------------------------------------------------------------------ analysis

def steps(variant: str, doc: dict) -> dict[str, list[int]]:
    """Per sample, the time of each step since the previous one (ns); samples whose waiter
    did not sleep for that entry (no futex return after its publish) are left out."""
    out: dict[str, list[int]] = {}
    for row in doc["waiter"]:
        i = row[0]
        if i < 0 or i >= len(doc["writer"]):
            continue
        w = dict(zip(W_STEPS, doc["writer"][i]))
        r = dict(zip(C_STEPS if variant == "consumer" else R_STEPS, row[1:]))
        if variant == "consumer":        # a step a tree does not take: zero time
            for a, b in zip(C_STEPS[:-1], C_STEPS[1:-1]):
                if not r[b]:
                    r[b] = r[a]
        if not (r["futex_ret"] >= w["published"] and r["cffi_ret"] >= r["futex_ret"]):
            continue
        if variant == "consumer" and (row[-1] != 1 or any(
                r[a] > r[b] for a, b in zip(C_STEPS[1:-1], C_STEPS[2:-1]))):
            continue
        chain = [("py append -> C entry", w["append_in"] - w["t0"]),
                 ("C append -> publish", w["publish_in"] - w["append_in"]),
                 ("publish stores", w["published"] - w["publish_in"]),
                 ("FUTEX_WAKE syscall (writer)", w["wake_sent"] - w["published"]),
                 ("C return -> py (writer)", w["append_ret"] - w["wake_sent"]),
                 ("published -> futex_ret (kernel wake)", r["futex_ret"] - w["published"]),
                 ("futex_ret -> py (cffi return)", r["cffi_ret"] - r["futex_ret"])]
        if variant == "consumer":
            chain += [("cffi -> _wait returned (check rc)", r["wait_ret"] - r["cffi_ret"]),
                      ("-> _check_closed, _touch", r["touched"] - r["wait_ret"]),
                      ("-> _cursors_for (match, cursor lookup)", r["listed"] - r["touched"]),
                      ("-> _check_stale", r["stale_checked"] - r["listed"]),
                      ("-> notify_seq list, _sync entered", r["sync_in"] - r["stale_checked"]),
                      ("_sync (offsets, resets, retained_from)", r["synced"] - r["sync_in"]),
                      ("-> _fill entered", r["fill_in"] - r["synced"]),
                      ("_fill: Batch(), committed, add_stream", r["read_into_in"] - r["fill_in"]),
                      ("read_into (Batch.fill in C + Python)", r["read_into_out"] - r["read_into_in"]),
                      ("_fill after read_into", r["fill_out"] - r["read_into_out"]),
                      ("-> read() returned (_touch, return)", r["read_ret"] - r["fill_out"]),
                      ("TOTAL t0 -> read returned", r["read_ret"] - w["t0"]),
                      ("  of which futex_ret -> read returned", r["read_ret"] - r["futex_ret"])]
        if variant == "bare":
            chain = chain[:-1] + [("futex_ret -> read returned", r["seen"] - r["futex_ret"]),
                                  ("TOTAL t0 -> t1", r["seen"] - w["t0"])]
        elif variant != "consumer":
            chain += [("-> committed seen (t1)", r["seen"] - r["cffi_ret"]),
                      ("TOTAL t0 -> t1", r["seen"] - w["t0"])]
        # the waiter's run delay (runnable, no core): raw and consumer across the wait call
        # (the wake-up waiting for a core, plus at most the few us after it returns); bare
        # over the whole sample (it can include a preemption before the waiter slept)
        label = "over the sample" if variant == "bare" else "across the wait"
        chain += [(f"  waiter run delay {label}", r["run_delay"]),
                  ("  kernel wake minus that run delay",
                   max(0, r["futex_ret"] - w["published"] - r["run_delay"]))]
        chain += [("  of which t0 -> published", w["published"] - w["t0"])]
        for k, v in chain:
            out.setdefault(k, []).append(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", action="append", default=None,
                    help="a checkout to run (PYTHONPATH); repeat for a side-by-side")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tail", action="store_true",
                    help="also the steps of the samples at or above each variant's p99")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "SO", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        json.dump(child(a.child[0], a.child[1], a.samples, int(a.child[2])), sys.stdout)
        return 0
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print(f"wake_breakdown: seed {seed}, load {os.getloadavg()}", file=sys.stderr, flush=True)
    so = build_stamped_core()
    trees = [str(pathlib.Path(t).resolve()) for t in (a.tree or [str(HERE)])]
    sys.path.insert(0, str(HERE))
    from cometmp.tools import bench_wakeup

    fdir = tempfile.mkdtemp(prefix="cometmp-wake-floor-")
    exe = bench_wakeup.build_floor(fdir)
    rng = random.Random(seed)
    acc: dict = {}
    floor: list[int] = []
    try:
        for _ in range(a.rounds):
            jobs = [("floor", None)] + [(v, t) for t in trees for v in VARIANTS]
            rng.shuffle(jobs)
            for v, t in jobs:
                s = rng.randrange(1 << 30)
                if v == "floor":
                    floor += [x[0] for x in bench_wakeup._run_floor(exe, fdir, a.samples, s)]
                    continue
                env = dict(os.environ, PYTHONPATH=t)
                p = subprocess.run([sys.executable, __file__, "--samples", str(a.samples),
                                    "--child", v, so, str(s)], env=env, capture_output=True,
                                   text=True, cwd=t, timeout=120 + a.samples)
                if p.returncode:
                    raise RuntimeError(f"child {v} {t}: {p.stderr[-2000:]}")
                for k, vals in steps(v, json.loads(p.stdout)).items():
                    acc.setdefault((t, v), {}).setdefault(k, []).extend(vals)
    finally:
        shutil.rmtree(fdir, ignore_errors=True)
    med = lambda xs: statistics.median(xs) / 1e3 if xs else float("nan")  # noqa: E731
    res = {"seed": seed, "load": os.getloadavg(), "floor_p50_us": med(floor),
           "floor_samples": len(floor), "runs": {}}
    for (t, v), d in acc.items():
        res["runs"][f"{v} @ {t}"] = {k: {"p50_us": med(x), "n": len(x)} for k, x in d.items()}
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"floor (C ping-pong, same run): p50 {res['floor_p50_us']:.1f} us over {len(floor)}")
    for v in VARIANTS:
        keys = list(next((d for (t, vv), d in acc.items() if vv == v), {}))
        print(f"\n{v}: median per step, us  " + "  ".join(f"[{i}] {t}" for i, t in enumerate(trees)))
        for k in keys:
            cells = "  ".join(f"{med(acc.get((t, v), {}).get(k, [])):9.2f}" for t in trees)
            print(f"  {k:46} {cells}")
        tk = "TOTAL t0 -> read returned" if v == "consumer" else "TOTAL t0 -> t1"
        ns = "  ".join(str(len(acc.get((t, v), {}).get(tk, []))) for t in trees)
        print(f"  {'samples':46} {ns}")
        if a.tail:
            # the samples at or above the total's p99: where their time went, step by step
            # (every step's list holds one value per sample, in the same order)
            print(f"  p99 tail: median per step over the samples at or above the total's p99")
            tails = {}
            for t in trees:
                d = acc.get((t, v), {})
                tot = d.get(tk, [])
                cut = sorted(tot)[int(len(tot) * 0.99)] if tot else 0
                tails[t] = [i for i, x in enumerate(tot) if x >= cut]
            for k in keys:
                cells = "  ".join(f"{med([acc[(t, v)][k][i] for i in tails[t]]):9.2f}"
                                  for t in trees if (t, v) in acc)
                print(f"    {k:44} {cells}")
    print(f"\nload at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
