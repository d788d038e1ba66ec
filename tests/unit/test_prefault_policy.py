"""The prefault thread works only on a core that would otherwise be idle (issue 10 item 1;
native/prealloc.c, docs/PERFORMANCE.md "Prefault policy"): with a CPU-bound process on
every online CPU, the default configuration leaves every fresh page of the active segment
to the appender, which faults it in itself, and every entry is still there with its bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cometmp
from cometmp._ffi import ffi, lib


def prefault_stats() -> dict:
    st = ffi.new("cm_prefault_stats_t *")
    lib.cm_prefault_stats(st)
    return {k: int(getattr(st, k)) for k in
            ("requests", "bytes_populated", "bytes_skipped_busy", "failures", "thread_cpu_ns")}


def running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "R"


def test_no_idle_core_leaves_the_pages_to_the_appender(tmp_path):
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 1)]
    try:
        deadline = time.monotonic() + 30
        while not all(running(h.pid) for h in hogs):    # every hog on a run queue
            assert time.monotonic() < deadline, "the CPU-bound processes never ran"
            time.sleep(0.01)
        cfg = cometmp.Config()
        assert cfg.storage.prefault                     # the default
        cfg.storage.segment_bytes = 4 << 20
        cfg.storage.preallocate_bytes = 64 * 1024
        payloads = [b"%07d" % i * 14 for i in range(30000)]   # ~3.5 MiB of frames
        with cometmp.Client(str(tmp_path), config=cfg) as c:
            lg = c.log("busy", shards=1)
            lg.append(b"start")                         # the thread exists from here
            before = prefault_stats()
            for p in payloads:
                lg.append(p)
            after = prefault_stats()
            got = [bytes(m.data) for m in c.scan("busy:shard:0000")]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    delta = {k: after[k] - before[k] for k in after}
    print(delta)
    assert delta["requests"] > 0
    assert delta["bytes_skipped_busy"] > 0
    assert delta["bytes_populated"] == 0
    assert got == [b"start"] + payloads
