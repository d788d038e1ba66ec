"""Application metrics under a real uWSGI (master, 2 processes, app loaded in the master,
``--import cometmp.integrations.uwsgi`` with COMETMP_PROMETHEUS=1): a worker that answered
requests is kill -9'ed, uWSGI respawns it into the same slot (worker_id), and /metrics
through PrometheusCollector counts every answered request exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import pytest

pytest.importorskip("prometheus_client")
import posix_ipc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cometmp import registry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, UWSGI, Server, free_port, get, server_env  # noqa: E402
from conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(UWSGI), reason="uwsgi not installed")

APP = '''
import os
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client import generate_latest
from cometmp.metrics import PrometheusCollector

HITS = Counter("uw_hits", "Requests answered.")      # in the master: --import enabled it
UP = Gauge("uw_up", "1 in every live worker.", multiprocess_mode="liveall")
registry = CollectorRegistry()
registry.register(PrometheusCollector(os.environ["COMETMP_DIR"]))

def app(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(registry)]
    if environ["PATH_INFO"] == "/hit":
        UP.set(1)
        HITS.inc()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % os.getpid()]
'''


def test_uwsgi_workers_share_app_metrics_through_a_kill9_and_respawn(tmp_path):
    root = str(tmp_path / "data")
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    argv = [UWSGI, "--master", "--processes", "2", "--http-socket", f"127.0.0.1:{port}",
            "--wsgi-file", "app.py", "--callable", "app", "--import", "cometmp.integrations.uwsgi",
            "--enable-threads", "--die-on-term", "--virtualenv", os.path.join(REPO, ".venv"),
            "--reload-mercy", "3", "--worker-reload-mercy", "3"]
    srv = Server(argv, server_env(root, COMETMP_PROMETHEUS="1"), str(tmp_path), port,
                 str(tmp_path / "uwsgi.log"))
    answered = 0
    by_pid: dict[int, int] = {}

    def hit(n: int) -> bool:
        nonlocal answered
        for _ in range(n):
            status, body = get(port, "/hit", timeout=30)
            assert status == 200
            answered += 1
            by_pid[int(body)] = by_pid.get(int(body), 0) + 1
        return True

    try:
        srv.wait_ready(workers=2)
        wait_until(lambda: hit(10) and len(by_pid) >= 2, 120, "both workers answering",
                   interval=0)
        before = set(srv.workers())
        victim = next(pid for pid in by_pid if pid in before)
        os.kill(victim, signal.SIGKILL)          # between requests: all it answered counted
        now = wait_until(lambda: (lambda w: len(w) == 2 and victim not in w and w)(
            set(srv.workers())), 60, "uWSGI respawning the killed worker")
        respawned = now - before
        wait_until(lambda: hit(5) and respawned & set(by_pid), 120, "the respawned worker "
                   "answering", interval=0)
        status, body = get(port, "/metrics", timeout=30)
        assert status == 200
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
        assert got[("uw_hits_total", ())] == answered
        ups = {dict(lb)["pid"] for (name, lb), v in got.items() if name == "uw_up" and v == 1}
        assert ups == {"0", "1"}, "slots, not pids: the respawned worker took slot 0 or 1"
        assert os.listdir(os.path.join(root, "metrics")) == ["app"]
    finally:
        srv.stop()
        with contextlib.suppress(Exception):   # a worker stopped mid-postfork skips atexit
            posix_ipc.unlink_shared_memory(registry.shm_name(root))
