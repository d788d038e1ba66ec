"""cometmp.otel: the span and log exporters, their entry format, and their selection by the
SDK's entry points (OTEL_TRACES_EXPORTER=cometmp through opentelemetry-instrument)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult  # noqa: E402

import cometmp  # noqa: E402
from cometmp import otlp_entry  # noqa: E402
from cometmp.errors import ConfigError, FormatError  # noqa: E402
from cometmp.otel import LogExporter, SpanExporter  # noqa: E402
from conftest import child_env, wait_until  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
VENV_BIN = os.path.join(os.path.dirname(os.path.dirname(DATA)), ".venv", "bin")


def _entries(root: str, pattern: str) -> list[bytes]:
    with cometmp.Client(root) as c:
        return [bytes(m.data) for s in c.streams(pattern) for m in c.scan(s)]


def _span_names(entries: list[bytes]) -> list[str]:
    names = []
    for e in entries:
        sig, body = otlp_entry.decode(e)
        assert sig == otlp_entry.TRACES
        req = ExportTraceServiceRequest.FromString(bytes(body))
        names += [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return names


def test_each_ended_span_is_one_otlp_entry_in_the_log_when_end_returns_and_no_thread_starts(
        data_dir):
    before = {t.ident for t in threading.enumerate()}
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SpanExporter(data_dir, shards=4)))
    tracer = provider.get_tracer("t")
    for i in range(5):
        with tracer.start_as_current_span(f"op-{i}"):
            pass
        assert len(_entries(data_dir, "otel:spans:*")) == i + 1   # before anything flushes
    # no thread holds spans: the only new one is the Client's retention housekeeping
    assert {t.name for t in threading.enumerate() if t.ident not in before} <= {"cometmp-retention"}
    assert sorted(_span_names(_entries(data_dir, "otel:spans:*"))) == [f"op-{i}" for i in range(5)]
    with cometmp.Client(data_dir) as c:
        assert c.family_shards(otlp_entry.SPANS_FAMILY) == 4
    provider.shutdown()


def test_an_exporter_inside_the_sdks_batch_processor_warns_once_that_its_queue_is_lossy(
        data_dir, caplog):
    """OTEL_TRACES_EXPORTER=cometmp without the configurator gets the SDK's batch processor
    (a thread and an in-memory queue): the spans still arrive, but the user is told once."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(SpanExporter(data_dir, shards=1),
                                                   schedule_delay_millis=20))
    tracer = provider.get_tracer("t")
    with caplog.at_level(logging.WARNING, logger="cometmp"):
        for i in range(3):
            with tracer.start_as_current_span(f"op-{i}"):
                pass
            # the processor's own thread exports (force_flush would export in this one)
            wait_until(lambda: len(_entries(data_dir, "otel:spans:*")) > i, 30,
                       f"the batch processor's thread to export span {i}")
    provider.shutdown()
    warned = [r for r in caplog.records if "batch processor" in r.getMessage()]
    assert len(warned) == 1 and "OTEL_PYTHON_CONFIGURATOR=cometmp" in warned[0].getMessage()
    assert sorted(_span_names(_entries(data_dir, "otel:spans:*"))) == [f"op-{i}" for i in range(3)]


def test_log_records_are_appended_as_otlp_log_entries(data_dir):
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(LogExporter(data_dir)))
    logger = logging.getLogger("cometmp.tests.otel")
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        logger.warning("disk is %s", "fine")
    finally:
        logger.removeHandler(handler)
    [entry] = _entries(data_dir, "otel:logs:*")
    sig, body = otlp_entry.decode(entry)
    assert sig == otlp_entry.LOGS
    req = ExportLogsServiceRequest.FromString(bytes(body))
    [rec] = [r for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert rec.body.string_value == "disk is fine"
    provider.shutdown()


def test_an_append_failure_returns_failure_logs_once_and_never_raises(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    exp = SpanExporter(str(not_a_dir))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracer = provider.get_tracer("t")
    with caplog.at_level(logging.ERROR, logger="cometmp"):
        for _ in range(3):
            with tracer.start_as_current_span("lost"):
                pass                              # the application never sees an error
        assert exp.export([]) is SpanExportResult.FAILURE
    errors = [r for r in caplog.records if "cannot append" in r.getMessage()]
    assert len(errors) == 1 and str(not_a_dir) in errors[0].getMessage()


def test_after_shutdown_export_fails_and_force_flush_has_nothing_to_wait_for(data_dir):
    exp = SpanExporter(data_dir)
    assert exp.force_flush(0) is True
    exp.shutdown()
    assert exp.export([]) is SpanExportResult.FAILURE


def test_the_directory_comes_from_cometmp_dir_or_the_error_names_it(data_dir, monkeypatch):
    monkeypatch.delenv("COMETMP_DIR", raising=False)
    with pytest.raises(ConfigError, match="COMETMP_DIR"):
        SpanExporter()
    monkeypatch.setenv("COMETMP_DIR", data_dir)
    assert SpanExporter().path == os.path.abspath(data_dir)
    assert LogExporter().path == os.path.abspath(data_dir)


def test_an_exporter_made_before_fork_appends_from_the_child(data_dir):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SpanExporter(data_dir)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent-before"):
        pass
    pid = os.fork()
    if pid == 0:  # the child: as a gunicorn worker after --preload
        code = 1
        try:
            with tracer.start_as_current_span("child"):
                pass
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with tracer.start_as_current_span("parent-after"):
        pass
    assert sorted(_span_names(_entries(data_dir, "otel:*"))) == \
        ["child", "parent-after", "parent-before"]


def test_the_entry_header_is_checked_and_names_what_is_wrong():
    e = otlp_entry.encode(otlp_entry.TRACES, b"\x0a\x00")
    assert e[:6] == b"CmOT\x01\x01"
    assert bytes(otlp_entry.decode(e)[1]) == b"\x0a\x00"
    for bad, what in [(b"CmO", "shorter"), (b"XXXX\x01\x01", "magic"),
                      (b"CmOT\x02\x01", "version 2"), (b"CmOT\x01\x09", "signal 9")]:
        with pytest.raises(FormatError, match=what):
            otlp_entry.decode(bad)


def test_golden_otlp_entry_v1_reads():
    """tests/data/otlp_entry_v1.bin: one span entry written by version 1 (FORMAT.md §11, OTLP entries)."""
    with open(os.path.join(DATA, "otlp_entry_v1.bin"), "rb") as f:
        raw = f.read()
    sig, body = otlp_entry.decode(raw)
    assert sig == otlp_entry.TRACES
    req = ExportTraceServiceRequest.FromString(bytes(body))
    [span] = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert span.name == "golden"
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id.hex() == "b7ad6b7169203331"


def test_opentelemetry_instrument_selects_cometmp_exporters_in_simple_processors(data_dir):
    """OTEL_TRACES_EXPORTER/OTEL_LOGS_EXPORTER=cometmp through the SDK's entry points, with
    OTEL_PYTHON_CONFIGURATOR=cometmp: a real opentelemetry-instrument start-up."""
    instrument = os.path.join(VENV_BIN, "opentelemetry-instrument")
    if not os.path.exists(instrument):
        pytest.skip("opentelemetry-instrument not installed")
    code = """
import logging, threading
from opentelemetry import trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from cometmp.otel import SpanExporter, LogExporter
tp = trace.get_tracer_provider()
procs = tp._active_span_processor._span_processors
assert [type(p) for p in procs] == [SimpleSpanProcessor], procs
assert isinstance(procs[0].span_exporter, SpanExporter)
lp = get_logger_provider()
lprocs = lp._multi_log_record_processor._log_record_processors
assert [type(p) for p in lprocs] == [SimpleLogRecordProcessor], lprocs
assert isinstance(lprocs[0]._exporter, LogExporter)
assert not [t for t in threading.enumerate() if t.name.startswith("OtelBatch")]
with trace.get_tracer("x").start_as_current_span("auto"):
    pass
print("ok")
"""
    env = child_env()
    env.update(OTEL_TRACES_EXPORTER="cometmp", OTEL_LOGS_EXPORTER="cometmp",
               OTEL_METRICS_EXPORTER="none", OTEL_PYTHON_CONFIGURATOR="cometmp",
               COMETMP_DIR=data_dir)
    r = subprocess.run([instrument, sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert _span_names(_entries(data_dir, "otel:spans:*")) == ["auto"]
