"""A writer for the prefault-fault tests, on the failpoint build of the core.

    python prefault_fault_writer.py SO ROOT SPEC SEED OUT

Loads the failpoint core SO as cometmp._cffi (tests/failpoints.py), opens ROOT with 1 MiB
segments and 64 KiB allocation chunks, sets COMETMP_FAILPOINT to SPEC (which fails or kills
the prefault thread) and appends 6,000 entries of 64-2,000 bytes (seeded: entry i is
b"%08d" % i repeated rng.randint(8, 250) times), recording the count acknowledged so far in
OUT.count after each. Then it writes the prefault thread's counts to OUT, clears the
failpoint and appends 10 more. An append that fails or gets another number exits non-zero.
"""
import os
import random
import sys

tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, tests)
import failpoints  # noqa: E402

so, root, spec, seed, out = sys.argv[1:6]
failpoints.bootstrap(so)

import json  # noqa: E402

import cometmp  # noqa: E402
from cometmp import prealloc  # noqa: E402


def payload(rng, i):
    return (b"%08d" % i) * rng.randint(8, 250)

rng = random.Random(int(seed))
cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
cfg.storage.preallocate_bytes = 64 * 1024
os.environ["COMETMP_FAILPOINT"] = spec
acked = os.open(out + ".count", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
with cometmp.Client(root, config=cfg) as c:
    lg = c.log("pf", shards=1)
    for i in range(6000):            # ~6 MiB: six rotations, ~50 prefault requests
        assert lg.append(payload(rng, i)).entry == i
        os.pwrite(acked, b"%08d" % (i + 1), 0)
    st = prealloc.stats()
    res = {"requests": st["requests"], "failures": st["failures"],
           "populated": st["bytes_populated"], "extensions": st["extensions"],
           "extension_failures": st["extension_failures"]}
    os.environ.pop("COMETMP_FAILPOINT")
    for j in range(10):               # and once it heals
        assert lg.append(payload(rng, 6000 + j)).entry == 6000 + j
with open(out, "w") as f:
    json.dump(res, f)
