"""A real gunicorn on 127.0.0.1 with the cometmp hooks, under load and abuse.

Workers are kill -9'ed repeatedly, the count changes with TTIN/TTOU and the server
reloads with HUP while a load generator appends unique ids (some keyed). Afterwards
every id answered 200 is in the log exactly once, ``cometmp status --json`` shows every
shard owned by exactly one live worker, and the registry is gone after shutdown.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

import cometmp
from cometmp import registry
from harness import (
    children_of,
    GUNICORN,
    REPO,
    Load,
    Server,
    assert_exactly_once,
    free_port,
    get,
    kill_random_worker,
    server_env,
    shm_exists,
    status,
    wait_owned,
)

pytestmark = pytest.mark.skipif(not os.path.exists(GUNICORN), reason="gunicorn not installed")

APP_DIR = os.path.join(REPO, "integrations", "gunicorn")


def start_gunicorn(tmp_path, workers: int, *extra: str, conf: str = "gunicorn.conf.py") -> Server:
    data_dir = str(tmp_path / "data")
    port = free_port()
    argv = [GUNICORN, "-c", conf, "-w", str(workers), "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "3", *extra, "app:app"]
    srv = Server(argv, server_env(data_dir), APP_DIR, port, str(tmp_path / "gunicorn.log"))
    srv.data_dir = data_dir
    srv.wait_ready(workers=workers)
    return srv


def chaos(srv: Server, rng: random.Random, seconds: float, plan: dict[float, int]) -> int:
    """kill -9 a random worker every ~0.5 s; send the planned signals at their times."""
    t0 = time.monotonic()
    kills = 0
    pending = sorted(plan.items())
    while time.monotonic() - t0 < seconds:
        now = time.monotonic() - t0
        while pending and pending[0][0] <= now:
            srv.send(pending.pop(0)[1])
        if kill_random_worker(srv, rng) is not None:
            kills += 1
        time.sleep(rng.uniform(0.3, 0.7))
    for _t, sig in pending:  # the loop may end before the last planned signal
        srv.send(sig)
    return kills


@pytest.mark.parametrize("worker_class,preload", [("sync", False), ("gthread", True)])
def test_every_answered_request_is_logged_once_through_kills_ttin_ttou_hup(
        tmp_path, worker_class, preload):
    rng = random.Random(1234)
    extra = ["-k", worker_class] + (["--threads", "4"] if worker_class == "gthread" else [])
    if preload:
        extra.append("--preload")
    srv = start_gunicorn(tmp_path, 3, *extra)
    try:
        load = Load(srv.port, threads=4).start()
        kills = chaos(srv, rng, 9.0 if not preload else 6.0, {
            1.5: signal.SIGTTIN, 3.0: signal.SIGTTOU, 4.0: signal.SIGHUP, 5.5: signal.SIGTTIN,
        })
        load.stop()
        print(f"kills={kills} sent={load.sent} ok={len(load.ok)} failed={load.failed}")
        assert kills >= 5
        assert len(load.ok) > 200, (load.sent, load.failed, srv.log())
        doc = wait_owned(srv.data_dir, srv)
        assert doc["process_count"] == 4
        assert sorted(s["process_id"] for s in doc["slots"] if s["alive"]) == [0, 1, 2, 3]
        counts = assert_exactly_once(srv.data_dir, load.ok)
        assert len(counts) >= len(load.ok)
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    assert not shm_exists(srv.data_dir), "the last master must unlink the registry"


def test_a_killed_worker_shows_dead_at_once_and_its_slot_goes_to_the_replacement(tmp_path):
    srv = start_gunicorn(tmp_path, 2)
    try:
        get(srv.port, "/append?id=x")
        before = wait_owned(srv.data_dir, srv)
        victim = next(s for s in before["slots"] if s["process_id"] == 1)
        os.kill(victim["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        while True:  # status shows the death within 1 s, and the replacement takes slot 1
            doc = status(srv.data_dir)
            slot1 = next(s for s in doc["slots"] if s["process_id"] == 1)
            if slot1["pid"] != victim["pid"] and slot1["alive"]:
                break
            assert time.monotonic() - t0 < 30, doc   # a respawn is a process start: loaded bound
            time.sleep(0.05)
        slot0 = next(s for s in doc["slots"] if s["process_id"] == 0)
        assert slot0["pid"] == next(s for s in before["slots"] if s["process_id"] == 0)["pid"]
        assert slot1["shards"] == victim["shards"]  # the others' ownership did not move
    finally:
        srv.stop()
    assert not shm_exists(srv.data_dir)


def test_a_registry_removed_from_dev_shm_while_serving_is_recreated_rejoined_and_unlinked_at_exit(
        tmp_path):
    """The workers recreate and rejoin it; the master re-attaches at its next hook (here
    the child_exit of a killed worker), so a TTIN and the shutdown still act on it."""
    srv = start_gunicorn(tmp_path, 2)
    try:
        assert get(srv.port, "/append?id=before")[0] == 200
        wait_owned(srv.data_dir, srv, timeout=15)
        shm = "/dev/shm/" + registry.shm_name(srv.data_dir).lstrip("/")
        inode = os.stat(shm).st_ino
        os.unlink(shm)
        t0 = time.monotonic()
        wait_owned(srv.data_dir, srv, timeout=15)
        print(f"owned again {time.monotonic() - t0:.2f} s after the removal")
        assert os.stat(shm).st_ino != inode
        os.kill(srv.workers()[0], signal.SIGKILL)   # child_exit: the master re-attaches
        srv.send(signal.SIGTTIN)
        deadline = time.monotonic() + 20
        while True:
            doc = status(srv.data_dir)
            if doc["process_count"] == 3 and any(m["alive"] for m in doc["masters"]) and \
                    len([s for s in doc["slots"] if s["alive"]]) == 3:
                break
            assert time.monotonic() < deadline, (doc, srv.log())
            time.sleep(0.1)
        wait_owned(srv.data_dir, srv, timeout=15)
        assert get(srv.port, "/append?id=after")[0] == 200
    finally:
        srv.stop()
    assert not shm_exists(srv.data_dir)


def test_a_stale_registry_from_a_killed_master_is_rebuilt(tmp_path):
    srv = start_gunicorn(tmp_path, 2)
    data_dir = srv.data_dir
    srv.stop(signal.SIGKILL)  # master and workers die without any hook
    assert shm_exists(data_dir)
    srv2 = start_gunicorn(tmp_path, 2)
    try:
        assert srv2.data_dir == data_dir
        get(srv2.port, "/append?id=y")
        doc = wait_owned(data_dir, srv2)
        assert len([m for m in doc["masters"] if m["alive"]]) == 1
    finally:
        srv2.stop()
    assert not shm_exists(data_dir)


def _children(pid: int) -> list[int]:
    return children_of(pid)


def test_usr2_second_master_shares_the_registry_and_takes_over(tmp_path):
    """USR2 starts a second master beside the first; its workers wait for slots. When the
    old master goes, they take over every shard, and the last master unlinks."""
    srv = start_gunicorn(tmp_path, 2)
    new_master = None
    try:
        load = Load(srv.port, threads=2).start()
        srv.send(signal.SIGUSR2)
        deadline = time.monotonic() + 15
        while new_master is None or len(_children(new_master)) < 2:
            assert time.monotonic() < deadline, srv.log()
            new_master = next((p for p in _children(srv.pid) if _children(p)), None)
            time.sleep(0.1)
        while True:  # the new master registered, its workers joined and wait for slots
            doc = status(srv.data_dir)
            masters = [m for m in doc["masters"] if m["alive"]]
            waiting = [s for s in doc["slots"] if s["process_id"] is None and s["alive"]]
            if len(masters) == 2 and \
                    sorted(s["pid"] for s in waiting) == sorted(_children(new_master)):
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.1)
        srv.send(signal.SIGTERM)  # the old master and its workers go
        srv.proc.wait(15)
        new_workers = _children(new_master)

        class NewServer:
            def workers(self):
                return _children(new_master)

            def log(self):
                return srv.log()
        doc = wait_owned(srv.data_dir, NewServer())
        assert sorted(s["pid"] for s in doc["slots"] if s["alive"]) == sorted(new_workers)
        load.stop()
        assert_exactly_once(srv.data_dir, load.ok)
        os.kill(new_master, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{new_master}") and time.monotonic() < deadline:
            with open(f"/proc/{new_master}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
    finally:
        if new_master is not None:
            try:
                os.kill(new_master, signal.SIGKILL)
            except ProcessLookupError:
                pass
        srv.stop()
    assert not shm_exists(srv.data_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_workers_that_drop_privileges_with_user_group_can_join(tmp_path):
    """The master (root) creates the registry for the workers' uid/gid (--user/--group)."""
    import pwd
    import shutil
    import tempfile

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    top = tempfile.mkdtemp(prefix="cometmp-gunicorn-user-")  # tmp_path is root-only
    os.chmod(top, 0o755)
    # the workers import the app after dropping privileges: give them a copy they can
    # read wherever this checkout lives (a CI clone may sit under a 0700 directory)
    app_dir = os.path.join(top, "app")
    os.mkdir(app_dir, 0o755)
    for fn in ("app.py", "gunicorn.conf.py"):
        shutil.copy(os.path.join(APP_DIR, fn), app_dir)
        os.chmod(os.path.join(app_dir, fn), 0o644)
    data_dir = os.path.join(top, "data")
    port = free_port()
    argv = [GUNICORN, "-c", "gunicorn.conf.py", "-w", "2", "-b", f"127.0.0.1:{port}",
            "--user", "nobody", "--group", "nogroup", "app:app"]
    srv = Server(argv, server_env(data_dir), app_dir, port, str(tmp_path / "gunicorn.log"))
    srv.data_dir = data_dir
    try:
        srv.wait_ready(workers=2)
        assert get(port, "/append?id=u1")[0] == 200
        doc = wait_owned(data_dir, srv)
        assert sorted(s["process_id"] for s in doc["slots"] if s["alive"]) == [0, 1]
        shm = "/dev/shm/" + __import__("cometmp").registry.shm_name(data_dir).lstrip("/")
        assert os.stat(shm).st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        srv.stop()
        shutil.rmtree(top, ignore_errors=True)
    assert not os.path.exists(shm)  # the last master unlinked it, whatever its owner


_PRELOAD_APP = '''
import os
import cometmp

client = cometmp.Client(os.environ["COMETMP_DIR"])   # opened in the master: --preload
log = client.log("requests", shards=4)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/whoami":
        status, body = "200 OK", str(os.getpid()).encode()
    else:
        try:
            mid = log.append(b"x")
            status, body = "200 OK", f"{mid.shard} {mid.entry}".encode()
        except cometmp.CometError as e:   # an application error, reported as such
            status, body = "500 Internal Server Error", f"{type(e).__name__}: {e}".encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
@pytest.mark.parametrize("data_dir_owner", ["root", "nobody"])
def test_a_client_opened_before_fork_reopens_in_a_worker_of_another_user_or_fails_clearly(
        tmp_path, data_dir_owner):
    """gunicorn --preload --user nobody: the Client is opened at import, in the root master.
    A worker reopens every writer as nobody; where it cannot (the data directory is
    root's, 0700) every append raises an error naming the path and the permission, at
    once - never a garbage error or a hang (the old client closed before reopening)."""
    import pwd
    import shutil
    import tempfile

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    top = tempfile.mkdtemp(prefix="cometmp-gunicorn-preload-")
    os.chmod(top, 0o755)
    app_dir = os.path.join(top, "app")
    os.mkdir(app_dir, 0o755)
    with open(os.path.join(app_dir, "app.py"), "w") as f:
        f.write(_PRELOAD_APP)
    os.chmod(os.path.join(app_dir, "app.py"), 0o644)
    data_dir = os.path.join(top, "data")
    os.mkdir(data_dir, 0o700)
    if data_dir_owner == "nobody":   # the directory and its streams are the workers' user's
        os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        pid = os.fork()   # (this checkout may not be readable by nobody: no exec)
        if pid == 0:
            code = 1
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with cometmp.Client(data_dir) as c:
                    c.log("requests", shards=4)
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
    port = free_port()
    argv = [GUNICORN, "-w", "2", "-b", f"127.0.0.1:{port}", "--preload", "--timeout", "30",
            "--user", "nobody", "--group", str(nobody.pw_gid), "app:app"]
    srv = Server(argv, server_env(data_dir), app_dir, port, str(tmp_path / "gunicorn.log"))
    try:
        srv.wait_ready(workers=2)
        answers = []
        for _ in range(20):   # none may hang (10 s each) or drop the connection
            try:
                answers.append(get(port, "/append", timeout=10.0))
            except OSError as e:
                answers.append((None, repr(e).encode()))
        if data_dir_owner == "nobody":
            assert [s for s, _b in answers] == [200] * 20, (answers, srv.log())
            with cometmp.Client(data_dir, readonly=True) as ro:
                assert sum(ro.length(s) for s in ro.streams("requests:*")) == 20
        else:
            for s, body in answers:
                assert s == 500, (s, body, srv.log(0))
                text = body.decode()
                assert text.startswith("StorageError") and data_dir in text and \
                    "ermission denied" in text, text
    finally:
        srv.stop()
        shutil.rmtree(top, ignore_errors=True)
