"""Workers started with multiprocessing's *spawn* method (fresh interpreters, not forks of a
process that created the registry, as uvicorn starts them) join through
cometmp.integrations.uvicorn: distinct ids, a replacement takes a kill -9'ed worker's id,
a normal exit leaves (the last one removes the registry), and outside a uvicorn worker
the import does nothing. uvicorn itself: tests/integration/test_asgi_servers.py."""

from __future__ import annotations

import multiprocessing
import os
import signal

from cometmp import registry
from conftest import wait_until

import spawned_worker

ctx = multiprocessing.get_context("spawn")


def _shm(directory: str) -> str:
    return "/dev/shm/" + registry.shm_name(directory).lstrip("/")


def _spawn(directory: str, workers: int | None):
    """A child with its own pipe: a kill -9'ed child must not hold a lock others need
    (a shared multiprocessing Queue or Event would: their locks are not robust)."""
    conn, child_conn = ctx.Pipe()
    p = ctx.Process(target=spawned_worker.run, args=(directory, workers, child_conn))
    p.start()
    p.conn = conn
    return p


def _report(p, timeout: float = 60.0) -> tuple:
    assert p.conn.poll(timeout), f"child {p.pid} did not report in {timeout} s"
    return p.conn.recv()


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.conn.send("stop")
    for p in procs:
        p.join(60)


def test_spawned_workers_get_distinct_ids_a_replacement_takes_the_killed_id_and_the_last_removes_it(
        tmp_path):
    directory = str(tmp_path / "data")
    procs = [_spawn(directory, 2) for _ in range(2)]
    try:
        got = {p.pid: _report(p) for p in procs}
        ids = {pid: r[1] for pid, r in got.items()}
        assert sorted(ids.values()) == [0, 1], got
        assert all(r[1] == r[2] for r in got.values()), "join() returns worker_id()"
        victim = next(p for p in procs if ids[p.pid] == 1)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        replacement = _spawn(directory, 2)
        procs.append(replacement)
        assert _report(replacement)[1] == 1, "the replacement takes the killed worker's id"
        assert os.path.exists(_shm(directory))
    finally:
        _stop(procs)
    assert [p.exitcode for p in procs if p is not victim] == [0, 0]
    # a normal exit ends with sys.exit, so atexit runs leave(); the last one unlinks
    wait_until(lambda: not os.path.exists(_shm(directory)), 30, "the registry's removal")


def test_importing_the_hook_outside_a_uvicorn_worker_joins_nothing(tmp_path):
    directory = str(tmp_path / "data")
    p = _spawn(directory, None)
    try:
        _pid, wid, now, count = _report(p)
    finally:
        _stop([p])
    assert (wid, now, count) == (None, None, None)
    assert p.exitcode == 0
    assert not os.path.exists(os.path.join(directory, "registry.key")), "nothing was created"
