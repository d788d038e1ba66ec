"""A consumer group of member processes, cometmp's live membership beside Redis Streams
consumer groups (XREADGROUP / XACK / XAUTOCLAIM) on the same work: entries/s end to end,
2 members vs 1 with an I/O-bound handler (1 ms per batch of 100), kill -9 of a member ->
its unacked entries redelivered, and every entry accounted for (lost, duplicated, wrong).

The measurement lives in cometmp/tools/bench_groups.py; this is ``cometmp bench --scenario
groups`` (the same parser: --entries, --rounds, --dir, --json) run from a source tree:

    nice -n 15 .venv/bin/python benchmarks/bench_groups.py                 # 200,000 entries, 3 rounds
    nice -n 15 .venv/bin/python benchmarks/bench_groups.py --rounds 5 --json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cometmp.tools import bench  # noqa: E402

if __name__ == "__main__":
    sys.exit(bench.main(["--scenario", "groups", *sys.argv[1:]]))
