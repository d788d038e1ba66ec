"""A real OTLP/HTTP collector for the tests: stdlib http.server on 127.0.0.1, in a thread.

It decodes every POST to /v1/traces and /v1/logs with opentelemetry-proto (a body that
does not parse is answered 400, so a forwarder that sent garbage fails the test) and
keeps what arrived. ``stop()`` closes the port (an outage: connections are refused) and
``start()`` opens the same port again; ``stop()`` also cuts the keep-alive connections
already open. ``script`` is a list of statuses (with optional
Retry-After) answered to the next requests instead of 200.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections import Counter

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Collector:
    def __init__(self, port: int):
        self.port = port
        self.lock = threading.Lock()
        self.requests: list[tuple[str, list[tuple[str, str, str]]]] = []  # (path, spans/logs)
        self.answers: list[int] = []
        self.script: list[tuple[int, str | None]] = []
        self._conns: set[socket.socket] = set()   # open keep-alive connections
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- what arrived --------------------------------------------------------------------
    def spans(self) -> list[tuple[str, str, str]]:
        """(trace_id hex, span_id hex, name) of every span received, duplicates included."""
        with self.lock:
            return [s for path, items in self.requests if path == "/v1/traces" for s in items]

    def logs(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [x for path, items in self.requests if path == "/v1/logs" for x in items]

    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.spans()).values())

    # ---- running -------------------------------------------------------------------------
    def start(self) -> "Collector":
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with collector.lock:
                    collector._conns.add(self.connection)

            def finish(self):
                with collector.lock:
                    collector._conns.discard(self.connection)
                super().finish()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with collector.lock:
                    scripted = collector.script.pop(0) if collector.script else None
                if scripted is not None:
                    status, retry_after = scripted
                    self._answer(status, b"scripted", retry_after)
                    return
                try:
                    if self.path == "/v1/traces":
                        req = ExportTraceServiceRequest.FromString(body)
                        items = [(s.trace_id.hex(), s.span_id.hex(), s.name)
                                 for rs in req.resource_spans for ss in rs.scope_spans
                                 for s in ss.spans]
                    elif self.path == "/v1/logs":
                        req = ExportLogsServiceRequest.FromString(body)
                        items = [(r.trace_id.hex(), r.span_id.hex(), r.body.string_value)
                                 for rl in req.resource_logs for sl in rl.scope_logs
                                 for r in sl.log_records]
                    else:
                        self._answer(404, b"no such path")
                        return
                    if self.headers.get("Content-Type") != "application/x-protobuf":
                        raise ValueError("Content-Type is not application/x-protobuf")
                except Exception as e:  # noqa: BLE001 - a bad request is the sender's bug
                    self._answer(400, str(e).encode())
                    return
                with collector.lock:
                    collector.requests.append((self.path, items))
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes, retry_after: str | None = None):
                with collector.lock:
                    collector.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(10)
            with self.lock:          # an outage also ends the connections already open
                conns, self._conns = list(self._conns), set()
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
