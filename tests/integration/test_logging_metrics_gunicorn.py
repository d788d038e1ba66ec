"""CometHandler and CometCollector inside a real gunicorn (--preload, 3 sync workers):
a handler created in the master before fork logs from every worker; a worker kill -9'ed
mid-load loses no record of a request it answered; /metrics served by any worker reports
the whole directory, in agreement with ``cometmp stats``."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import cometmp
from cometmp.stats import directory_stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import GUNICORN, Load, Server, free_port, get, server_env  # noqa: E402
from conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(GUNICORN), reason="gunicorn not installed")

APP = '''
import itertools, logging, os
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from cometmp.logging import CometHandler
from cometmp.metrics import CometCollector

DIR = os.environ["COMETMP_DIR"]
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(CometHandler(DIR, stream="logs"))   # --preload: opened in the master
registry = CollectorRegistry()
registry.register(CometCollector(DIR))
served = itertools.count()                          # per worker after fork

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/metrics":
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(registry)]
    if path == "/log":
        log.info("req %s pid %d n %d", environ["QUERY_STRING"], os.getpid(), next(served))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % os.getpid()]
'''


def test_handler_and_collector_in_every_gunicorn_worker(tmp_path):
    root = str(tmp_path / "data")
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    srv = Server([GUNICORN, "--preload", "-w", "3", "-k", "sync", "-b", f"127.0.0.1:{port}",
                  "--graceful-timeout", "3", "app:app"], server_env(root), str(tmp_path), port,
                 str(tmp_path / "gunicorn.log"))
    try:
        srv.wait_ready(workers=3)
        load = Load(port, threads=3, tag="t", path="/log?{rid}", count=250).start()
        answered = load.ok
        wait_until(lambda: len(answered) >= 200, 60, "200 answered requests before the kill",
                   interval=0.005)
        victim = srv.workers()[0]
        os.kill(victim, signal.SIGKILL)  # mid-load; gunicorn respawns it
        load.join(60)

        with cometmp.Client(root, readonly=True) as c:
            lines = [m.data.decode() for m in c.scan("logs")]
        seen: dict[str, int] = {}
        per_pid: dict[int, list[int]] = {}
        for line in lines:
            _, rid, _, pid, _, n = line.split()
            seen[rid] = seen.get(rid, 0) + 1
            per_pid.setdefault(int(pid), []).append(int(n))
        assert all(seen.get(rid) == 1 for rid in answered), "an answered request's record is missing"
        assert max(seen.values()) == 1  # and none is duplicated
        assert len(answered) >= 600
        # the master's handler re-attached in every worker, the killed one's replacement too
        assert victim in per_pid and len(per_pid) >= 4
        for pid, ns in per_pid.items():  # each worker's records in its order
            assert ns == list(range(len(ns))), pid

        status, body = get(port, "/metrics")
        assert status == 200
        samples = {(s.name, s.labels.get("stream")): s.value
                   for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
        stats = directory_stats(root)["streams"]["logs"]
        assert samples[("cometmp_appends_total", "logs")] == stats["counters"]["appends"] == len(lines)
        assert samples[("cometmp_stream_length", "logs")] == stats["length"]
    finally:
        srv.stop()
