"""FastAPI app traced by opentelemetry-instrument under gunicorn + uvicorn_worker, spans kept
by cometmp (docs/INTEGRATIONS.md, "OpenTelemetry").

    OTEL_TRACES_EXPORTER=cometmp OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    OTEL_PYTHON_CONFIGURATOR=cometmp COMETMP_DIR=/tmp/otel-demo OTEL_SERVICE_NAME=fastapi-demo \
      opentelemetry-instrument gunicorn -k uvicorn_worker.UvicornWorker -w 2 \
        -b 127.0.0.1:8001 fastapi_app:app
"""

from fastapi import FastAPI
from opentelemetry import trace

app = FastAPI()
tracer = trace.get_tracer(__name__)


@app.get("/hello")
async def hello():
    with tracer.start_as_current_span("compute"):
        return {"hello": "world"}
