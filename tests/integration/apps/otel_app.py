"""A WSGI app for tests/integration/test_otel_pipeline.py, run under
``opentelemetry-instrument gunicorn`` with OTEL_TRACES_EXPORTER=cometmp: the SDK is set up
by its auto-configuration (in the master, before fork) and this app only uses the API.

GET /work?spans=<n>   ends n spans (one "handle" and n-1 children "step-<i>") before it
                      answers "<pid> <trace id hex> <n>"
GET /whoami           -> "<pid> -" (what harness.Server.wait_ready polls)
"""

import os
from urllib.parse import parse_qs

from opentelemetry import trace

tracer = trace.get_tracer("cometmp.tests.otel_app")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/work":
        n = int(parse_qs(environ.get("QUERY_STRING", "")).get("spans", ["1"])[0])
        with tracer.start_as_current_span("handle") as span:
            for i in range(n - 1):
                with tracer.start_as_current_span(f"step-{i}"):
                    pass
            trace_id = format(span.get_span_context().trace_id, "032x")
        # every span of this request has ended (and been exported) before the answer
        body = f"{os.getpid()} {trace_id} {n}\n".encode()
    elif path == "/whoami":
        body = f"{os.getpid()} -\n".encode()
    else:
        body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
