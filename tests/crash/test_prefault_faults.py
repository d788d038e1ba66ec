"""A failing prefault thread never loses or corrupts an entry, and appends continue
(issue 9 item 8, issue 10 item 1; ARCHITECTURE.md §4.2 point `prefault.populate`, I9).

The prefault thread (native/prealloc.c) populates pages whose disk blocks were fallocated
before, so when its `MADV_POPULATE_WRITE` fails the appender's own stores fault the pages in:
no error, no SIGBUS, nothing lost. It also extends a busy stream's reservation
(native/headroom.c, point `headroom.alloc`); when that fails, alloc_end stays where it was,
so no store lands past it (I9), and the next extension is the appender's own. The writer runs on the
failpoint build of the core (tests/failpoints.py) in a child process, so a signal would
show as its return code; the thread takes every request, so the failing point is really
reached. A `KILL` at the point is a kill -9 while
the thread runs. Each case prints its seed and replay command
(tests/crash/prefault_fault_writer.py).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile

import pytest

import cometmp

import failpoints
from conftest import child_env, oracle_chain, small_config

STREAM = "pf:shard:0000"

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prefault_fault_writer.py")


def expected(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [(b"%08d" % i) * rng.randint(8, 250) for i in range(n)]


@pytest.fixture(scope="module")
def fp_core() -> str:
    return failpoints.build()


def run_writer(fp_core: str, tmp: str, spec: str, seed: int) -> tuple[int, subprocess.CompletedProcess]:
    root, out = os.path.join(tmp, "log"), os.path.join(tmp, "res.json")
    args = [fp_core, root, spec, str(seed), out]
    print("seed", seed, "replay:", sys.executable, WRITER, *args)
    p = subprocess.run([sys.executable, WRITER, *args], env=child_env(),
                       capture_output=True, text=True, timeout=300)
    with open(out + ".count", "rb") as f:
        acked = int(f.read() or b"0")
    return acked, p


def check_log(root: str, seed: int, at_least: int, at_most: int) -> None:
    """After a reopen by the default build: entries 0..n-1 dense with their bytes, every
    acknowledged one among them, every segment clean by the pure-Python reader, and the
    next append gets the next number."""
    with cometmp.Client(root, config=small_config(preallocate_bytes=64 * 1024)) as c:
        got = [(m.id.entry, bytes(m.data)) for m in c.scan(STREAM)]
        n = len(got)
        assert at_least <= n <= at_most, (at_least, n, at_most)
        assert [e for e, _ in got] == list(range(n))
        want = expected(seed, n)
        bad = [e for e, d in got if d != want[e]]
        assert not bad, f"entries with other bytes: {bad[:10]}"
        assert c.log("pf", shards=1).append(b"after").entry == n
    assert oracle_chain(root, STREAM) == n + 1


@pytest.mark.parametrize("spec", [f"{point}:{k}:{err}:{n}" for point in failpoints.PREFAULT_POINTS
                                  for k, err, n in ((1, "EIO", 1000000000), (3, "ENOSPC", 1),
                                                    (2, "EIO", 40))])
def test_failing_prefault_loses_nothing_and_appends_continue(fp_core, spec):
    seed = random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        acked, p = run_writer(fp_core, d, spec, seed)
        assert p.returncode == 0, p.stdout + p.stderr
        with open(os.path.join(d, "res.json")) as f:
            res = json.load(f)
        print(res)
        failed = "failures" if spec.startswith("prefault.") else "extension_failures"
        assert res[failed] >= 1, f"the failpoint {spec} never fired: {res}"
        if spec.startswith("prefault.") and spec.endswith(":1000000000"):
            assert res["populated"] == 0   # every populate failed: the appender did it all
        if spec.startswith("headroom.") and spec.endswith(":1000000000"):
            # every extension the thread ran failed, and each made the next the appender's
            assert res["extension_failures"] == res["extensions"], res
        check_log(os.path.join(d, "log"), seed, 6010, 6010)


@pytest.mark.parametrize("point", failpoints.PREFAULT_POINTS)
def test_kill9_in_the_prefault_thread_loses_no_acknowledged_entry(fp_core, point):
    seed = random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        acked, p = run_writer(fp_core, d, f"{point}:10:KILL", seed)
        assert p.returncode == -9, p.stdout + p.stderr
        assert 0 < acked < 6000
        # the entry being appended at the kill may or may not have been published
        check_log(os.path.join(d, "log"), seed, acked, acked + 1)
