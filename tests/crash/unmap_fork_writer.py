"""A writer for tests/crash/test_unmap_steps.py, on the failpoint build of the core.

    python unmap_fork_writer.py SO ROOT RESUME OUT [SPEC]

Loads the failpoint core SO as cometmp._cffi (tests/failpoints.py), opens ROOT with 8 MiB
segments and pauses the prefault thread between two steps of a sealed segment's munmap
(COMETMP_FAILPOINT="prefault.unmap:1:PAUSE", resumed by creating the file RESUME). It
appends until the first rotation, waits for the pause (RESUME.paused exists), forks, and
records in OUT (JSON) how much of the sealed segment was mapped: in the parent while
paused, in the child, and in the parent once the thread finished. With SPEC (an errno
spec such as "prefault.unmap:1:EIO") instead of the pause, it only appends until the
first rotation, lets the thread finish, and records what is still mapped.
"""
import json
import os
import sys
import time

tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, tests)
import failpoints  # noqa: E402

so, root, resume, out = sys.argv[1:5]
spec = sys.argv[5] if len(sys.argv) > 5 else "prefault.unmap:1:PAUSE"
failpoints.bootstrap(so)

import cometmp  # noqa: E402
from cometmp import paths, prealloc  # noqa: E402

STREAM = "um:shard:0000"


def mapped(path: str) -> int:
    """Bytes of this process's address space mapped from `path` (/proc/self/maps)."""
    n = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == path:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                n += hi - lo
    return n


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.001)


cfg = cometmp.Config()
cfg.storage.segment_bytes = 8 << 20
# set before any thread of the core runs (the prefault thread reads them): nothing
# evaluates the point before the first rotation's munmap
os.environ["COMETMP_FAILPOINT_RESUME"] = resume
os.environ["COMETMP_FAILPOINT"] = spec
res = {}
with cometmp.Client(root, config=cfg) as c:
    lg = c.log("um", shards=1)
    sealed = os.path.join(paths.stream_dir(root, STREAM), paths.segment_name(0))
    lg.append(b"first")
    res["mapped_before"] = mapped(sealed)
    while len([n for n in os.listdir(os.path.dirname(sealed)) if n.endswith(".seg")]) < 2:
        lg.append(b"u" * 1000)      # until the first rotation queues the sealed one's munmap
    if "PAUSE" not in spec:
        prealloc.drain()
        res["mapped_after"] = mapped(sealed)
        res["entries"] = c.length(STREAM)
        with open(out, "w") as f:
            json.dump(res, f)
        sys.exit(0)
    wait_for(lambda: os.path.exists(resume + ".paused"), "the thread to pause mid-unmap")
    res["mapped_paused"] = mapped(sealed)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if mapped(sealed) == 0 else 2)
    _, status = os.waitpid(pid, 0)
    res["child_exit"] = os.waitstatus_to_exitcode(status)
    with open(resume, "w"):
        pass
    prealloc.drain()
    res["mapped_after"] = mapped(sealed)
    res["entries"] = c.length(STREAM)
with open(out, "w") as f:
    json.dump(res, f)
