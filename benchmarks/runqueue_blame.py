"""Who held the CPU while an appender waited for it: read `perf sched timehist` output and,
for every wait of a worker's appending thread longer than --over ms, name the task that ran
longest on that CPU during the wait (issue 10 item 2, docs/PERFORMANCE.md "The prefault
thread yields between steps").

    perf sched record -a -o /tmp/sched.data -- sleep 25 &
    .venv/bin/python -m cometmp bench --scenario sustained --seconds 20 --rate 170e6 --seed 11
    perf sched timehist -i /tmp/sched.data > /tmp/timehist.txt
    .venv/bin/python benchmarks/runqueue_blame.py /tmp/timehist.txt [--over 1.0] [--tasks 'python[123],python[124]']

Without --tasks the appenders are taken to be the --top (default 2) main threads of
`python` processes with the most context switches (the bench's paced workers switch every
millisecond). A thread is shown as `python[tid/pid]`; the thread numbered right after a
worker's pid is its retention thread, the next one its prefault thread (Client.open
starts retention, the first stream starts the prefault thread).
"""

from __future__ import annotations

import argparse
import collections
import sys


def load(path: str) -> list[tuple[float, int, str, float, float]]:
    """(time s, cpu, task, sched delay ms, run time ms) per switch-out line."""
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 6:
                continue
            try:
                rows.append((float(p[0]), int(p[1].strip("[]")), p[2], float(p[-2]), float(p[-1])))
            except ValueError:
                continue
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("timehist")
    ap.add_argument("--over", type=float, default=1.0, help="waits longer than this, ms")
    ap.add_argument("--tasks", help="comma-separated task names as timehist prints them")
    ap.add_argument("--top", type=int, default=2)
    args = ap.parse_args(argv)
    rows = load(args.timehist)
    if args.tasks:
        tasks = set(args.tasks.split(","))
    else:
        counts = collections.Counter(t for _, _, t, _, _ in rows
                                     if t.startswith("python[") and "/" not in t)
        tasks = {t for t, _ in counts.most_common(args.top)}
    ran = collections.defaultdict(list)      # cpu -> [(start, end, task)]
    for t, cpu, task, _, r in rows:
        ran[cpu].append((t - r / 1e3, t, task))
    blame, waits = collections.Counter(), 0
    for t, cpu, task, delay, r in rows:
        if task not in tasks or delay <= args.over:
            continue
        waits += 1
        start = t - r / 1e3
        frm = start - delay / 1e3
        held = collections.Counter()
        for s, e, other in ran[cpu]:
            overlap = min(e, start) - max(s, frm)
            if overlap > 0:
                held[other] += overlap
        blame[held.most_common(1)[0][0] if held else "?"] += 1
    print(f"appenders: {', '.join(sorted(tasks))}")
    print(f"{waits} waits for a CPU over {args.over} ms; the task that ran longest on that CPU meanwhile:")
    for task, n in blame.most_common():
        print(f"  {n:6d}  {task}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
