"""What a finished span costs the request, and how fast the OTLP forwarder ships them.

Side by side in one run (the machine is noisy: compare the ratios, not the figures):

* ``cometmp``: SimpleSpanProcessor(cometmp.otel.SpanExporter): encode + one append, in
  the request's thread (durable at return: I56);
* ``otlp-http simple``: SimpleSpanProcessor(OTLPSpanExporter) of
  opentelemetry-exporter-otlp-proto-http to a local stdlib collector: the only stock
  pipeline with no queue, one HTTP POST per span (lost when the collector is down);
* ``otlp-http batch``: BatchSpanProcessor(OTLPSpanExporter), the SDK's default: the request
  pays only the enqueue, a background thread exports (lost on kill -9 / fork: issue 12);
* ``encode only``: SimpleSpanProcessor with an exporter that only runs the SDK's OTLP
  encoder (``encode_spans(...).SerializeToString()``) and drops the bytes: what cometmp
  pays before its append;
* ``no processor``: the SDK's own cost of a span, the floor of all of them.

Then ``forward``: N spans already in the log, ``OtlpForwarder`` ships them to the same
collector (catch-up, spans/s, requests of up to 512 entries), the collector in this
process answering 200 without decoding.

    .venv/bin/python benchmarks/bench_otel.py --spans 5000
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()


def _collector():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def _encode_only():
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class EncodeOnly(SpanExporter):
        def export(self, spans):
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    return EncodeOnly()


def _per_span_us(processor, n: int) -> float:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    if processor is not None:
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    for _ in range(min(200, n)):         # warm-up: connections, first appends
        with tracer.start_as_current_span("warm"):
            pass
    t0 = time.perf_counter()
    for i in range(n):
        with tracer.start_as_current_span("request") as s:
            s.set_attribute("http.route", "/hello")
    dt = time.perf_counter() - t0
    provider.shutdown()
    return dt / n * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    from cometmp.otel import SpanExporter
    from cometmp.otlp_forwarder import OtlpForwarder

    srv, url = _collector()
    tmp = tempfile.mkdtemp(prefix="cometmp-bench-otel-")
    runs: dict[str, list[float]] = {"no processor": [], "encode only": [], "cometmp": [],
                                    "otlp-http simple": [], "otlp-http batch": []}
    for r in range(args.repeat):           # interleaved, so drift hits every peer alike
        runs["no processor"].append(_per_span_us(None, args.spans))
        runs["encode only"].append(_per_span_us(SimpleSpanProcessor(_encode_only()), args.spans))
        runs["cometmp"].append(_per_span_us(
            SimpleSpanProcessor(SpanExporter(os.path.join(tmp, f"d{r}"))), args.spans))
        runs["otlp-http simple"].append(_per_span_us(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces")), args.spans))
        runs["otlp-http batch"].append(_per_span_us(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces")), args.spans))
    med = {k: statistics.median(v) for k, v in runs.items()}

    # forward: the spans of the first cometmp run (spans + warm-up) are in d0
    root = os.path.join(tmp, "d0")
    fw = OtlpForwarder(root, url)
    total = args.spans + min(200, args.spans)
    t = threading.Thread(target=fw.run_forever)
    t0 = time.perf_counter()
    t.start()
    while fw.stats.forwarded < total:
        time.sleep(0.005)
    fwd_s = time.perf_counter() - t0
    fw.stop()
    t.join(30)
    srv.shutdown()
    doc = {"spans": args.spans, "repeat": args.repeat,
           "per_span_us_median": {k: round(v, 2) for k, v in med.items()},
           "ratio_vs_cometmp": {k: round(v / med["cometmp"], 2) for k, v in med.items()},
           "forward_spans_per_s": round(total / fwd_s), "forward_requests": fw.stats.batches}
    if args.json:
        print(json.dumps(doc))
    else:
        for k, v in med.items():
            print(f"{k:18s} {v:8.1f} µs/span   ({v / med['cometmp']:.2f}× cometmp)")
        print(f"forward: {doc['forward_spans_per_s']:,} spans/s in {fw.stats.batches} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
