"""Prefault policy, this tree against a baseline build, in interleaved rounds (issue 10 item 1).

    .venv/bin/python benchmarks/prefault_ab.py --baseline /tmp/cometmp-main [--rounds 9]

The baseline is a source tree with its extensions built in place, e.g.

    git archive main | tar -x -C /tmp/cometmp-main
    (cd /tmp/cometmp-main && /path/to/.venv/bin/python setup.py build_ext --inplace)

Each round runs ``cometmp bench --scenario multiproc --modes single,control --rounds 1``
(this tree's harness, so both sides are measured the same way) once per variant, in an
order that rotates every round: this tree with the defaults, the baseline with the
defaults, and this tree with ``--no-prefault``. Within a variant's run 1 and 2 processes
are measured seconds apart. Printed per variant, as medians over the rounds: 1-process and
2-process rate, 2-vs-1 scaling, the control's scaling (what the machine gave two pure-CPU
processes at that moment), and the load-independent costs per entry (appending-thread CPU,
prefault-thread CPU, process CPU, appender page faults per 1,000 entries, pages the
prefault thread populated); then this tree's 1-process rate against
the baseline's, round by round (both measured minutes apart at most). Prints its own figures;
``--json`` prints the raw rounds too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(HERE, "cometmp", "tools")
# this tree's bench (and the scenario modules it imports) over the library of the tree under
# test (PYTHONPATH): cometmp.tools resolves first from this tree's tools directory
RUN = ("import runpy, sys; import cometmp.tools as t; t.__path__.insert(0, %r); "
       "sys.argv = ['cometmp bench'] + sys.argv[1:]; "
       "runpy.run_module('cometmp.tools.bench', run_name='__main__')" % TOOLS)
COSTS = ("appender_cpu_ns_per_entry", "prefault_cpu_ns_per_entry", "process_cpu_ns_per_entry",
         "appender_minflt_per_1k_entries", "prefault_pages_populated")


def run(tree: str, entries: int, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, "-c", RUN, "--scenario", "multiproc", "--modes", "single,control",
           "--rounds", "1", "--entries", str(entries), "--json", *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/", timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{tree}: bench failed:\n{p.stderr[-2000:]}")
    doc = json.loads(p.stdout)
    single = doc["results"]["single"]
    out = {"p1": single["1"]["entries_per_s"], "p2": single["2"]["entries_per_s"],
           "scaling": doc["ratios"]["single_scaling_2_vs_1"],
           "control": doc["ratios"]["control_scaling_2_vs_1"],
           "load": doc["machine"]["loadavg"][0]}
    for p_ in ("1", "2"):
        for k in COSTS:
            out[f"{k}_{p_}"] = single[p_].get(k, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="source tree of the baseline build")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--entries", type=int, default=300_000, help="appends per process")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    variants = [("new", HERE, []), ("baseline", os.path.abspath(a.baseline), []),
                ("new --no-prefault", HERE, ["--no-prefault"])]
    rows: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for r in range(a.rounds):
        order = variants[r % 3:] + variants[:r % 3]
        for name, tree, extra in order:
            res = run(tree, a.entries, extra)
            rows[name].append(res)
            print(f"round {r + 1}: {name:18} 1 proc {res['p1'] / 1e6:5.2f} M/s, 2 procs "
                  f"{res['p2'] / 1e6:5.2f} M/s, scaling {res['scaling']:.2f}x (control "
                  f"{res['control']:.2f}x), load {res['load']:.1f}", flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"\nmedian of {a.rounds} interleaved rounds, {a.entries} single appends per process")
    for name, rs in rows.items():
        print(f"  {name:18} 1 proc {med([x['p1'] for x in rs]) / 1e6:5.2f} M/s, 2 procs "
              f"{med([x['p2'] for x in rs]) / 1e6:5.2f} M/s, scaling "
              f"{med([x['scaling'] for x in rs]):.2f}x (control "
              f"{med([x['control'] for x in rs]):.2f}x)")
        for p_ in ("1", "2"):
            c = {k: med([x[f'{k}_{p_}'] for x in rs]) for k in COSTS}
            print(f"      {p_} proc(s), per entry: appender {c[COSTS[0]]:.0f} ns CPU, prefault "
                  f"thread {c[COSTS[1]]:.0f} ns, process {c[COSTS[2]]:.0f} ns; appender "
                  f"{c[COSTS[3]]:.2f} faults/1k; pages prefaulted {c[COSTS[4]]:.0f}")
    ratio = [n["p1"] / b["p1"] for n, b in zip(rows["new"], rows["baseline"])]
    print(f"  new / baseline, 1 process: {med(ratio):.3f} (rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratio)})")
    ratio2 = [n["p2"] / b["p2"] for n, b in zip(rows["new"], rows["baseline"])]
    print(f"  new / baseline, 2 processes: {med(ratio2):.3f}")
    if a.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
