"""Real gunicorn with the gthread, gevent and uvicorn_worker.UvicornWorker worker classes,
and real ``uvicorn --workers 2``, serving under load while a worker is ``kill -9``'ed.

Each server runs 2 workers. Every worker is registered (``cometmp status`` shows slots 0
and 1 held by the live workers, and the app's ``cometmp.worker_id()`` agrees with the
table), the survivor keeps its id through the kill, the replacement takes the killed
worker's id and shards, and every request answered 200 — before and after the kill — is
in the log exactly once. The FastAPI app is examples/fastapi_app.py; the WSGI one is
integrations/gunicorn/app.py.
"""

from __future__ import annotations

import os
import random
import signal
import time

import posix_ipc
import pytest

from cometmp import registry

from harness import (
    GUNICORN,
    REPO,
    VENV_BIN,
    Load,
    Server,
    assert_exactly_once,
    free_port,
    get,
    server_env,
    shm_exists,
    status,
    wait_owned,
)

UVICORN = os.path.join(VENV_BIN, "uvicorn")
WSGI_DIR = os.path.join(REPO, "integrations", "gunicorn")
EXAMPLES = os.path.join(REPO, "examples")
APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


needs_asgi = pytest.mark.skipif(
    not (os.path.exists(UVICORN) and _importable("fastapi") and _importable("uvicorn_worker")),
    reason="uvicorn, uvicorn-worker and fastapi are in the test extra")


def start_gunicorn(tmp_path, worker_class: str) -> Server:
    data_dir = str(tmp_path / "data")
    port = free_port()
    asgi = worker_class.startswith("uvicorn_worker")
    extra = ["--threads", "4"] if worker_class == "gthread" else []
    argv = [GUNICORN, "-c", "python:cometmp.integrations.gunicorn_conf", "-k", worker_class,
            "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3", *extra,
            "fastapi_app:app" if asgi else "app:app"]
    srv = Server(argv, server_env(data_dir), EXAMPLES if asgi else WSGI_DIR, port,
                 str(tmp_path / "server.log"))
    srv.data_dir = data_dir
    srv.wait_ready(workers=2)
    return srv


def start_uvicorn(tmp_path, app: str = "fastapi_app:app", cwd: str = EXAMPLES,
                  log: str = "server.log") -> Server:
    data_dir = str(tmp_path / "data")
    port = free_port()
    # uvicorn's health-check bound (5 s) is for a quiet machine: a loaded one can miss it
    # (a HUP restart is then aborted, a live worker killed as hung). A kill that lands
    # while the supervisor waits for the victim's pong delays its restart by this bound.
    argv = [UVICORN, "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--timeout-worker-healthcheck", "20", app]
    srv = Server(argv, server_env(data_dir), cwd, port, str(tmp_path / log))
    srv.data_dir = data_dir
    srv.wait_ready(workers=2)
    return srv


def slots_by_pid(doc: dict) -> dict[int, int]:
    return {s["pid"]: s["process_id"] for s in doc["slots"] if s["alive"]}


def check_app_ids_agree_with_the_table(srv: Server, table: dict[int, int], tries: int = 40):
    """/whoami answers "<pid> <worker_id>": every answer names a registered worker with
    the id the table gives it (which worker answers is the kernel's choice)."""
    seen = {}
    for _ in range(tries):
        pid, wid = get(srv.port, "/whoami")[1].decode().split()
        seen[int(pid)] = wid
    assert seen and all(int(p) in table and wid == str(table[int(p)]) for p, wid in seen.items()), \
        (seen, table, srv.log())


def wait_for(cond, timeout: float, what: str, srv: Server):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s\n{srv.log()}"
        time.sleep(0.1)


def serve_kill_and_check(srv: Server, rng: random.Random, kills: int = 1) -> None:
    """The common scenario: 2 registered workers under load; ``kills`` times, kill -9 one
    of them and wait for its replacement to hold its id; requests keep being logged."""
    doc = wait_owned(srv.data_dir, srv)
    table = slots_by_pid(doc)
    assert sorted(table.values()) == [0, 1] and len(table) == 2, doc
    assert set(table) <= set(srv.workers()), (table, srv.workers())
    check_app_ids_agree_with_the_table(srv, table)

    load = Load(srv.port, threads=4).start()
    try:
        wait_for(lambda: len(load.ok) >= 50, 60, "50 answered requests", srv)
        for _ in range(kills):
            table = kill_one_and_wait_for_its_replacement(srv, rng, table)
            ok = len(load.ok)
            wait_for(lambda: len(load.ok) >= ok + 100, 60, "100 requests after the kill", srv)
    finally:
        load.stop()
    print(f"kills={kills} sent={load.sent} ok={len(load.ok)} failed={load.failed}")
    doc = wait_owned(srv.data_dir, srv)
    check_app_ids_agree_with_the_table(srv, slots_by_pid(doc))
    assert_exactly_once(srv.data_dir, load.ok)


def kill_one_and_wait_for_its_replacement(srv: Server, rng: random.Random,
                                          table: dict[int, int]) -> dict[int, int]:
    victim = rng.choice(sorted(table))
    survivor = next(p for p in table if p != victim)
    print(f"kill -9 worker {victim} (id {table[victim]}); survivor {survivor}")
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()

    def replaced():
        d = status(srv.data_dir)
        t = slots_by_pid(d)
        return d if victim not in t and len(t) == 2 else None
    doc = wait_for(replaced, 90, "the replacement's registration", srv)
    print(f"  replacement holds id {table[victim]} {time.monotonic() - t0:.2f} s after the "
          f"kill (polled through `cometmp status`, a process start per poll)")
    after = slots_by_pid(doc)
    assert after[survivor] == table[survivor], "the survivor's id moved"
    replacement = next(p for p in after if p != survivor)
    assert after[replacement] == table[victim], "the replacement has another id"
    shards = {s["process_id"]: s["shards"] for s in doc["slots"] if s["alive"]}
    assert shards[table[victim]], doc   # it owns the killed worker's shards again
    return after


@pytest.mark.parametrize("worker_class", [
    "gthread",
    pytest.param("gevent", marks=pytest.mark.skipif(not _importable("gevent"),
                                                    reason="gevent is in the test extra")),
    pytest.param("uvicorn_worker.UvicornWorker", marks=needs_asgi),
])
def test_every_gunicorn_worker_class_registers_its_workers_and_reowns_a_killed_workers_slot(
        tmp_path, worker_class):
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    srv = start_gunicorn(tmp_path, worker_class)
    try:
        serve_kill_and_check(srv, random.Random(seed))
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    assert not shm_exists(srv.data_dir), "the master unlinks the registry at exit"


@needs_asgi
def test_uvicorn_workers_get_stable_ids_and_a_restarted_worker_takes_the_killed_ones_slot(
        tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    srv = start_uvicorn(tmp_path)
    try:
        serve_kill_and_check(srv, random.Random(seed))
        assert get(srv.port, "/recent?limit=1")[0] == 200
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    assert not shm_exists(srv.data_dir), "LeaveAtShutdown: the last worker unlinks the registry"


@needs_asgi
def test_a_uvicorn_worker_without_leave_at_shutdown_counts_its_exit_as_a_death_and_the_next_start_rebuilds(
        tmp_path):
    """Any ASGI app (here a bare one without lifespan support) joins with the one line.
    Without the middleware uvicorn's signal re-raise ends the workers with no Python exit
    hook: the registry is left stale, and the next start rebuilds it."""
    srv = start_uvicorn(tmp_path, "plain_asgi_app:app", APPS)
    try:
        table = slots_by_pid(wait_owned(srv.data_dir, srv))
        assert sorted(table.values()) == [0, 1], table
        check_app_ids_agree_with_the_table(srv, table, tries=10)
        assert get(srv.port, "/append?id=first")[0] == 200
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    assert status(srv.data_dir)["stale"], "every worker died without leaving"
    srv2 = start_uvicorn(tmp_path, "plain_asgi_app:app", APPS, log="server2.log")
    try:
        table2 = slots_by_pid(wait_owned(srv2.data_dir, srv2))
        assert sorted(table2.values()) == [0, 1] and not set(table2) & set(table), table2
        assert get(srv2.port, "/append?id=second")[0] == 200
    finally:
        srv2.stop()
    assert_exactly_once(srv.data_dir, {"first", "second"})
    assert status(srv.data_dir)["stale"]
    posix_ipc.unlink_shared_memory(registry.shm_name(srv.data_dir))   # leave nothing behind


@pytest.mark.soak
@pytest.mark.parametrize("server", ["gevent", "uvicorn_worker.UvicornWorker", "uvicorn"])
def test_repeated_kills_keep_ids_dense_and_every_request_logged_once(tmp_path, server):
    if server != "gevent" and not os.path.exists(UVICORN):
        pytest.skip("uvicorn is in the test extra")
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    srv = start_uvicorn(tmp_path) if server == "uvicorn" else start_gunicorn(tmp_path, server)
    try:
        serve_kill_and_check(srv, random.Random(seed), kills=10)
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    assert not shm_exists(srv.data_dir)


@pytest.mark.soak
@needs_asgi
def test_a_uvicorn_hup_restart_hands_each_slot_to_the_new_worker(tmp_path):
    """HUP: uvicorn starts each new worker before stopping its old one; the new one waits
    without a slot and takes the old one's when it leaves (LeaveAtShutdown)."""
    srv = start_uvicorn(tmp_path)
    try:
        before = slots_by_pid(wait_owned(srv.data_dir, srv))
        load = Load(srv.port, threads=2).start()
        try:
            srv.send(signal.SIGHUP)

            def all_new():
                t = slots_by_pid(status(srv.data_dir))
                return t if len(t) == 2 and not set(t) & set(before) else None
            after = wait_for(all_new, 120, "both workers replaced", srv)
            ok = len(load.ok)
            wait_for(lambda: len(load.ok) >= ok + 50, 60, "50 requests after the restart", srv)
        finally:
            load.stop()
        assert sorted(after.values()) == [0, 1], after
        wait_owned(srv.data_dir, srv)
        assert_exactly_once(srv.data_dir, load.ok)
    finally:
        srv.stop()
    assert not shm_exists(srv.data_dir)


@pytest.mark.soak
@needs_asgi
def test_uvicorn_ttou_then_ttin_adopts_the_retired_slot_then_fills_it_again(tmp_path):
    """processCount stays at --workers: after TTOU the retired worker's slot is reclaimed
    and its shards adopted by the survivor; after TTIN the new worker takes that slot."""
    srv = start_uvicorn(tmp_path)
    try:
        before = slots_by_pid(wait_owned(srv.data_dir, srv))
        srv.send(signal.SIGTTOU)
        one = wait_for(lambda: (lambda t: t if len(t) == 1 else None)(
            slots_by_pid(wait_owned(srv.data_dir, srv))), 60, "the TTOU retirement", srv)
        (survivor, sid), = one.items()
        assert before[survivor] == sid, "the survivor's id moved"
        srv.send(signal.SIGTTIN)
        two = wait_for(lambda: (lambda t: t if len(t) == 2 else None)(
            slots_by_pid(status(srv.data_dir))), 90, "the TTIN worker's join", srv)
        assert sorted(two.values()) == [0, 1] and two[survivor] == sid, two
        doc = wait_owned(srv.data_dir, srv)
        assert doc["process_count"] == 2
        assert get(srv.port, "/append?id=after-ttin")[0] == 200
    finally:
        srv.stop()
    assert not shm_exists(srv.data_dir)
