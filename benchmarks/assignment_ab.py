"""A/B of the group assignment (I41c): plain HRW (each stream to its heaviest member, the
first version) against HRW with bounded loads (``cometmp.members.assign``, shipped), on
``cometmp bench --scenario groups``'s I/O-bound runs (a handler sleeping 1 ms per batch of
100, 1 member vs 2, draining a backlog).

    nice -n 15 .venv/bin/python benchmarks/assignment_ab.py [--entries 100000] [--rounds 2]

The family is ``g`` (8 shards): in a fresh directory the members get ids 1 and 2, and
plain HRW gives them 1 and 7 of its shards (``bench-groups``, the scenario's own family,
happens to split 4/4 under plain HRW too; with 2 members and 8 streams plain HRW splits
evenly only 70 times in 256). Plain HRW is patched into this process's settle check and
into every member process, never into the library. Prints per run the entries/s and
each member's share, then the 2 / 1 ratio per round and its median, per variant.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cometmp import members  # noqa: E402
from cometmp.tools import bench_groups as bg  # noqa: E402

FAMILY = ("import cometmp.tools.bench_groups as b\n"
          "b.PREFIX, b.PATTERN = 'g', 'g:shard:*'\n")
PLAIN = ("from cometmp import members\n"
         "import fnmatch\n"
         "def _plain(streams, ms, cache=None):\n"
         "    out = {}\n"
         "    for s in streams:\n"
         "        c = [m for m, p in ms.items() if any(fnmatch.fnmatchcase(s, x) for x in p)]\n"
         "        if c:\n"
         "            out[s] = max(c, key=lambda m: members.hrw_weight(m, s))\n"
         "    return out\n"
         "members.assign = _plain\n")


def _plain(streams, ms, cache=None):
    out = {}
    for s in streams:
        c = [m for m, p in ms.items() if any(fnmatch.fnmatchcase(s, x) for x in p)]
        if c:
            out[s] = max(c, key=lambda m: members.hrw_weight(m, s))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    shipped, member_code = members.assign, bg._MEMBER_CODE
    bg.PREFIX, bg.PATTERN = "g", "g:shard:*"
    payloads = [s.to_bytes(8, "little") + bg.FILLER for s in range(a.entries)]
    print(f"load average {os.getloadavg()}")
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="assignment-ab-") as base:
        for r in range(a.rounds):
            for variant in (("plain", "bounded") if r % 2 == 0 else ("bounded", "plain")):
                members.assign = _plain if variant == "plain" else shipped
                bg._MEMBER_CODE = FAMILY + (PLAIN if variant == "plain" else "") + member_code
                for m in (1, 2):
                    x = bg._Run("cometmp", base, f"{variant}-{r}-{m}", m, bg.WORK_S, payloads,
                                None, False, True).run().result()
                    res.setdefault((variant, m), []).append(x["entries_per_s"])
                    print(f"round {r} {variant:7} {m} member(s): {x['entries_per_s']:9,.0f} "
                          f"entries/s, per member {x['processed_per_member']}, lost {x['lost']}",
                          flush=True)
    members.assign, bg._MEMBER_CODE = shipped, member_code
    for v in ("plain", "bounded"):
        rs = [two / one for two, one in zip(res[(v, 2)], res[(v, 1)])]
        print(f"{v:7} 2 members / 1: rounds {', '.join(f'{x:.2f}' for x in rs)}; "
              f"median {statistics.median(rs):.2f}x")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
