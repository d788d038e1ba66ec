"""cometmp.otel: OpenTelemetry span and log exporters that append to cometmp, synchronously.

Who may call: the OpenTelemetry SDK (its processors call ``export``); applications create
the exporters (in code, or through the SDK's entry points). Needs ``cometmp[otel]``.

The SDK's usual pipeline batches spans in an in-memory queue drained by a background
thread: it breaks under fork, and what is queued when a worker dies is lost. These
exporters are meant for the SDK's *simple* processors, which call ``export`` in the
thread that ended the span; each call appends one OTLP entry (cometmp.otlp_entry: the
serialized ``ExportTraceServiceRequest``/``ExportLogsServiceRequest`` behind a 6-byte
header) to the family ``otel:spans`` / ``otel:logs``, and returns once it is in the page
cache (I56). No thread, no queue: a worker ``kill -9``ed right after answering has lost
nothing. ``cometmp forward DIR --otlp URL`` ships the entries (cometmp.otlp_forwarder)::

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from cometmp.otel import SpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SpanExporter("/var/lib/myapp/log")))

Or the OpenTelemetry way: ``OTEL_TRACES_EXPORTER=cometmp OTEL_LOGS_EXPORTER=cometmp
COMETMP_DIR=/var/lib/myapp/log OTEL_PYTHON_CONFIGURATOR=cometmp opentelemetry-instrument
gunicorn ...``: the entry points select these classes, and :class:`Configurator` (the SDK's
own, told to wrap cometmp's exporters in the simple processors rather than the batch
ones; every other exporter keeps its batch processor) sets the SDK up.

Fork-safe (I10): an exporter made in a gunicorn master with ``--preload`` (or uWSGI
without lazy-apps) opens its Client at the first export, in the worker; one opened before
fork re-attaches in the child (cometmp.Client is fork-aware). An append that fails (a full
disk, a damaged directory) makes ``export`` return FAILURE and is logged once per
exporter (then every 1000th failure): it never raises into the application.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Sequence

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export import SpanExporter as _SdkSpanExporter

from . import otlp_entry
from .errors import ConfigError

try:  # SDK >= 1.39 names them LogRecord*; the old names stay as aliases there
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
    from opentelemetry.sdk._logs.export import LogRecordExporter as _SdkLogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult as _LogResult
except ImportError:  # pragma: no cover - older SDKs
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
    from opentelemetry.sdk._logs.export import LogExporter as _SdkLogExporter
    from opentelemetry.sdk._logs.export import LogExportResult as _LogResult

__all__ = ["DEFAULT_SHARDS", "DIR_ENV", "Configurator", "LogExporter", "SpanExporter"]

log = logging.getLogger("cometmp")
#: the name prefix of the SDK's batch processors' worker threads (OtelBatchSpanRecordProcessor,
#: OtelBatchLogRecordProcessor in opentelemetry-sdk 1.45)
_SDK_BATCH_THREAD = "OtelBatch"

#: the environment variable naming the data directory when the SDK creates the exporter
DIR_ENV = "COMETMP_DIR"
#: shards of a family this creates (an existing family keeps its count)
DEFAULT_SHARDS = 8


class _Appender:
    """The append side shared by both exporters: one OTLP entry per export call.

    Thread safe; fork-aware through cometmp.Client (the lock is re-made in a child).
    """

    def __init__(self, signal: int, family: str, directory, shards: int | None, client, config):
        if directory is None and client is None:
            directory = os.environ.get(DIR_ENV) or None
            if directory is None:
                raise ConfigError(f"cometmp.otel needs a data directory: pass one, or set "
                                  f"{DIR_ENV} (OTEL_*_EXPORTER=cometmp reads it)")
        if shards is not None and not (isinstance(shards, int) and shards >= 1):
            raise ValueError(f"shards must be a positive int, not {shards!r}")
        self.signal = signal
        self.family = family
        self.path = os.path.abspath(os.fspath(directory)) if directory is not None else client.path
        self.shards = shards
        self.config = config
        self._client = client
        self._own_client = client is None
        self._log = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._failures = 0
        self._closed = False
        self._warned_batch = False

    def append(self, body: bytes) -> bool:
        """Append one entry; False (logged once, then every 1000th) if it failed."""
        if self._closed:
            return False
        if not self._warned_batch and threading.current_thread().name.startswith(_SDK_BATCH_THREAD):
            # the SDK's batch processor calls us from its thread: what waits in its queue
            # dies with the process, the loss this exporter exists to prevent. Said once,
            # loudly, because the SDK's auto-configuration does this unless told otherwise.
            self._warned_batch = True
            log.warning("cometmp.otel: the %s exporter runs inside the OpenTelemetry SDK's "
                        "batch processor (thread %s): what waits in its in-memory queue is lost "
                        "when the worker dies. Set OTEL_PYTHON_CONFIGURATOR=cometmp with "
                        "opentelemetry-instrument, or wrap the exporter in a Simple*Processor",
                        self.family, threading.current_thread().name)
        try:
            lg = self._log if self._pid == os.getpid() else None
            if lg is None:
                lg = self._open()
            lg.append(otlp_entry.encode(self.signal, body))   # I56: in the log on return
            return True
        except Exception as e:  # noqa: BLE001 - never into the application (module doc)
            self._failures += 1
            if self._failures == 1 or self._failures % 1000 == 0:
                log.error("cometmp.otel: cannot append to %s in %s (%d failures so far; the "
                          "SDK is told FAILURE): %s: %s", self.family, self.path,
                          self._failures, type(e).__name__, e)
            return False

    def _open(self):
        if self._pid != os.getpid():      # forked: a new lock (the parent's may be held)
            self._lock = threading.Lock()
            self._pid = os.getpid()
        with self._lock:
            if self._log is None:
                if self._client is None:
                    from .client import Client

                    self._client = Client(self.path, config=self.config)
                shards = self.shards or self._client.family_shards(self.family) or DEFAULT_SHARDS
                self._log = self._client.log(self.family, shards)
            return self._log

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._log = None
            client, self._client = self._client, None
        if client is not None and self._own_client:
            client.close()


class SpanExporter(_SdkSpanExporter):
    """Append each export call's spans as one OTLP entry to the family ``otel:spans`` of
    the data directory ``directory`` (default: ``$COMETMP_DIR``).

    Use with ``SimpleSpanProcessor`` (module docstring). ``client``: an open Client to
    write through (not closed by ``shutdown``). ``shards``: of the family, if it is new.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, shards: int | None = None,
                 family: str = otlp_entry.SPANS_FAMILY, client=None, config=None):
        self._appender = _Appender(otlp_entry.TRACES, family, directory, shards, client, config)

    @property
    def path(self) -> str:
        return self._appender.path

    def export(self, spans: Sequence) -> SpanExportResult:
        """Called by the span processor; returns when the spans are in the log."""
        try:
            body = encode_spans(spans).SerializeToString()
        except Exception as e:  # noqa: BLE001 - a span the encoder rejects
            log.error("cometmp.otel: cannot encode %d spans: %s: %s", len(spans), type(e).__name__, e)
            return SpanExportResult.FAILURE
        ok = self._appender.append(body)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered: True at once."""
        return True

    def shutdown(self) -> None:
        """Close our client; later exports return FAILURE (the SDK's contract)."""
        self._appender.close()


class LogExporter(_SdkLogExporter):
    """Append each export call's log records as one OTLP entry to the family ``otel:logs``
    of ``directory`` (default ``$COMETMP_DIR``). Use with ``SimpleLogRecordProcessor``;
    arguments as :class:`SpanExporter`."""

    def __init__(self, directory: str | os.PathLike | None = None, *, shards: int | None = None,
                 family: str = otlp_entry.LOGS_FAMILY, client=None, config=None):
        self._appender = _Appender(otlp_entry.LOGS, family, directory, shards, client, config)

    @property
    def path(self) -> str:
        return self._appender.path

    def export(self, batch: Sequence):
        """Called by the log record processor; returns when the records are in the log."""
        try:
            body = encode_logs(batch).SerializeToString()
        except Exception as e:  # noqa: BLE001
            log.error("cometmp.otel: cannot encode %d log records: %s: %s", len(batch),
                      type(e).__name__, e)
            return _LogResult.FAILURE
        return _LogResult.SUCCESS if self._appender.append(body) else _LogResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self._appender.close()


def span_processor(exporter):
    """The processor the SDK's auto-configuration wraps ``exporter`` in under
    :class:`Configurator`: simple for cometmp's (no thread, no queue), batch for others."""
    if isinstance(exporter, SpanExporter):
        return SimpleSpanProcessor(exporter)
    return BatchSpanProcessor(exporter)


def log_record_processor(exporter):
    """As :func:`span_processor`, for log record exporters."""
    if isinstance(exporter, LogExporter):
        return SimpleLogRecordProcessor(exporter)
    return BatchLogRecordProcessor(exporter)


class Configurator(_OTelSDKConfigurator):
    """The SDK's configurator (``OTEL_PYTHON_CONFIGURATOR=cometmp``, entry point
    ``opentelemetry_configurator``), loaded by ``opentelemetry-instrument`` at start-up:
    everything as the SDK's own, except that exporters selected as ``cometmp`` get the
    simple processors. Runs once per process, before the server forks."""

    def _configure(self, **kwargs):
        kwargs.setdefault("export_span_processor", span_processor)
        kwargs.setdefault("export_log_record_processor", log_record_processor)
        super()._configure(**kwargs)
