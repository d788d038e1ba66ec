"""cometmp bench --scenario groups (cometmp/tools/bench_groups.py) runs small, end to end, with
real member processes, a real kill -9 and, when installed, a real redis-server: its JSON
document has the figures it promises, every entry is accounted for (nothing lost, cometmp
duplicates nothing: the killed member dies holding a batch it has not processed), and
nothing is left running.
Speed is never asserted (the machine is shared); docs/PERFORMANCE.md has the figures."""

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil

import pytest

from cometmp.tools import bench, bench_groups


def _children():
    """Pids whose parent is this process (/proc/PID/stat field 4)."""
    me, out = str(os.getpid()), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    out.add(int(pid))
        except OSError:
            pass
    return out

REDIS = importlib.util.find_spec("redis") is not None and shutil.which("redis-server") is not None
ENTRIES = 4000
RUNS = ("throughput", "drain", "io_1", "io_2", "kill")


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    before = set(_children())
    parent = tmp_path_factory.mktemp("bench-groups")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench.main(["--scenario", "groups", "--json", "--entries", str(ENTRIES),
                         "--rounds", "1", "--dir", str(parent)])
    d = json.loads(buf.getvalue())   # stdout holds exactly one JSON document
    d["_rc"], d["_left_children"] = rc, set(_children()) - before
    d["_dir_left"] = list(parent.iterdir())
    return d


def _systems():
    return ["cometmp", "redis"] if REDIS else ["cometmp"]


def test_every_run_of_every_system_is_in_the_document_with_its_figures(doc):
    assert doc["_rc"] == 0 and doc["scenario"] == "groups"
    assert doc["settings"]["entries"] == ENTRIES and doc["settings"]["shards"] == 8
    for s in _systems():
        for what in RUNS:
            (r,) = doc["runs"][f"{s}_{what}"]
            assert r["entries"] == ENTRIES and r["timed_out"] is False, (s, what)
            assert _finite(r["entries_per_s"]) and r["entries_per_s"] > 0, (s, what)
            assert r["members"] == (1 if what == "io_1" else 2)
            assert r["backlog"] is (what != "throughput")
            assert r["producer_seconds"] > 0
            assert r["members_cpu_ms_per_batch"] > 0
        assert set(doc["summary"][s]) >= {"throughput_entries_per_s", "io_scaling_2_over_1",
                                          "kill_to_all_redelivered_s", "lost", "duplicated"}
    for what in ("io_1", "io_2"):
        assert doc["runs"][f"control_{what}"][0]["lost"] == 0
    io = doc["summary"]["cometmp"]["io_scaling_2_over_1"]
    assert io["rounds"] == [doc["runs"]["cometmp_io_2"][0]["entries_per_s"]
                            / doc["runs"]["cometmp_io_1"][0]["entries_per_s"]]
    (target,) = [t for t in doc["targets"] if t["name"].startswith("2 members vs 1")]
    assert target["measured"] == io["median"]
    assert (target["result"] == "PASS") == (io["median"] >= bench_groups.TARGET_IO_SCALING)


def test_cometmp_loses_nothing_serves_nothing_wrong_and_duplicates_only_the_killed_batch(doc):
    for s in _systems():
        for what in RUNS:
            (r,) = doc["runs"][f"{s}_{what}"]
            assert r["wrong"] == 0, (s, what)
            assert sum(r["processed_per_member"]) == ENTRIES + r["duplicated"], (s, what)
            assert r["lost"] == 0, (s, what)
            if s == "cometmp":   # the victim dies before processing what it holds
                assert r["duplicated"] == 0, what
    assert doc["summary"]["cometmp"]["lost"] == 0


def test_the_killed_members_unacked_entries_are_redelivered_to_the_survivor(doc):
    for s in _systems():
        (k,) = doc["runs"][f"{s}_kill"]
        assert k["killed"] is True, s
        # the victim is killed inside its handler, holding one delivered batch
        assert 0 < k["unacked_at_kill"] <= bench_groups.BATCH, s
        assert k["redelivered"] == k["unacked_at_kill"] and k["acked_unrecorded"] == 0, s
        assert 0 <= k["kill_to_first_redelivered_s"] <= k["kill_to_all_redelivered_s"], s
    if REDIS:   # Redis cannot see the death: it waits for XAUTOCLAIM's min-idle-time,
        (k,) = doc["runs"]["redis_kill"]   # counted from the victim's last delivery
        idle = k["kill_to_first_redelivered_s"] + k["last_delivery_to_kill_s"]
        assert idle >= bench_groups.MIN_IDLE_MS / 1000 - 0.05


@pytest.mark.skipif(not REDIS, reason="redis-server or the redis package absent: "
                    "apt-get install redis-server; pip install 'cometmp[bench]'")
def test_the_redis_server_ran_as_reported_and_is_gone(doc):
    r = doc["redis"]
    assert doc["redis_skipped"] is None
    assert r["config"]["appendonly"] == "no" and r["xautoclaim_min_idle_ms"] == 1000
    assert not os.path.exists(f"/proc/{r['pid']}")
    ratio = doc["ratios"]["throughput_cometmp_over_redis"]
    assert ratio["rounds"] == [doc["runs"]["cometmp_throughput"][0]["entries_per_s"]
                               / doc["runs"]["redis_throughput"][0]["entries_per_s"]]


def test_no_member_server_or_directory_is_left_behind(doc):
    assert doc["_left_children"] == set()
    assert doc["_dir_left"] == []


@pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="redis package absent")
def test_without_redis_server_on_path_the_redis_side_is_skipped_saying_what_to_install(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # an empty directory
    server, why = bench_groups._redis_server(str(tmp_path))
    assert server is None
    assert "redis-server is not on PATH" in why and "apt-get install redis-server" in why
