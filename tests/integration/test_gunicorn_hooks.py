"""The gunicorn hook functions called directly (no server): a failing hook is logged and
never raises into gunicorn, and a worker whose registration failed runs standalone."""

from __future__ import annotations

import logging
import os
import signal

import cometmp
from cometmp import registry
from cometmp.integrations import gunicorn as hooks


class FakeLog:
    def __init__(self):
        self.errors: list[str] = []

    def error(self, msg, *args):
        self.errors.append(msg % args if args else msg)


class FakeCfg:
    workers = 2
    uid = os.geteuid()
    gid = os.getegid()


class FakeServer:
    def __init__(self):
        self.cfg = FakeCfg()
        self.log = FakeLog()
        self.num_workers = 2


class FakeWorker:
    def __init__(self, pid: int):
        self.pid = pid


def test_a_failing_hook_is_logged_and_never_raises(tmp_path, monkeypatch):
    server = FakeServer()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("COMETMP_DIR", str(not_a_dir / "log"))  # cannot be created
    assert hooks.nworkers_changed(server, 2, None) is None
    assert hooks.on_starting(server) is None
    assert hooks.post_fork(server, FakeWorker(os.getpid())) is None
    assert hooks.child_exit(server, FakeWorker(12345)) is None
    assert hooks.on_exit(server) is None
    assert server.log.errors and all("cometmp: gunicorn hook" in e for e in server.log.errors)
    assert cometmp.worker_id() is None  # degraded to standalone


def test_without_a_data_directory_workers_run_standalone(monkeypatch, caplog):
    monkeypatch.delenv("COMETMP_DIR", raising=False)
    server = FakeServer()
    with caplog.at_level(logging.WARNING, logger="cometmp"):
        hooks.on_starting(server)
    assert "COMETMP_DIR" in caplog.text
    hooks.post_fork(server, FakeWorker(os.getpid()))
    assert cometmp.worker_id() is None


def test_the_hooks_drive_a_whole_lifecycle_in_the_right_processes(tmp_path, monkeypatch):
    d = str(tmp_path / "log")
    monkeypatch.setenv("COMETMP_DIR", d)
    server = FakeServer()
    hooks.nworkers_changed(server, 2, None)  # master, at startup (before on_starting)
    hooks.on_starting(server)
    sup = hooks._supervisor
    assert sup is not None and sup.registry.process_count == 2
    pids = []
    for _ in range(2):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker: post_fork, then wait to be killed
            try:
                os.close(r)
                hooks.post_fork(server, FakeWorker(os.getpid()))
                os.write(w, str(cometmp.worker_id()).encode())
                signal.pause()
            finally:
                os._exit(0)
        os.close(w)
        assert int(os.read(r, 10)) in (0, 1)
        os.close(r)
        pids.append(pid)
    hooks.nworkers_changed(server, 3, 2)  # TTIN
    assert sup.registry.process_count == 3
    os.kill(pids[0], signal.SIGKILL)
    os.waitpid(pids[0], 0)
    hooks.child_exit(server, FakeWorker(pids[0]))  # master, after waitpid
    snap = sup.snapshot()
    assert sum(1 for e in snap.entries if e.state == registry.LIVE) == 1
    os.kill(pids[1], signal.SIGKILL)
    os.waitpid(pids[1], 0)
    hooks.child_exit(server, FakeWorker(pids[1]))
    name = "/dev/shm/" + registry.shm_name(d).lstrip("/")
    assert os.path.exists(name)
    hooks.on_exit(server)
    assert not os.path.exists(name)
    assert server.log.errors == []
