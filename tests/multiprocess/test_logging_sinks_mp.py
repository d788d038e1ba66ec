"""CometHandler as a loguru sink, and CometLogger under structlog, in several real processes
at once: every record exactly once and in each process's order, whether each process added
its own sink (separate interpreters, as uvicorn --workers starts them: loguru #1111) or a
gunicorn-like parent added it before fork; ``enqueue=True`` under fork; a ``kill -9`` right
after logging loses nothing; JSON records carry each worker's registry slot."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys

import structlog
from loguru import logger

import cometmp
from cometmp import registry
from cometmp.logging import CometHandler, CometLoggerFactory
from cometmp.supervisor import Supervisor

from conftest import child_env, small_config

PROCS = 3
RECORDS = 3000
PAD = "x" * 300  # 1 MiB segments fill after ~3,000 records: rotations happen mid-run

CHILD = r'''
import signal, sys
signal.alarm(120)                         # a child never outlives a stuck test
from loguru import logger
import cometmp
from cometmp.logging import CometHandler

root, p, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
cfg.storage.preallocate_bytes = 256 << 10
logger.remove()
logger.add(CometHandler(root, config=cfg), format="{message}")
print("ready", flush=True)
sys.stdin.readline()                      # the parent's "go": all log at once
pad = "x" * 300
for i in range(n):
    logger.info("proc {} rec {} {}", p, i, pad)
logger.remove()
'''


def _per_process(root: str, stream: str = "logs") -> tuple[dict[int, list[int]], dict]:
    per: dict[int, list[int]] = {}
    with cometmp.Client(root, readonly=True) as c:
        for m in c.scan(stream):
            parts = m.data.decode("utf-8").split(" ")
            assert parts[0] == "proc" and parts[2] == "rec", m.data[:60]
            per.setdefault(int(parts[1]), []).append(int(parts[3]))
        return per, c.stats()["streams"][stream]


def _check_every_record_once_in_order(root: str, procs: int, records: int) -> None:
    per, stats = _per_process(root)
    assert sorted(per) == list(range(procs))
    for p, seq in per.items():
        assert seq == list(range(records)), f"process {p}: records missing, duplicated or reordered"
    assert stats["length"] == procs * records
    assert stats["counters"]["rotations"] >= 1  # the writers crossed segment rotations


def test_loguru_sinks_in_three_interpreters_keep_every_record_once_in_order(data_dir):
    children = [subprocess.Popen([sys.executable, "-c", CHILD, data_dir, str(p), str(RECORDS)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(),
                                 text=True) for p in range(PROCS)]
    try:
        for ch in children:
            assert ch.stdout.readline() == "ready\n"
        for ch in children:
            ch.stdin.write("go\n")
            ch.stdin.flush()
        for ch in children:
            assert ch.wait(timeout=120) == 0
    finally:
        for ch in children:
            if ch.poll() is None:
                ch.kill()
                ch.wait()
    _check_every_record_once_in_order(data_dir, PROCS, RECORDS)


def _loguru_forked_worker(root: str, p: int, barrier, join: bool) -> None:
    signal.alarm(120)  # a child never outlives a stuck test
    if join:
        registry.join(root)
    barrier.wait(60)
    for i in range(RECORDS):
        logger.info("proc {} rec {} {}", p, i, PAD)
    if join:
        registry.leave()


def _fork_workers(target, root: str, *extra) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=target, args=(root, p, barrier, *extra)) for p in range(PROCS)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(180)
        assert pr.exitcode == 0, f"worker exit code {pr.exitcode}"


def test_loguru_sink_added_in_the_parent_before_fork_serves_every_worker(data_dir):
    # a gunicorn --preload master: logging configured once, workers forked after; each
    # worker joins the registry, so its JSON records carry its slot
    sup = Supervisor(data_dir, PROCS).start()
    logger.remove()
    h = CometHandler(data_dir, config=small_config(), format="json")
    logger.add(h, format="{message}")
    try:
        logger.info("master before fork")
        _fork_workers(_loguru_forked_worker, data_dir, True)
    finally:
        logger.remove()
        logger.add(sys.stderr)
        sup.close()
    with cometmp.Client(data_dir, readonly=True) as c:
        recs = [json.loads(m.data) for m in c.scan("logs")]
    assert recs[0]["message"] == "master before fork" and recs[0]["worker"] is None  # no slot
    assert recs[0]["pid"] == os.getpid()
    per_pid: dict[int, list[dict]] = {}
    for r in recs[1:]:
        per_pid.setdefault(r["pid"], []).append(r)
    assert len(per_pid) == PROCS and os.getpid() not in per_pid
    slots = set()
    for pid, rs in per_pid.items():
        p = int(rs[0]["message"].split(" ")[1])
        assert [r["message"] for r in rs] == [f"proc {p} rec {i} {PAD}" for i in range(RECORDS)]
        (slot,) = {r["worker"] for r in rs}  # one slot per worker, on every record
        slots.add(slot)
    assert slots == set(range(PROCS))


def _enqueue_worker(root: str, p: int, barrier) -> None:
    signal.alarm(120)
    barrier.wait(60)
    for i in range(RECORDS):
        logger.info("proc {} rec {} {}", p, i, PAD)
    logger.complete()  # a child's records are in the queue's pipe when this returns


def test_loguru_enqueue_under_fork_passes_every_record_through_the_parents_thread(data_dir):
    # loguru's own answer for processes (#1137/#1111/#284): works under fork, but every
    # record is written by the parent's thread, so pid is the parent's and records wait in
    # a pipe; CometHandler needs none of it (enqueue=False is the advice)
    logger.remove()
    h = CometHandler(data_dir, config=small_config(), format="json")
    logger.add(h, format="{message}", enqueue=True)
    try:
        _fork_workers(_enqueue_worker, data_dir)
        logger.complete()
    finally:
        logger.remove()  # stops loguru's thread after it drained the queue
        logger.add(sys.stderr)
    per: dict[int, list[int]] = {}
    with cometmp.Client(data_dir, readonly=True) as c:
        for m in c.scan("logs"):
            r = json.loads(m.data)
            assert r["pid"] == os.getpid()  # written by the parent, whoever logged it
            parts = r["message"].split(" ")
            per.setdefault(int(parts[1]), []).append(int(parts[3]))
    assert {p: seq == list(range(RECORDS)) for p, seq in per.items()} == {p: True for p in range(PROCS)}


def test_kill9_right_after_loguru_logging_loses_nothing(data_dir):
    code = (
        "import os, signal, sys\n"
        "from loguru import logger\n"
        "from cometmp.logging import CometHandler\n"
        "logger.remove(); logger.add(CometHandler(sys.argv[1]), format='{message}')\n"
        "for i in range(5000): logger.info('rec {}', i)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, data_dir], env=child_env(), timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    with cometmp.Client(data_dir, readonly=True) as c:
        assert [m.data.decode() for m in c.scan("logs")] == [f"rec {i}" for i in range(5000)]


def _structlog_worker(root: str, p: int, barrier) -> None:
    signal.alarm(120)
    log = structlog.get_logger().bind(proc=p)
    barrier.wait(60)
    for i in range(RECORDS):
        log.info("rec", i=i, pad=PAD)


def test_structlog_comet_logger_configured_before_fork_keeps_every_workers_records(data_dir):
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=CometLoggerFactory(data_dir, config=small_config()),
        cache_logger_on_first_use=True)
    try:
        structlog.get_logger().info("master")  # the master opened it: workers inherit it
        _fork_workers(_structlog_worker, data_dir)
    finally:
        structlog.reset_defaults()
    per: dict[int, list[int]] = {}
    with cometmp.Client(data_dir, readonly=True) as c:
        recs = [json.loads(m.data) for m in c.scan("logs")]
        rotations = c.stats()["streams"]["logs"]["counters"]["rotations"]
    assert recs[0] == {"event": "master"}
    for r in recs[1:]:
        per.setdefault(r["proc"], []).append(r["i"])
    assert per == {p: list(range(RECORDS)) for p in range(PROCS)}
    assert rotations >= 1
