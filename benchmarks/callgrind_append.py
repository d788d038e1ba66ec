"""A fixed workload for instruction counts of the C-API hot paths (docs/PERFORMANCE.md, abi3).

Run under callgrind, one phase per process, and compare two builds of the extensions
(full API and Py_LIMITED_API) with the same script and the same N:

    valgrind --tool=callgrind --callgrind-out-file=OUT python benchmarks/callgrind_append.py PHASE N
    callgrind_annotate --inclusive=yes OUT | grep -E 'PROGRAM TOTALS|Appender_append|...'

PHASE is one of: none (setup only: the baseline to subtract), append (N unkeyed 100 B
appends), keyed (N appends keyed by 4,096 distinct str keys on 16 shards), many (N / 1000
append_many calls of 1,000 × 100 B), entry (N reads of MessageID.entry), read and
read_zc (a consumer reads N entries as bytes / as zero-copy memoryviews, payloads()).
Prints the module files it imported, so a run names the build it measured.
"""
import sys
import tempfile

import cometmp
from cometmp import _appender, _reader

phase, n = sys.argv[1], int(sys.argv[2])
p = b"x" * 100
with tempfile.TemporaryDirectory() as d, cometmp.Client(d) as client:
    log = client.log("bench", shards=16)
    keys = [f"user-{i}" for i in range(4096)]
    for i in range(4096):                      # warm: every shard's first pages, every key
        log.append(p, keys[i])
    if phase in ("read", "read_zc"):
        log.append_many([p] * n, key="k")
    if phase == "append":
        for _ in range(n):
            log.append(p)
    elif phase == "keyed":
        for i in range(n):
            log.append(p, keys[i & 4095])
    elif phase == "many":
        batch = [p] * 1000
        for _ in range(n // 1000):
            log.append_many(batch)
    elif phase == "entry":
        mid = log.append(p)
        for _ in range(n):
            mid.entry
    elif phase in ("read", "read_zc"):
        con = cometmp.Consumer(client, group="g", zero_copy=phase == "read_zc")
        got = 0
        while got < n + 4096:
            b = con.read("bench:shard:*", max_messages=10000, timeout=0)
            got += len(b.payloads())
            con.commit(b)
        con.close()
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase}")
print(_appender.__file__, _reader.__file__)
