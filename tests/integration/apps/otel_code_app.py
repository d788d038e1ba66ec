"""otel_app with the SDK set up in code at import: under uWSGI without lazy-apps (or
gunicorn --preload) that import, the TracerProvider and the cometmp exporter happen in
the master, before the fork; the workers inherit them."""

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cometmp.otel import SpanExporter

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(SpanExporter(os.environ["COMETMP_DIR"])))
trace.set_tracer_provider(provider)
# the exporter's first append happens here, in the master, so its Client is open at fork
with trace.get_tracer("cometmp.tests.master").start_as_current_span("master-import"):
    pass

from otel_app import app  # noqa: E402,F401
