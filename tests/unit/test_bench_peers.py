"""cometmp bench runs Redis Streams and LMDB in the same rounds as cometmp and reports
their ratios from the figures it measured; a missing package or redis-server skips its
peer with a note saying what to install. Speed is never asserted (the machine is shared)."""

import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import time

import pytest

from cometmp.tools import bench, bench_peers

ALL_PEERS = set(bench_peers.FLOORS + bench_peers.SINGLE + bench_peers.BATCHED)
REDIS_PEERS = {k for k in ALL_PEERS if k.startswith("redis")}
LMDB_PEERS = ALL_PEERS - REDIS_PEERS


def _expected_peers():
    """The peers whose package (and server) is installed here."""
    out = set()
    if importlib.util.find_spec("lmdb"):
        out |= LMDB_PEERS
    if importlib.util.find_spec("redis") and shutil.which("redis-server"):
        out |= REDIS_PEERS
    return out


def _run(capsys, tmp_path, *argv):
    rc = bench.main(["--quick", "--json", "--entries", "2000", "--sampled", "2000",
                     "--no-durable", "--dir", str(tmp_path), *argv])
    cap = capsys.readouterr()
    return rc, json.loads(cap.out), cap.err  # stdout holds exactly one JSON document


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_every_installed_peer_runs_in_each_round_and_its_ratio_is_computed_from_those_rounds(
        capsys, tmp_path):
    rc, doc, _ = _run(capsys, tmp_path, "--rounds", "2")
    assert rc == 0
    peers = doc["results"]["peers"]
    assert set(peers) == _expected_peers()
    assert set(doc["peers_skipped"]) == ALL_PEERS - _expected_peers()
    a, b = doc["results"]["append"], doc["results"]["append_many"]
    for k, x in peers.items():
        assert len(x["rounds"]) == 2, k
        if k not in bench_peers.BATCHED:
            for r in x["rounds"]:
                if k in bench_peers.SINGLE:  # warm-up + grouped + sampled calls all wrote
                    assert r["entries_written"] == 200 + r["calls"] + r["sampled_calls"], k
                assert _positive(r["mean_ns"]) and _positive(r["p99_sampled_ns"]), k
            per_round = [p["mean_ns"] / c["mean_ns"] for p, c in zip(x["rounds"], a["rounds"])]
        else:
            for r in x["rounds"]:
                assert r["entries_written"] == (2 + r["batches"]) * 1000, k
                assert _positive(r["entries_per_s"]) and _positive(r["p99_batch_us"]), k
            per_round = [c["entries_per_s"] / p["entries_per_s"]
                         for p, c in zip(x["rounds"], b["rounds"])]
        assert doc["ratios"][f"vs_{k}"] == pytest.approx(statistics.median(per_round)), k
    assert doc["comet_reference"]["file"] == "shared/reference/comet-measured.md"
    assert list(tmp_path.iterdir()) == []  # databases, AOF files and server dirs removed


def test_peer_figures_follow_the_clock_they_were_timed_with(capsys, tmp_path, monkeypatch):
    """Every perf_counter_ns read advances exactly 1 us: a call timed in a group of 100 then
    costs 10 ns and a batch of 1,000 entries 1 ns per entry, for cometmp and every peer
    alike, so each ratio is exactly 1. A figure taken from anywhere but the timer fails."""
    ticks = iter(range(0, 1 << 62, 1000))
    monkeypatch.setattr(time, "perf_counter_ns", lambda: next(ticks))
    rc, doc, _ = _run(capsys, tmp_path)
    assert rc == 0
    assert doc["results"]["append"]["mean_ns"] == 10.0
    for k, x in doc["results"]["peers"].items():
        if k not in bench_peers.BATCHED:
            assert x["mean_ns"] == 10.0, k
        else:
            assert x["ns_per_entry"] == 1.0, k
        assert doc["ratios"][f"vs_{k}"] == 1.0, k


@pytest.mark.skipif(not _expected_peers() & REDIS_PEERS, reason="redis / redis-server absent")
def test_the_redis_servers_run_with_the_reported_persistence_and_are_gone_after_the_run(
        capsys, tmp_path):
    rc, doc, _ = _run(capsys, tmp_path)
    assert rc == 0
    servers = doc["peers"]["redis"]
    assert servers["redis_xadd"]["config"]["appendonly"] == "no"
    assert servers["redis_xadd_aof"]["config"] == {"appendonly": "yes",
                                                   "appendfsync": "everysec"}
    for s in servers.values():
        assert not os.path.exists(f"/proc/{s['pid']}"), s  # stopped and reaped


def test_missing_peer_packages_skip_their_rows_and_say_what_to_install(
        capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # "import redis" raises ImportError
    monkeypatch.setitem(sys.modules, "lmdb", None)
    rc, doc, err = _run(capsys, tmp_path)
    assert rc == 0
    assert doc["results"]["peers"] == {}
    assert set(doc["peers_skipped"]) == ALL_PEERS
    assert not [k for k in doc["ratios"] if k.removeprefix("vs_") in ALL_PEERS]
    for k in ALL_PEERS:
        assert "pip install 'cometmp[bench]'" in doc["peers_skipped"][k]
        assert k in err
    assert "skipping" in err and "pip install 'cometmp[bench]'" in err
    # the text report still prints the table, without the missing rows
    assert bench.main(["--quick", "--entries", "1000", "--sampled", "1000", "--no-durable",
                       "--dir", str(tmp_path)]) == 0
    rows = [ln.strip() for ln in capsys.readouterr().out.splitlines()
            if ln.strip().startswith("| ")]
    assert any(r.startswith("| cometmp `append` |") for r in rows)
    assert not [r for r in rows if r.startswith(("| Redis", "| LMDB"))]


@pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="redis package absent")
def test_redis_server_missing_from_path_skips_only_the_redis_rows(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    work = tmp_path / "work"
    work.mkdir()
    rc, doc, err = _run(capsys, work)
    assert rc == 0
    assert set(doc["peers_skipped"]) == REDIS_PEERS
    assert "redis-server is not on PATH" in err and "apt-get install redis-server" in err
    assert set(doc["results"]["peers"]) == _expected_peers() - REDIS_PEERS


@pytest.mark.skipif(not _expected_peers() & REDIS_PEERS, reason="redis / redis-server absent")
def test_a_port_another_redis_server_holds_is_never_taken_for_the_benchmarks_own(
        tmp_path, monkeypatch):
    binary = shutil.which("redis-server")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    other = bench_peers.RedisServer(binary, str(tmp_path / "a"), ("--appendonly", "no"))
    try:
        ports = iter([other.port])  # the first "free" port is already served by `other`
        real = bench_peers._free_port
        monkeypatch.setattr(bench_peers, "_free_port", lambda: next(ports, None) or real())
        mine = bench_peers.RedisServer(binary, str(tmp_path / "b"), ("--appendonly", "yes"))
        try:
            assert mine.port != other.port
            assert mine.client.info("server")["process_id"] == mine.pid
            assert mine.config["appendonly"] == "yes"
        finally:
            mine.stop()
    finally:
        other.stop()
    assert other.proc.returncode is not None and mine.proc.returncode is not None
