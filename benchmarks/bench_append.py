"""Single-process append benchmark: cometmp append / append_many vs SQLite and logging.

A thin runner over ``cometmp.tools.bench`` (the same code as ``cometmp bench``); every option of
``cometmp bench`` is accepted, e.g.::

    python benchmarks/bench_append.py              # 1,000,000 entries, 3 rounds
    python benchmarks/bench_append.py --quick --json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cometmp.tools.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--scenario", "single", *sys.argv[1:]]))
