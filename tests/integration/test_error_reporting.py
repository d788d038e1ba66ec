"""An append that fails inside a request reaches the server as an application error
(issue 9 item 14), on a real full tmpfs under real gunicorn and real uWSGI.

gunicorn's sync worker treats an OSError from the app as a broken client socket: it logs
"Socket error processing request" and closes the connection with no response. Since no
cometmp error is an OSError, gunicorn answers 500 and logs the DiskFull. uWSGI reports every
application exception the same way whatever its type: the traceback and "HTTP/1.1 500" in
its log, and (without --catch-exceptions) no bytes to the client. So the test asserts, for
both servers, that the DiskFull request is handled exactly like a RuntimeError from the
app (``/raise``), that the server logged the DiskFull with its path, and that the worker
serves on; for gunicorn also that the client got the 500.
"""

from __future__ import annotations

import http.client
import os
import time

import pytest
from harness import GUNICORN, UWSGI, REPO, Server, free_port, get, server_env

from conftest import use_up_blocks, wait_until

APPS = os.path.join(REPO, "tests", "integration", "apps")
VENV = os.path.join(REPO, ".venv")


def start(server: str, tmp_path, data_dir: str) -> Server:
    port = free_port()
    if server == "gunicorn":
        if not os.path.exists(GUNICORN):
            pytest.skip("gunicorn not installed")
        argv = [GUNICORN, "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}", "append_app:app"]
    else:
        if not os.path.exists(UWSGI):
            pytest.skip("uwsgi not installed")
        argv = [UWSGI, "--master", "--processes", "1", "--http-socket", f"127.0.0.1:{port}",
                "--wsgi-file", "append_app.py", "--callable", "app", "--virtualenv", VENV,
                "--die-on-term"]
    srv = Server(argv, server_env(data_dir), APPS, port, str(tmp_path / f"{server}.log"))
    srv.wait_ready(workers=1)
    return srv


def outcome(port: int, path: str) -> tuple[str, int | None]:
    """("status", code) for a response, ("dropped", None) for a connection closed unanswered."""
    try:
        return "status", get(port, path, timeout=10.0)[0]
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return "dropped", None


def wait_for_log(srv: Server, text: str, timeout: float = 15.0, count: int = 1) -> str:
    try:
        return wait_until(lambda: (log := srv.log(tail=0)).count(text) >= count and log, timeout,
                          f"{text!r} in the server log", interval=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{srv.log()}") from None


@pytest.mark.parametrize("server", ["gunicorn", "uwsgi"])
def test_disk_full_in_a_request_is_a_logged_500_not_a_dropped_connection(tmp_path, tmpfs,
                                                                         server):
    mnt = tmpfs("size=4m")
    data_dir = os.path.join(mnt, "data")
    srv = start(server, tmp_path, data_dir)
    try:
        assert get(srv.port, "/append?size=1000")[0] == 200
        baseline = outcome(srv.port, "/raise")          # any application error
        wait_for_log(srv, "RuntimeError")
        use_up_blocks(mnt)
        results = []
        for _ in range(40):   # the segment's reserved blocks run out within 40 x 64 KiB
            results.append(outcome(srv.port, "/append?size=65536"))
            if results[-1] != ("status", 200):
                break
        assert results[-1] == baseline, (server, results, baseline, srv.log())
        if server == "gunicorn":
            assert results[-1] == ("status", 500), (results, srv.log())
        log = wait_for_log(srv, "DiskFull")
        assert "No space left on device" in log and data_dir in log
        assert "Socket error" not in log
        if server == "uwsgi":
            wait_for_log(srv, "(HTTP/1.1 500)", count=2)   # /raise and the full append
        assert get(srv.port, "/whoami")[0] == 200       # the worker survived and serves
    finally:
        srv.stop()
