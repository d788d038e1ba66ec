"""Live group membership (issue 11 item 1, cometmp.members): what it costs and how fast
it moves streams.

    .venv/bin/python benchmarks/bench_members.py [--rounds 5] [--entries 400000] [--json]

1. read() cost: one process drains 8 streams of ``--entries`` entries in total with
   read(max_messages=100, timeout=0) + ack(batch), as a live member (the default) and
   with a static ``assignment=(0, 1)`` (no membership), alternated in rounds (AB, BA, ...),
   reported as entries/s per mode and the median of the same-round ratios.
2. Handover times with real processes (2 members, then a third joins, then one is killed
   with SIGKILL): a joiner's first share after its first read(), and kill -9 -> the
   survivors hold the dead member's streams -> every entry it had not acked is
   redelivered. Times from CLOCK_MONOTONIC, per round; median and max printed.

Prints its own figures (and ``os.getloadavg()``); ``--json`` prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import cometmp  # noqa: E402

STREAMS = 8

MEMBER = r"""
import os, sys, time
import cometmp
root, log, hold = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
with cometmp.Client(root) as c:
    con = cometmp.Consumer(c, group="bench")
    os.write(fd, b"R %r\n" % time.monotonic())
    last = None
    while True:
        b = con.read("b*", max_messages=50, timeout=0.05)
        now = time.monotonic()
        held = con.assigned()
        if held != last:
            os.write(fd, b"S %r %s\n" % (now, ",".join(held).encode() or b"-"))
            last = held
        if len(b):
            os.write(fd, b"".join(b"D %r %s %d\n" % (now, m.id.stream.encode(), m.id.entry) for m in b))
            if not hold:
                con.ack(b)
"""


def drain(root: str, assignment, n: int) -> float:
    with cometmp.Client(root) as c:
        con = cometmp.Consumer(c, group=f"drain-{time.monotonic_ns()}")
        got = 0
        t0 = time.perf_counter()
        while got < n:
            b = con.read("b*", max_messages=100, timeout=0, assignment=assignment)
            got += len(b)
            con.ack(b)
        dt = time.perf_counter() - t0
        con.close()
    return n / dt


def events(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [ln.split() for ln in f.read().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


def wait(cond, what: str = "", bound: float = 60.0):
    end = time.monotonic() + bound
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.005)
    raise SystemExit(f"benchmark: {what} did not happen within {bound} s")


def held(path: str) -> set[str]:
    s = [e for e in events(path) if e[0] == "S"]
    return set() if not s or s[-1][2] == "-" else set(s[-1][2].split(","))


def handover_round(base: str, r: int) -> dict:
    root = os.path.join(base, f"handover{r}")
    with cometmp.Client(root) as c:
        for k in range(STREAMS):
            c.append(f"b{k}", [b"x"])
        logs = [os.path.join(root, f"m{i}.log") for i in range(3)]
        procs = []

        def spawn(i: int, hold: bool):
            procs.append(subprocess.Popen([sys.executable, "-c", MEMBER, root, logs[i], "1" if hold else "0"],
                                          env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)}))
        try:
            spawn(0, False)
            wait(lambda: len(held(logs[0])) == STREAMS, "the first member to hold every stream")
            spawn(1, True)                       # the victim: holds what it is delivered
            wait(lambda: held(logs[1]), "the second member to get a share")
            r1 = float(next(e[1] for e in events(logs[1]) if e[0] == "R"))
            s1 = float(next(e[1] for e in events(logs[1]) if e[0] == "S" and e[2] != "-"))
            spawn(2, False)
            wait(lambda: held(logs[2]), "the third member to get a share")
            r2 = float(next(e[1] for e in events(logs[2]) if e[0] == "R"))
            s2 = float(next(e[1] for e in events(logs[2]) if e[0] == "S" and e[2] != "-"))
            victim_streams = held(logs[1])
            before = len([e for e in events(logs[1]) if e[0] == "D"])
            for s in victim_streams:
                c.append(s, [b"y"] * 5)
            # streams HRW moved to the third member stay the victim's while it holds their
            # first entry unacked, but it reads nothing new there (I41d): wait for one batch
            wait(lambda: len([e for e in events(logs[1]) if e[0] == "D"]) >= before + 5,
                 "the victim to read the new entries")
            unacked = {(e[2], int(e[3])) for e in events(logs[1]) if e[0] == "D"}
            os.kill(procs[1].pid, signal.SIGKILL)
            procs[1].wait()
            t_kill = time.monotonic()
            survivors = (logs[0], logs[2])
            wait(lambda: victim_streams <= held(logs[0]) | held(logs[2]), "the takeover")
            t_take = max(float(e[1]) for p in survivors for e in events(p)
                         if e[0] == "S" and float(e[1]) >= t_kill and set(e[2].split(",")) & victim_streams)

            def redone():
                got = {(e[2], int(e[3])): float(e[1]) for p in survivors for e in events(p)
                       if e[0] == "D" and float(e[1]) >= t_kill}
                return got if unacked <= set(got) else None
            got = wait(redone, "the redelivery")
            t_redo = max(got[k] for k in unacked)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return {"join_2nd_s": s1 - r1, "join_3rd_s": s2 - r2, "kill_to_takeover_s": t_take - t_kill,
            "kill_to_redelivered_s": t_redo - t_kill, "redelivered": len(unacked)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--entries", type=int, default=400_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict = {"loadavg_before": os.getloadavg(), "rounds": a.rounds, "entries": a.entries}
    with tempfile.TemporaryDirectory(dir=a.dir) as base:
        root = os.path.join(base, "drain")
        per = a.entries // STREAMS
        with cometmp.Client(root) as c:
            for k in range(STREAMS):
                for i in range(0, per, 10_000):
                    c.append(f"b{k}", [b"p" * 64] * min(10_000, per - i))
        member, static, ratios = [], [], []
        for i in range(a.rounds):
            if i % 2 == 0:   # ABBA: neither mode always runs first
                m = drain(root, None, per * STREAMS)
                s = drain(root, (0, 1), per * STREAMS)
            else:
                s = drain(root, (0, 1), per * STREAMS)
                m = drain(root, None, per * STREAMS)
            member.append(m)
            static.append(s)
            ratios.append(m / s)
        out["read_entries_per_s"] = {"member": statistics.median(member),
                                     "static_assignment": statistics.median(static),
                                     "member_over_static": statistics.median(ratios),
                                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
        rounds = [handover_round(base, r) for r in range(a.rounds)]
        out["handover_s"] = {k: {"median": statistics.median(x[k] for x in rounds),
                                 "max": max(x[k] for x in rounds)}
                             for k in rounds[0] if k != "redelivered"}
        out["handover_rounds"] = rounds
    out["loadavg_after"] = os.getloadavg()
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    r = out["read_entries_per_s"]
    print(f"load average before {out['loadavg_before']}, after {out['loadavg_after']}")
    print(f"read()+ack, 8 streams, 100 per batch: member {r['member']:,.0f} entries/s, static "
          f"assignment {r['static_assignment']:,.0f} entries/s, ratio {r['member_over_static']:.3f} "
          f"(median of {a.rounds} same-round ratios, {r['ratio_min']:.2f}..{r['ratio_max']:.2f})")
    for k, v in out["handover_s"].items():
        print(f"{k:<24} median {v['median']:.3f} s  max {v['max']:.3f} s  ({a.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
