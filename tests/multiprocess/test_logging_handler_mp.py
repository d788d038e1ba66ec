"""CometHandler in several processes at once: every record present exactly once, in
per-process order, whether each process opened its own handler or inherited one across
fork(), and with segments rotating underneath the writers."""

from __future__ import annotations

import logging
import multiprocessing as mp

import cometmp
from cometmp.logging import CometHandler

from conftest import small_config

PROCS = 4
RECORDS = 3000


def _check(root: str, procs: int, records: int, stream: str = "logs") -> None:
    per_proc: dict[int, list[int]] = {}
    with cometmp.Client(root, readonly=True) as c:
        for m in c.scan(stream):
            p, i = _parse(m.data)
            per_proc.setdefault(p, []).append(i)
        stats = c.stats()["streams"][stream]
    # every record once, in each process's order
    assert sorted(per_proc) == list(range(procs))
    for p, seq in per_proc.items():
        assert seq == list(range(records)), f"process {p}: records missing, duplicated or reordered"
    assert stats["length"] == procs * records
    assert stats["counters"]["rotations"] >= 1  # writers crossed segment rotations


def _parse(data: bytes) -> tuple[int, int]:
    # "proc <p> rec <i> <padding>"
    parts = data.decode("utf-8").split(" ")
    return int(parts[1]), int(parts[3])


def _worker(root: str, p: int, barrier, own_handler: bool, handler=None) -> None:
    if own_handler:
        handler = CometHandler(root, config=small_config())
    lg = logging.getLogger(f"mp.{p}")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.INFO)
    pad = "x" * 300  # 1 MiB segments fill after ~3,000 records: rotations happen mid-run
    barrier.wait()
    for i in range(RECORDS):
        lg.info("proc %d rec %d %s", p, i, pad)
    handler.close()


def _run(root: str, own_handler: bool) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    inherited = None if own_handler else CometHandler(root, config=small_config())
    procs = [ctx.Process(target=_worker, args=(root, p, barrier, own_handler, inherited))
             for p in range(PROCS)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    if inherited is not None:
        inherited.close()
    _check(root, PROCS, RECORDS)


def test_processes_logging_at_once_keep_every_record_once_in_order(data_dir):
    _run(data_dir, own_handler=True)


def test_handler_inherited_across_fork_by_every_worker(data_dir):
    # a gunicorn master that configured logging before forking its workers
    _run(data_dir, own_handler=False)
