"""The injected-fault tier: every named failpoint off the rotation path (ARCHITECTURE.md
§4.2) failing its k-th call with ENOSPC and with EIO (issue 9 item 8).

For each point, on the path of its scenario (crash/injected_fault_worker.py: writes and
syncs, writer opens, stream creation, recovery, group creation, acks, retention, a new
data directory's marker and family file, readonly reads, persisting a rebuilt index in a
writable read and in ``cometmp recover``): the API
raised a cometmp error (DiskFull for ENOSPC, StorageError naming a path for EIO), and
afterwards a reopen by the default build shows every acknowledged entry exactly once,
dense, with its bytes, the group's acks survive, no temp file is left, and appends resume.

Default run: k = 1 for every point and errno (one worker process per scenario). ``-m
soak``: k = 1..6, each failing once and three times in a row. A case replays with

    python tests/crash/injected_fault_worker.py SO BASE SCENARIO '[[SPEC, ERR, DUR]]' OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import pytest

import cometmp
import failpoints
from conftest import child_env, small_config, stream_path

STREAM = "rot:shard:0000"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "injected_fault_worker.py")


@pytest.fixture(scope="module")
def fp_core() -> str:
    return failpoints.build()


def cases(scenario: str, ks=(1,), runs=(1,)) -> list[list]:
    return [[failpoints.on_sync_rotation(f"{point}:{k}:{err}:{n * failpoints.RUN_LENGTH.get(point, 1)}"),
             err, dur]
            for point, dur in failpoints.PATH_POINTS[scenario]
            for err in ("ENOSPC", "EIO") for k in ks for n in runs]


def run_scenario(fp_core: str, scenario: str, specs: list[list]) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        out = os.path.join(d, "results.json")
        args = [fp_core, d, scenario, json.dumps(specs), out]
        print("replay:", sys.executable, WORKER, *args[:3], "'<cases>'", out)
        p = subprocess.run([sys.executable, WORKER, *args], env=child_env(), capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr
        with open(out) as f:
            results = json.load(f)
        failures = []
        fired = 0
        for r in results:
            point = r["spec"].split(":")[0]
            why = r["bad"] or check_reopen(r)
            k = int(r["spec"].split(":")[1])
            if not why and not r["fired"] and point not in failpoints.ABSORBED and k == 1:
                why = "the failpoint never fired"   # (a path may make fewer than k calls)
            fired += bool(r["fired"])
            print(f"{r['spec']}: {len(r['acked'])} acknowledged, fired {r['fired']}x"
                  f"{': ' + why if why else ''}")
            if why:
                failures.append(f"{r['spec']}: {why}")
        print(f"{scenario}: {len(results)} cases, {fired} with the point fired, "
              f"{len(failures)} failed")
        assert not failures, "\n".join(failures)


def check_reopen(r: dict) -> str:
    """What is wrong with the case's directory, reopened by the default build ('' = ok)."""
    acked = {int(e): d for e, d in r["acked"].items()}
    first, n = r["first"], (max(acked) + 1 if acked else 0)
    if sorted(acked) != list(range(first, n)):
        return f"acknowledged entries are not dense from {first}: {sorted(set(range(first, n)) - set(acked))[:5]} missing"
    with cometmp.Client(r["root"], config=small_config(preallocate_bytes=64 * 1024)) as c:
        got = [(m.id.entry, [len(m.data), hashlib.sha256(m.data).hexdigest()]) for m in c.scan(STREAM)]
        if [e for e, _ in got] != list(range(first, n)):
            return f"reopen shows entries {[e for e, _ in got][:3]}..{[e for e, _ in got][-3:]}, acknowledged {first}..{n}"
        wrong = [e for e, d in got if acked[e] != d]
        if wrong:
            return f"entries with other bytes: {wrong[:5]}"
        if c.length(STREAM) != n:
            return f"length {c.length(STREAM)}, acknowledged {n}"
        if r["group_acked"] is not None:
            con = cometmp.Consumer(c, group="g")
            again = [m.id.entry for m in con.read("rot:shard:*", timeout=0)]
            con.close()
            if again and min(again) < r["group_acked"]:
                return f"the group re-reads from {min(again)} after acking {r['group_acked']}"
        if c.log("rot", shards=1).append(b"resumed").entry != n:
            return "the next append did not get the next number"
    left = [f for f in os.listdir(stream_path(r["root"], STREAM)) if f.endswith(".tmp")]
    return f"temp files left: {left}" if left else ""


@pytest.mark.parametrize("scenario", sorted(failpoints.PATH_POINTS))
def test_a_failed_step_raises_a_cometmp_error_and_loses_nothing(fp_core, scenario):
    run_scenario(fp_core, scenario, cases(scenario))


@pytest.mark.soak
@pytest.mark.parametrize("scenario", sorted(failpoints.PATH_POINTS))
def test_every_call_of_every_point_fails_cleanly(fp_core, scenario):
    run_scenario(fp_core, scenario, cases(scenario, ks=range(1, 7), runs=(1, 3)))
