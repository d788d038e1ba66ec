"""Sustained request-path latency, this tree against a baseline build, in interleaved
rounds (issue 10 item 2).

    .venv/bin/python benchmarks/sustained_ab.py --baseline /tmp/cometmp-main [--rounds 3]

The baseline is a source tree with its extensions built in place (see prefault_ab.py). Each
round runs ``cometmp bench --scenario sustained --json`` (this tree's harness over each
tree's library, so both are measured the same way) once per variant, the order alternating
between rounds, at one fixed rate (``--rate``, default 170 MB/s: about half of this
machine's measured writeback bandwidth, so both variants get the same load whatever the
probe measures) with the same seed. Printed per round and variant: p99.9, max, calls over
1 ms, those of them not explained by waiting for a core, the longest such call, and the
rotating call's p50 and max; then medians. The run-queue split comes from the harness
(``/proc/thread-self/schedstat`` around slow calls): time a call spent runnable but not
running is the scheduler's, the rest is what the library can remove.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(HERE, "cometmp", "tools")
RUN = ("import runpy, sys; import cometmp.tools as t; t.__path__.insert(0, %r); "
       "sys.argv = ['cometmp bench'] + sys.argv[1:]; "
       "runpy.run_module('cometmp.tools.bench', run_name='__main__')" % TOOLS)
FIELDS = (("p99.9", "p999_ns", 1e3, "us"), ("max", "max_ns", 1e6, "ms"),
          (">1ms", "over_1ms", 1, ""), (">1ms not runnable", "over_1ms_without_runqueue_wait", 1, ""),
          ("max not runnable", "max_without_runqueue_wait_ns", 1e6, "ms"),
          ("rotation p50", "rotation_call_p50_ns", 1e3, "us"),
          ("rotation max", "rotation_call_max_ns", 1e6, "ms"),
          ("spare rotations", "spare_rotations", 1, ""))


def run_one(tree: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        cmd = [sys.executable, "-c", RUN, "--scenario", "sustained", "--seconds", str(args.seconds),
               "--rate", str(args.rate), "--seed", str(args.seed), "--dir", d, "--json"]
        p = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{tree}: exit {p.returncode}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="source tree with built extensions")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=170e6, help="bytes/s, both variants")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--dir", default="/var/tmp", help="where the data directories go (ext4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    trees = {"this tree": HERE, "baseline": os.path.abspath(args.baseline)}
    rows: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            res = run_one(trees[name], args)
            rows[name].append(res)
            cells = "  ".join(f"{label} {res.get(key, 0) / div:.{0 if not unit else 2}f}{unit}"
                              for label, key, div, unit in FIELDS)
            print(f"round {r + 1} {name:>9}: {cells}  (load {res['machine']['loadavg'][0]:.1f})",
                  flush=True)
    print("medians:")
    for name, runs in rows.items():
        cells = "  ".join(
            f"{label} {statistics.median(x.get(key, 0) for x in runs) / div:.{0 if not unit else 2}f}{unit}"
            for label, key, div, unit in FIELDS)
        print(f"  {name:>9}: {cells}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
