"""read + ack throughput, this tree against a baseline build, in interleaved rounds (issue 11 item 2).

    .venv/bin/python benchmarks/bench_acks.py --baseline /tmp/cometmp-main [--rounds 5] [--json]

The baseline is a source tree with its extensions built in place, e.g.

    git archive main | tar -x -C /tmp/cometmp-main
    (cd /tmp/cometmp-main && /path/to/.venv/bin/python setup.py build_ext --inplace)

One process, one stream of ``--entries`` 100-byte entries. Each workload reads the stream
from the start with ``Consumer.read(max_messages=B, timeout=0)`` and acks what it read:

* ``inorder_B`` (B = 1, 100, 1000): ``ack(batch)`` after each read, the way ``process()``
  and most users ack. This is the path that must cost what it costs on main (target
  >= 0.9x); it never touches the per-stream window (docs/ARCHITECTURE.md I43).
* ``reversed_100``: each batch of 100 acked one id per ``ack()`` call, last id first: the
  window's path (on the baseline, whose acks are cumulative, the first call acks the whole
  batch and the 99 others are no-ops, so this ratio is not like for like: it shows what the
  out-of-order path costs, not a regression).
* ``shuffled_1000``: each batch of 1000 acked in one ``ack(*ids)`` call, ids shuffled
  (seed fixed): the window updated once per call.

Each round runs one child process per tree, in an order that alternates every round; each
child measures every workload on its own fresh directory and prints entries/s. Printed:
the median per tree and workload and the median of the same-round ratios this/baseline,
each by wall time and by the child's CPU time (``time.process_time``: on a loaded machine
the wall-time rate mostly measures the scheduler). The first read and ack of entry 0 (the
group's and stream's one-time setup) are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ("inorder_1", "inorder_100", "inorder_1000", "reversed_100", "shuffled_1000")
PAYLOAD = b"x" * 100


def _child(entries: int) -> dict:
    import cometmp

    out = {}
    for w in WORKLOADS:
        root = tempfile.mkdtemp(prefix="cometmp-bench-acks-")
        try:
            with cometmp.Client(root) as c:
                log = c.log("ak", shards=1)
                n = entries if not w.endswith("_1") else max(1, entries // 10)
                for k in range(0, n, 10000):
                    log.append_many([PAYLOAD] * min(10000, n - k))
                con = cometmp.Consumer(c, group="g")
                # the group's and the stream's one-time costs (claiming the group, its slot,
                # creating and allocating their records) are not timed: entry 0
                con.ack(con.read("ak:shard:*", max_messages=1, timeout=0))
                batch = int(w.rsplit("_", 1)[1])
                rng = random.Random(11)
                got = 1
                t = time.perf_counter()
                cpu = time.process_time()
                while got < n:
                    b = con.read("ak:shard:*", max_messages=batch, timeout=0)
                    if not len(b):
                        break
                    got += len(b)
                    if w.startswith("inorder"):
                        con.ack(b)
                    elif w.startswith("reversed"):
                        for m in reversed(b):
                            con.ack(m.id)
                    else:
                        ids = [m.id for m in b]
                        rng.shuffle(ids)
                        con.ack(*ids)
                spent = time.perf_counter() - t
                spent_cpu = time.process_time() - cpu
                if con.lag("ak:shard:*") != {"ak:shard:0000": 0}:
                    raise SystemExit(f"{w}: not everything was acknowledged")
                con.close()
                out[w] = got / spent
                out[w + "_cpu"] = got / spent_cpu
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return out


def run(tree: str, entries: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--entries", str(entries)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/", timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{tree}: bench failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="a source tree built in place (see the docstring)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.entries)))
        return 0
    trees = {"this": HERE}
    if a.baseline:
        trees["baseline"] = os.path.abspath(a.baseline)
    rounds = []
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        rounds.append({name: run(trees[name], a.entries) for name in order})
    keys = [w + sfx for w in WORKLOADS for sfx in ("", "_cpu")]
    med = {name: {w: statistics.median(rd[name][w] for rd in rounds) for w in keys}
           for name in trees}
    doc = {"entries": a.entries, "rounds": a.rounds, "loadavg": os.getloadavg(),
           "median_entries_per_s": med}
    if "baseline" in trees:
        doc["ratio_this_vs_baseline"] = {
            w: statistics.median(rd["this"][w] / rd["baseline"][w] for rd in rounds)
            for w in keys}
    if a.json:
        doc["raw"] = rounds
        print(json.dumps(doc, indent=2))
        return 0
    print(f"entries {a.entries}, {a.rounds} rounds, loadavg {doc['loadavg'][0]:.2f}")
    print("  entries/s by wall time, and by the process's CPU time (less noisy on a busy machine)")
    for w in keys:
        line = f"  {w:18s}" + "".join(f"  {n} {med[n][w] / 1e3:9.1f} k/s" for n in trees)
        if "baseline" in trees:
            line += f"   ratio {doc['ratio_this_vs_baseline'][w]:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
