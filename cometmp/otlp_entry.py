"""The OTLP entry: how a span or log export is stored in a cometmp stream (FORMAT.md §11).

Who may call: the exporters (cometmp.otel, writing), the OTLP forwarder
(cometmp.otlp_forwarder, reading), anyone reading an ``otel:`` stream. Needs only the
standard library: the forwarder never parses protobuf.

One entry is one export call of the SDK (what the simple processors hand an exporter:
usually one span or one log record)::

    magic(4) = b"CmOT" | version(1) = 1 | signal(1): 1 traces, 2 logs | body

where ``body`` is the serialized ``ExportTraceServiceRequest`` (signal 1) or
``ExportLogsServiceRequest`` (signal 2) of opentelemetry-proto, exactly as an OTLP/HTTP
exporter would POST it. Both messages are ``repeated Resource{Spans,Logs} = 1``, and
protobuf merges concatenated messages by concatenating their repeated fields, so the
bodies of many entries joined back to back are one valid request holding all their
spans: the forwarder builds a request by ``b"".join`` (I57).

Streams: exporters append to the families ``otel:spans`` and ``otel:logs``
(``otel:spans:shard:0000`` ...), each worker to the shards it owns (every shard round
robin outside a cometmp prefork runtime); ``otel:*`` matches both.
"""

from __future__ import annotations

import struct

from .errors import FormatError

__all__ = ["HEADER_SIZE", "LOGS", "LOGS_FAMILY", "MAGIC", "PATTERN", "SIGNALS", "SPANS_FAMILY",
           "TRACES", "VERSION", "decode", "encode"]

MAGIC = b"CmOT"
VERSION = 1
#: signal numbers (the byte after the version)
TRACES = 1
LOGS = 2
#: signal -> the OTLP/HTTP path its requests are POSTed to
SIGNALS = {TRACES: "/v1/traces", LOGS: "/v1/logs"}
_HEADER = struct.Struct("<4sBB")   # magic(4) version(1) signal(1)
HEADER_SIZE = _HEADER.size
assert HEADER_SIZE == 6

SPANS_FAMILY = "otel:spans"
LOGS_FAMILY = "otel:logs"
#: what ``cometmp forward --otlp`` reads by default
PATTERN = "otel:*"


def encode(signal: int, body: bytes) -> bytes:
    """The entry holding ``body`` (a serialized Export*ServiceRequest) of ``signal``."""
    if signal not in SIGNALS:
        raise ValueError(f"OTLP signal must be {TRACES} (traces) or {LOGS} (logs), not {signal!r}")
    return _HEADER.pack(MAGIC, VERSION, signal) + body


def decode(data) -> tuple[int, memoryview]:
    """(signal, body) of an entry; FormatError naming what is wrong if it is not an OTLP
    entry of a version this build reads."""
    view = memoryview(data)
    if len(view) < HEADER_SIZE:
        raise FormatError(f"not an OTLP entry: {len(view)} bytes, shorter than its "
                          f"{HEADER_SIZE}-byte header")
    magic, version, signal = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise FormatError(f"not an OTLP entry: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FormatError(f"OTLP entry version {version} (this build reads version {VERSION})")
    if signal not in SIGNALS:
        raise FormatError(f"OTLP entry with unknown signal {signal} (1 traces, 2 logs)")
    return signal, view[HEADER_SIZE:]
