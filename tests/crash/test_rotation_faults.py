"""A rotation that fails at any step (ENOSPC or EIO) writes nothing, leaves no file that
claims entry numbers, and loses or reuses no acknowledged entry, before or after a reopen
(issue 9 item 1; ARCHITECTURE.md §4.1, I1).

The failpoint cases run a writer on the failpoint build of the core (tests/failpoints.py);
each prints its parameters, and a failure replays with

    python tests/crash/rotation_fault_writer.py SO ROOT SPEC DURABILITY SEED OUT

The full-filesystem case fills a real 4 MiB tmpfs (the fixture of test_disk_full.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile

import pytest

import cometmp

import failpoints
from conftest import child_env, oracle_chain, segment_files, small_config
from test_disk_full import small_fs  # noqa: F401  (fixture)

STREAM = "rot:shard:0000"
WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rotation_fault_writer.py")
DURABLE_ONLY = ("rotate.seal_fsync", "rotate.fsync")
SYNC_ONLY = ("rotate.map",)


def cases():
    for point in failpoints.ROTATION_POINTS:
        for err in ("ENOSPC", "EIO"):
            for k, times in ((1, 1), (3, 1), (2, 4)):
                durability = "interval" if point in DURABLE_ONLY or k == 3 else "none"
                if point == "rotate.remove":
                    # the new segment became visible, the step after failed, and so did its
                    # removal: appends retry the rotation (rotate_pending) until one works
                    spec = (f"rotate.after_segment_create:{k}:{err}:{times + 1},"
                            f"rotate.remove:1:{err}:{times}")
                else:
                    spec = f"{point}:{k}:{err}:{times}"
                # both ways of making the new files (ARCHITECTURE.md §4.1): taken from a
                # spare made ahead, or created by the rotation; mapping is the latter's only
                for path in ("sync",) if point in SYNC_ONLY else ("spare", "sync"):
                    yield pytest.param(spec, durability, k * 100 + times, path,
                                       id=f"{spec}-{durability}-{path}")


@pytest.fixture(scope="module")
def fp_core() -> str:
    return failpoints.build()


def check_log(root: str, acked: dict[int, list], cfg: cometmp.Config, oracle: bool = True) -> None:
    """After a reopen: exactly the acknowledged entries, dense from 0, with their bytes
    (an empty segment left inside the log would make its range unreadable, one left at
    the end would hand numbers out again); no temp file; the next append gets the next
    number. With `oracle`, also every segment by the pure-Python reader: no damage, each
    starting where the one before ends."""
    n = len(acked)
    assert sorted(acked) == list(range(n)), "acknowledged entry numbers are not dense"
    with cometmp.Client(root, config=cfg) as c:
        got = [(m.id.entry, [len(m.data), hashlib.sha256(m.data).hexdigest()])
               for m in c.scan(STREAM)]
        assert [e for e, _ in got] == list(range(n))
        bad = [e for e, d in got if acked[e] != d]
        assert not bad, f"entries with other bytes: {bad[:10]}"
        assert c.length(STREAM) == n
        assert c.log("rot", shards=1).append(b"after the faults").entry == n
    bases = [b for b, _ in segment_files(root, STREAM)]
    assert bases == sorted(set(bases)) and bases[0] == 0 and bases[-1] <= n
    assert not oracle or oracle_chain(root, STREAM) == n + 1
    d = os.path.dirname(segment_files(root, STREAM)[0][1])
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


@pytest.mark.parametrize("spec,durability,seed,path", list(cases()))
def test_failed_rotation_loses_and_reuses_nothing(fp_core, spec, durability, seed, path):
    # in /dev/shm when there is one: ~8 MiB per case, and the oracle pass over it is slow
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        res = run_writer(fp_core, d, spec, durability, seed, path)
    counters = res["counters"]
    if path == "sync":
        assert counters["spare_rotations"] == 0, counters
    else:
        assert counters["spare_rotations"] >= 1, counters


@pytest.mark.parametrize("err", ["ENOSPC", "EIO"])
def test_a_spare_that_cannot_be_built_leaves_the_rotation_to_create_its_files(fp_core, err):
    """The prefault thread fails every spare it builds: no append sees an error, every
    rotation creates its own files, and the log is whole (a spare is headroom, spare.c)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        res = run_writer(fp_core, d, f"spare.create:1:{err}:1000000000", "none", 7,
                         "spare", expect_errors=False)
    assert not res["errors"], res["errors"][:3]
    assert res["counters"]["rotations"] >= 5 and res["counters"]["spare_rotations"] == 0, \
        res["counters"]


def run_writer(fp_core: str, tmp: str, spec: str, durability: str, seed: int, path: str,
               expect_errors: bool = True) -> dict:
    root, out = os.path.join(tmp, "log"), os.path.join(tmp, "acked.json")
    args = [fp_core, root, spec, durability, str(seed), out, path]
    print("replay:", sys.executable, WRITER, *args)
    p = subprocess.run([sys.executable, WRITER, *args], env=child_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out) as f:
        res = json.load(f)
    assert res["errors"] or not expect_errors, f"the failpoint {spec} never fired"
    print(f"{len(res['errors'])} failed appends, {len(res['acked'])} acknowledged, "
          f"counters {res['counters']}")
    cfg = small_config(preallocate_bytes=64 * 1024, durability=durability)
    check_log(root, {int(e): d for e, d in res["acked"].items()}, cfg, oracle=False)
    return res


@pytest.mark.parametrize("free_kib", [900, 1150, 1400, 1700])
def test_rotation_on_a_full_tmpfs(small_fs, free_kib):  # noqa: F811
    """Fill a real tmpfs so that appends and rotations hit ENOSPC, keep appending (big
    entries that need a new segment, small ones that still fit the old one), then free the
    space: every acknowledged entry is there once, numbers dense, appends resume."""
    root = os.path.join(small_fs, "log")
    cfg = small_config(preallocate_bytes=64 * 1024)
    rng = random.Random(free_kib)
    acked: dict[int, list] = {}
    fails = rotation_fails = 0
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("rot", shards=1)
        st = os.statvfs(small_fs)
        filler = os.path.join(small_fs, "filler")
        with open(filler, "wb") as f:
            f.write(b"\xff" * max(0, st.f_bavail * st.f_frsize - free_kib * 1024))
        for i in range(400):
            data = rng.randbytes(rng.choice((300, 2000, 60_000, 150_000)))
            before = c.length(STREAM)
            try:
                entry = lg.append(data).entry
            except cometmp.DiskFull as e:
                fails += 1
                rotation_fails += ".idx" in str(e) or ".seg.tmp" in str(e)
                assert c.length(STREAM) == before
                continue
            assert entry not in acked and entry == before
            acked[entry] = [len(data), hashlib.sha256(data).hexdigest()]
            assert c.read(STREAM, entry).data == data
        print(f"free {free_kib} KiB: {len(acked)} acknowledged, {fails} DiskFull, "
              f"{rotation_fails} in rotation")
        assert fails
        os.unlink(filler)
    check_log(root, acked, cfg)
