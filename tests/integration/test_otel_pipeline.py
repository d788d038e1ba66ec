"""The durable OpenTelemetry pipeline end to end (issue 12 item 2): a real gunicorn whose
requests end spans through ``OTEL_TRACES_EXPORTER=cometmp`` (opentelemetry-instrument and
the SDK's auto-configuration), ``cometmp forward --otlp`` as a real process, and a real
OTLP/HTTP collector on 127.0.0.1 that decodes every request with opentelemetry-proto.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.proto")

import cometmp  # noqa: E402
from conftest import child_env, wait_until  # noqa: E402
from harness import (  # noqa: E402
    GUNICORN,
    REPO,
    UWSGI,
    VENV_BIN,
    Server,
    free_port,
    get,
    server_env,
)
from otlp_collector import Collector  # noqa: E402

from cometmp import deadletter, otlp_entry  # noqa: E402

INSTRUMENT = os.path.join(VENV_BIN, "opentelemetry-instrument")
APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")

pytestmark = pytest.mark.skipif(not (os.path.exists(GUNICORN) and os.path.exists(INSTRUMENT)),
                                reason="gunicorn / opentelemetry-instrument not installed")


class OtlpForwarderProcess:
    """``python -m cometmp forward DIR --otlp URL --json`` as a child process."""

    def __init__(self, root: str, url: str, log_path: str, *extra: str, failpoint: str = ""):
        self.argv = [sys.executable, "-m", "cometmp", "forward", root, "--otlp", url, "--json",
                     *extra]
        self.env = child_env()
        if failpoint:
            self.env["COMETMP_FAILPOINT"] = failpoint
        self.out = open(log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.out)

    def sigterm(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out
        return json.loads(out)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.out.close()


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in reversed(started):
        if isinstance(p, Collector):
            p.stop()
        elif isinstance(p, Server):
            p.stop()
        else:
            p.cleanup()


def _collector(procs) -> Collector:
    c = Collector(free_port()).start()
    procs.append(c)
    return c


def _group_lag(root: str, group: str = "forward:otlp") -> int | None:
    """Entries of the forwarder's group not acked yet (None: no such group yet)."""
    with cometmp.Client(root, readonly=True) as c:
        for g in c.consumer_groups():
            if g["name"] == group:
                return sum(st["lag"] for st in g["streams"].values())
    return None


def _forwarder(procs, root, col, tmp_path, *extra, failpoint="") -> OtlpForwarderProcess:
    f = OtlpForwarderProcess(root, col.url, str(tmp_path / "forwarder.log"), *extra,
                             failpoint=failpoint)
    procs.append(f)
    return f


def _spans_in_process(data_dir: str, n: int, prefix: str = "span") -> list[tuple[str, str]]:
    """End ``n`` spans through SimpleSpanProcessor(SpanExporter): n entries, one span each."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from cometmp.otel import SpanExporter

    provider = TracerProvider()
    exporter = SpanExporter(data_dir, shards=2)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    ids = []
    for i in range(n):
        with tracer.start_as_current_span(f"{prefix}-{i}") as s:
            ctx = s.get_span_context()
        ids.append((format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")))
    provider.shutdown()
    return ids


def test_every_span_of_every_answered_request_arrives_through_worker_kill9s_and_an_outage(
        tmp_path, procs):
    col = _collector(procs)
    data_dir = str(tmp_path / "data")
    cometmp.Client(data_dir).close()
    port = free_port()
    env = server_env(data_dir, OTEL_TRACES_EXPORTER="cometmp", OTEL_METRICS_EXPORTER="none",
                     OTEL_LOGS_EXPORTER="none", OTEL_PYTHON_CONFIGURATOR="cometmp",
                     OTEL_SERVICE_NAME="cometmp-otel-test")
    srv = Server([INSTRUMENT, GUNICORN, "-w", "3", "-b", f"127.0.0.1:{port}",
                  "--graceful-timeout", "3", "otel_app:app"], env, APPS, port,
                 str(tmp_path / "gunicorn.log"))
    procs.append(srv)
    srv.wait_ready(workers=3)
    fw = _forwarder(procs, data_dir, col, tmp_path)

    answered: dict[str, int] = {}     # trace id -> spans the request ended
    killed: set[str] = set()
    lock = threading.Lock()
    outage = threading.Event()
    during_outage = [0]

    def load(tag: int, count: int) -> None:
        for i in range(count):
            try:
                status, body = get(port, "/work?spans=3", timeout=10)
            except (OSError, http.client.HTTPException):
                continue          # not answered (its worker was killed meanwhile, perhaps
                #                   after the status line: IncompleteRead)
            if status != 200:
                continue
            pid, trace_id, n = body.decode().split()
            with lock:
                answered[trace_id] = int(n)
                if outage.is_set():
                    during_outage[0] += 1
            if i % 15 == 7:       # kill -9 the worker right after it answered
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    with lock:
                        killed.add(trace_id)
                except ProcessLookupError:
                    pass

    threads = [threading.Thread(target=load, args=(t, 150)) for t in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answered) >= 60, 120, "60 answered requests")
    col.stop()                    # the collector goes away ...
    outage.set()
    wait_until(lambda: during_outage[0] >= 40, 120, "40 requests answered during the outage")
    # the forwarder has tried and failed at least once (its WARNING on stderr) before the
    # collector comes back: otherwise a slow machine can ride out the outage unseen
    wait_until(lambda: b"retrying in" in open(tmp_path / "forwarder.log", "rb").read(), 120,
               "the forwarder to see the outage and schedule a retry")
    outage.clear()
    col.start()                   # ... and comes back on the same port
    for t in threads:
        t.join(300)
    assert len(killed) >= 5, f"only {len(killed)} workers were killed after answering"

    expected = {(tid, name) for tid, n in answered.items()
                for name in ["handle"] + [f"step-{i}" for i in range(n - 1)]}

    def arrived():
        got = {(tid, name) for tid, _sid, name in col.spans()}
        return expected <= got or None

    wait_until(arrived, 180, f"all {len(expected)} spans of {len(answered)} answered requests")
    killed_spans = {(tid, name) for tid, name in expected if tid in killed}
    assert killed_spans <= {(tid, name) for tid, _s, name in col.spans()}
    stats = fw.sigterm()
    assert stats["retries"] >= 1, stats          # the outage was seen and ridden out
    assert stats["dead_lettered"] == 0, stats
    largest = max(len(items) for _p, items in col.requests)
    assert col.duplicates() <= largest, "more than one request was delivered twice"


def test_forwarder_kill9_after_a_2xx_resends_at_most_that_one_request(tmp_path, procs):
    col = _collector(procs)
    data_dir = str(tmp_path / "data")
    ids = _spans_in_process(data_dir, 100)
    fw = _forwarder(procs, data_dir, col, tmp_path, "--batch-size", "10",
                    failpoint="forward.before_offset_ack:3")
    fw.proc.wait(120)
    assert fw.proc.returncode == -signal.SIGKILL   # died after the 3rd 2xx, before its ack
    assert len(col.requests) == 3
    third = Counter(col.requests[2][1])
    fw2 = _forwarder(procs, data_dir, col, tmp_path, "--batch-size", "10")
    want = set(ids)
    wait_until(lambda: want <= {(t, s) for t, s, _n in col.spans()}, 120, "all 100 spans")
    # the last request's 2xx reaches the forwarder after the collector counted its spans:
    # stop it only once its group has acked everything, so its stats are final
    wait_until(lambda: _group_lag(data_dir) == 0, 120, "the forwarder to ack every entry")
    stats = fw2.sigterm()
    got = Counter(col.spans())
    twice = Counter({k: v - 1 for k, v in got.items() if v > 1})
    assert twice == third, "only the request in flight at the kill may be sent again"
    assert Counter(col.requests[3][1]) == third     # and it is the first one sent after
    assert stats["forwarded"] == 100 - 30 + 10
    with cometmp.Client(data_dir) as c:
        from cometmp.consumer import Consumer

        with Consumer(c, group="forward:otlp") as cons:
            assert sum(cons.lag("otel:*").values()) == 0


def test_retryable_answers_are_retried_and_a_refused_request_is_dead_lettered(tmp_path, procs):
    """503 with Retry-After and 429 are retried; a 400 dead-letters that request's entries
    and acks them; an entry that is not an OTLP entry is dead-lettered without being sent."""
    from cometmp.otlp_forwarder import OtlpForwarder

    col = _collector(procs)
    data_dir = str(tmp_path / "data")
    first = _spans_in_process(data_dir, 10, "first")
    with cometmp.Client(data_dir) as c:
        c.append("otel:spans:shard:0000", b"not an OTLP entry")
    rest = _spans_in_process(data_dir, 10, "rest")
    col.script = [(503, "1"), (429, None), (400, None)]
    fw = OtlpForwarder(data_dir, col.url, batch_size=100, backoff_initial=0.1)
    t = threading.Thread(target=fw.run_forever)
    t.start()
    try:
        wait_until(lambda: fw.stats.forwarded + fw.stats.dead_lettered >= 21 or None, 60,
                   "every entry forwarded or dead-lettered")
    finally:
        fw.stop()
        t.join(30)
    assert col.answers[:3] == [503, 429, 400]
    assert fw.stats.retries == 2
    arrived = {(tid, sid) for tid, sid, _n in col.spans()}
    with cometmp.Client(data_dir) as c:
        dead = [deadletter.decode(m.data) for m in c.scan(deadletter.stream_for("forward:otlp"))]
        from cometmp.consumer import Consumer

        with Consumer(c, group="forward:otlp") as cons:
            assert sum(cons.lag("otel:*").values()) == 0     # everything acked
    bad = [body for env, body in dead if body == b"not an OTLP entry"]
    assert len(bad) == 1 and "not an OTLP entry" in [e for e, b in dead if b == bad[0]][0]["error"]
    refused = [body for env, body in dead if "HTTP 400" in env["error"]]
    assert fw.stats.dead_lettered == 1 + len(refused)
    # the refused request held entries of one read batch; the rest arrived exactly once
    refused_ids = set()
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    for body in refused:
        _sig, pb = otlp_entry.decode(body)
        req = ExportTraceServiceRequest.FromString(bytes(pb))
        refused_ids |= {(s.trace_id.hex(), s.span_id.hex()) for rs in req.resource_spans
                        for ss in rs.scope_spans for s in ss.spans}
    assert refused_ids | arrived == set(first) | set(rest)
    assert not refused_ids & arrived
    assert col.duplicates() == 0


@pytest.mark.skipif(not os.path.exists(UWSGI), reason="uwsgi not installed")
def test_uwsgi_without_lazy_apps_exports_from_workers_through_the_masters_exporter(
        tmp_path, procs):
    """The SDK and the exporter are made (and used once) in the uWSGI master at import; the
    forked workers' spans, including those of workers kill -9ed right after answering,
    all arrive."""
    col = _collector(procs)
    data_dir = str(tmp_path / "data")
    port = free_port()
    srv = Server([UWSGI, "--master", "--processes", "2", "--http-socket", f"127.0.0.1:{port}",
                  "--virtualenv", os.path.join(REPO, ".venv"), "--pythonpath", APPS,
                  "--module", "otel_code_app:app", "--die-on-term", "--enable-threads",
                  "--worker-reload-mercy", "3", "--reload-mercy", "3"],
                 server_env(data_dir), APPS, port, str(tmp_path / "uwsgi.log"))
    procs.append(srv)
    srv.wait_ready(workers=2)
    fw = _forwarder(procs, data_dir, col, tmp_path)
    answered, killed = {}, set()
    for i in range(40):
        try:
            status, body = get(port, "/work?spans=2", timeout=10)
        except (OSError, http.client.HTTPException):   # its worker was killed meanwhile
            continue
        if status != 200:
            continue
        pid, trace_id, n = body.decode().split()
        answered[trace_id] = int(n)
        if i % 8 == 3:
            os.kill(int(pid), signal.SIGKILL)
            killed.add(trace_id)
    assert len(answered) >= 30 and len(killed) >= 3
    expected = {(t, name) for t in answered for name in ("handle", "step-0")}
    wait_until(lambda: expected <= {(t, n) for t, _s, n in col.spans()} or None, 120,
               f"all {len(expected)} spans of {len(answered)} answered requests")
    assert [n for _t, _s, n in col.spans()].count("master-import") == 1
    assert fw.sigterm()["dead_lettered"] == 0
