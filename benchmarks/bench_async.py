"""read_async / batches() and gevent waits beside the blocking read(): loop stall per call,
wake-up latency, threads alive during N waits, a greenlet's progress during a read(timeout).

The measurement lives in cometmp/tools/bench_async.py (also ``cometmp bench --scenario
async``); this runs it from a source tree:

    nice -n 15 .venv/bin/python benchmarks/bench_async.py            # 300 wake-ups, 100 readers
    nice -n 15 .venv/bin/python benchmarks/bench_async.py --rounds 3 --samples 500 --json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cometmp.tools import bench_async  # noqa: E402

if __name__ == "__main__":
    sys.exit(bench_async.main())
