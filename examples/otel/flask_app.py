"""Flask app traced by opentelemetry-instrument, spans kept by cometmp (docs/INTEGRATIONS.md,
"OpenTelemetry"). Nothing cometmp-specific in the code: the environment selects it.

    OTEL_TRACES_EXPORTER=cometmp OTEL_LOGS_EXPORTER=cometmp OTEL_METRICS_EXPORTER=none \
    OTEL_PYTHON_CONFIGURATOR=cometmp COMETMP_DIR=/tmp/otel-demo OTEL_SERVICE_NAME=flask-demo \
      opentelemetry-instrument gunicorn -w 2 -b 127.0.0.1:8000 flask_app:app
"""

import logging

from flask import Flask
from opentelemetry import trace

app = Flask(__name__)
tracer = trace.get_tracer(__name__)
log = logging.getLogger("flask_app")


@app.get("/hello")
def hello():
    with tracer.start_as_current_span("compute"):
        log.warning("said hello")
    return "hello\n"
