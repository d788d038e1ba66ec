"""Application metrics under a real gunicorn (--preload, 2 sync workers,
COMETMP_PROMETHEUS=1 through the ready config): a worker that answered requests is
kill -9'ed and respawned into its slot, and /metrics served by any worker through
PrometheusCollector counts every answered request exactly once, shows live gauges of
the live slots only, and the directory holds the one table file."""

from __future__ import annotations

import os
import signal
import sys

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import GUNICORN, Server, free_port, get, server_env  # noqa: E402
from conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(GUNICORN), reason="gunicorn not installed")

APP = '''
import os
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from cometmp.metrics import PrometheusCollector

# --preload: created in the master, after nworkers_changed called enable_prometheus
HITS = Counter("app_hits", "Requests answered.", ["route"])
UP = Gauge("app_up", "1 in every live worker.", multiprocess_mode="liveall")
LATENCY = Histogram("app_work_seconds", "Work.", buckets=(0.5, 2.0))
registry = CollectorRegistry()
registry.register(PrometheusCollector(os.environ["COMETMP_DIR"]))

def app(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(registry)]
    if environ["PATH_INFO"] != "/hit":      # the harness's readiness probes
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % os.getpid()]
    UP.set(1)
    HITS.labels("/hit").inc()
    LATENCY.observe(1.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % os.getpid()]
'''


def scrape(port: int) -> dict:
    status, body = get(port, "/metrics", timeout=30)
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


class Client:
    """Sequential requests (none in flight when a scrape or the kill happens), counted."""

    def __init__(self, port: int):
        self.port = port
        self.answered = 0
        self.by_pid: dict[int, int] = {}

    def hit(self, n: int = 1) -> bool:
        for _ in range(n):
            status, body = get(self.port, "/hit", timeout=30)
            assert status == 200
            self.answered += 1
            self.by_pid[int(body)] = self.by_pid.get(int(body), 0) + 1
        return True


def test_gunicorn_workers_share_app_metrics_through_a_kill9_and_respawn(tmp_path):
    root = str(tmp_path / "data")
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    srv = Server([GUNICORN, "-c", "python:cometmp.integrations.gunicorn_conf", "--preload",
                  "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3",
                  "app:app"], server_env(root, COMETMP_PROMETHEUS="1"), str(tmp_path), port,
                 str(tmp_path / "gunicorn.log"))
    try:
        srv.wait_ready(workers=2)
        c = Client(port)
        # until both workers have answered (the kernel picks who accepts)
        wait_until(lambda: c.hit(10) and len(c.by_pid) >= 2, 120, "both workers answering",
                   interval=0)
        before = set(srv.workers())
        victim = next(pid for pid in c.by_pid if pid in before)
        assert c.by_pid[victim] > 0
        os.kill(victim, signal.SIGKILL)          # between requests: all it answered counted
        now = wait_until(lambda: (lambda w: len(w) == 2 and victim not in w and w)(
            set(srv.workers())), 60, "gunicorn respawning the killed worker")
        respawned = now - before
        assert len(respawned) == 1, (before, now, srv.log())
        # until the replacement has answered too
        wait_until(lambda: c.hit(5) and respawned & set(c.by_pid), 120,
                   "the replacement answering", interval=0)
        got = scrape(port)
        total = got[("app_hits_total", (("route", "/hit"),))]
        # every answered request counted exactly once: the killed worker's increments were
        # kept, its replacement continued its slot's cells without counting them again
        assert total == c.answered
        assert got[("app_work_seconds_count", ())] == c.answered
        assert got[("app_work_seconds_bucket", (("le", "2.0"),))] == c.answered
        ups = {dict(lb)["pid"]: v for (name, lb), v in got.items() if name == "app_up"}
        # liveall: the two worker slots (the master's preload row is unslotted, value 0),
        # never a series per pid: the replacement shows under the killed worker's slot
        assert {p for p, v in ups.items() if v == 1.0} == {"0", "1"}
        assert set(ups) <= {"0", "1", "unslotted"}
        assert os.listdir(os.path.join(root, "metrics")) == ["app"]
    finally:
        srv.stop()
