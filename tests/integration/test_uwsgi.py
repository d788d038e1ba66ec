"""A real uWSGI on 127.0.0.1 with ``import = cometmp.integrations.uwsgi``, under abuse.

Workers are kill -9'ed repeatedly, harakiri kills a worker stuck in a request, the
server reloads with HUP, and (one variant) cheaper mode scales workers up and down,
while a load generator appends unique ids. Afterwards every id answered 200 is in the
log exactly once and every shard is owned by exactly one live worker.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from conftest import wait_until
from harness import (
    REPO,
    UWSGI,
    Load,
    Server,
    assert_exactly_once,
    free_port,
    get,
    kill_random_worker,
    server_env,
    shm_exists,
    wait_owned,
)

pytestmark = pytest.mark.skipif(not os.path.exists(UWSGI), reason="uwsgi not installed")

APP_DIR = os.path.join(REPO, "integrations", "uwsgi")
VENV = os.path.join(REPO, ".venv")
#: seconds uWSGI gives a worker to exit (at a HUP and at the stop) before its "NO MERCY"
#: SIGKILL, which skips the worker's atexit and so the registry's unlink: a bound, not
#: a wait (a worker that exits at once costs nothing). With 3 s, one run of three suites
#: and a CPU hog on 2 cores found a registry left after the stop; its log was not kept,
#: and a worker SIGKILLed at the stop is the one way known to leave it, so the bound is
#: generous and assert_registry_unlinked names such a kill.
MERCY = "15"


def start_uwsgi(tmp_path, *extra: str, processes: int = 4) -> Server:
    data_dir = str(tmp_path / "data")
    port = free_port()
    argv = [UWSGI, "--ini", "uwsgi.ini", "--http-socket", f"127.0.0.1:{port}",
            "--processes", str(processes), "--virtualenv", VENV, "--harakiri", "2",
            "--reload-mercy", MERCY, "--worker-reload-mercy", MERCY, *extra]
    srv = Server(argv, server_env(data_dir), APP_DIR, port, str(tmp_path / "uwsgi.log"))
    srv.data_dir = data_dir
    srv.wait_ready(workers=1)
    return srv


def wait_workers_ready(srv: Server, timeout: float = 30.0) -> None:
    """Every current worker has answered a request, so it runs its request loop.

    uWSGI 2.0 runs the *master's* SIGINT handler in a worker that is still starting (in
    its postfork hooks, or loading the app with lazy-apps): a stop at that moment leaves
    the worker to the "NO MERCY" SIGKILL, and its atexit, which unlinks the registry,
    never runs. So the tests stop the server only once each worker has served a
    ``/whoami`` (which answers with the worker's pid); workers take requests in turn."""
    deadline = time.monotonic() + timeout
    served: set[int] = set()
    while True:
        pending = [p for p in srv.workers() if p not in served]
        if not pending:
            return
        assert time.monotonic() < deadline, f"workers {pending} never served:\n{srv.log()}"
        try:
            status, body = get(srv.port, "/whoami", timeout=2.0)
        except OSError:
            continue
        if status == 200:
            served.add(int(body.split()[0]))


def assert_registry_unlinked(srv: Server) -> None:
    """After a clean stop the last worker to leave has unlinked the registry; a worker
    that uWSGI SIGKILLed at the stop is named (its atexit never ran)."""
    log = srv.log(tail=0)
    killed = [line for line in log.splitlines() if "NO MERCY" in line]
    assert not shm_exists(srv.data_dir), (
        "the last worker to leave must unlink the registry; "
        + (f"uWSGI SIGKILLed workers at the stop: {killed}" if killed else
           f"no worker was SIGKILLed; the log's end:\n{log[-4000:]}"))


def stuck_request(port: int) -> None:
    """A request that outlives harakiri: the master SIGKILLs that worker."""
    try:
        get(port, "/sleep?s=5", timeout=8)
    except Exception:
        pass


@pytest.mark.parametrize("variant", ["default", "lazy-apps", "cheaper"])
def test_every_answered_request_is_logged_once_through_kills_harakiri_hup(tmp_path, variant):
    extra = {"default": [], "lazy-apps": ["--lazy-apps"],
             "cheaper": ["--cheaper", "1", "--cheaper-initial", "2", "--cheaper-overload", "1",
                         "--cheaper-step", "1"]}[variant]
    rng = random.Random(99)
    srv = start_uwsgi(tmp_path, *extra)
    try:
        load = Load(srv.port, threads=4).start()
        # phase 1: a request stuck past harakiri (no kill -9 yet, so the stuck worker
        # dies by harakiri and not by our hand)
        stuck = threading.Thread(target=stuck_request, args=(srv.port,), daemon=True)
        stuck.start()
        wait_until(lambda: "HARAKIRI ON WORKER" in srv.log(tail=0), 30,
                   "harakiri to kill the worker stuck in a request", interval=0.1)
        # phase 2: kill -9 storm and a graceful reload
        t0 = time.monotonic()
        kills, hup = 0, False
        while time.monotonic() - t0 < 7.0:
            now = time.monotonic() - t0
            if now > 3.5 and not hup:
                srv.send(signal.SIGHUP)
                hup = True
            if kill_random_worker(srv, rng) is not None:
                kills += 1
            time.sleep(rng.uniform(0.4, 0.8))
        load.stop()
        print(f"{variant}: kills={kills} sent={load.sent} ok={len(load.ok)} failed={load.failed}")
        assert kills >= 5
        assert len(load.ok) > 200, (load.sent, load.failed, srv.log())
        doc = wait_owned(srv.data_dir, srv, timeout=10)
        assert doc["process_count"] == 4  # uwsgi.numproc, whatever cheaper does
        wait_workers_ready(srv)   # before the stop: see wait_workers_ready
        assert_exactly_once(srv.data_dir, load.ok)
    finally:
        srv.stop()
    assert "HARAKIRI ON WORKER" in srv.log(tail=0)
    assert_registry_unlinked(srv)


def test_a_respawned_worker_returns_to_its_own_slot(tmp_path):
    srv = start_uwsgi(tmp_path, processes=3)
    try:
        get(srv.port, "/append?id=x")
        before = wait_owned(srv.data_dir, srv)
        victim = next(s for s in before["slots"] if s["process_id"] == 2)
        # the master is stopped while its worker dies, so the dead slot is observable for
        # as long as this test looks (not only until uWSGI respawns, which can be ~1 ms)
        srv.send(signal.SIGSTOP)
        try:
            os.kill(victim["pid"], signal.SIGKILL)
            t0 = time.monotonic()
            while True:
                slot = _slot(srv.data_dir, 2)
                if slot["pid"] == victim["pid"] and not slot["alive"]:
                    break
                assert time.monotonic() - t0 < 1.0, slot   # a kill -9 is seen within 1 s
                time.sleep(0.005)
        finally:
            srv.send(signal.SIGCONT)
        slot = wait_until(lambda: (s := _slot(srv.data_dir, 2))["pid"] != victim["pid"]
                          and s["alive"] and s, 30, "a respawned worker in slot 2")
        assert slot["shards"] == victim["shards"]
        wait_workers_ready(srv)
    finally:
        srv.stop()
    assert_registry_unlinked(srv)


def _slot(data_dir: str, process_id: int) -> dict:
    """Slot ``process_id`` of the registry, read in this process (no subprocess per poll)."""
    from cometmp.tools.status import registry_status

    doc = registry_status(data_dir)
    return next(s for s in doc["slots"] if s["process_id"] == process_id)


@pytest.mark.parametrize("variant", [pytest.param("default", marks=pytest.mark.soak), "lazy-apps"])
def test_a_registry_removed_from_dev_shm_while_serving_is_recreated_and_rejoined(
        tmp_path, variant):
    """Someone removes /dev/shm/cometmp-* under a running uWSGI (an admin, systemd-tmpfiles,
    a test's cleanup): the workers recreate it and take their slots again within about a
    member period, so status shows a server and every shard owned (it used to show no
    server, and replacements stayed slotless: 'every shard with 0 owners')."""
    srv = start_uwsgi(tmp_path, *(["--lazy-apps"] if variant == "lazy-apps" else []),
                      processes=3)
    try:
        assert get(srv.port, "/append?id=before")[0] == 200
        wait_owned(srv.data_dir, srv, timeout=15)
        shm = "/dev/shm/" + __import__("cometmp").registry.shm_name(srv.data_dir).lstrip("/")
        inode = os.stat(shm).st_ino
        os.unlink(shm)
        t0 = time.monotonic()
        doc = wait_owned(srv.data_dir, srv, timeout=15)
        print(f"{variant}: owned again {time.monotonic() - t0:.2f} s after the removal")
        assert os.stat(shm).st_ino != inode and doc["process_count"] == 3
        # every worker takes its slot again (every shard's owner can be settled while
        # another worker is still rejoining: wait for that slot, not for ownership)
        victim = wait_until(lambda: (s := _slot(srv.data_dir, 1))["alive"]
                            and s["pid"] in srv.workers() and s, 15,
                            "worker 1 back in its slot of the new registry")
        # a worker started after the removal joins the new registry as well
        os.kill(victim["pid"], signal.SIGKILL)
        wait_owned(srv.data_dir, srv, timeout=15)
        assert get(srv.port, "/append?id=after")[0] == 200
        wait_workers_ready(srv)
    finally:
        srv.stop()
    assert_registry_unlinked(srv)
