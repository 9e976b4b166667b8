#!/usr/bin/env python3
"""An app instrumented with OpenTelemetry, talking to pgwake with psycopg 3.

psycopg's instrumentation runs with sqlcommenter on, so every statement
carries its database span's trace context as a `/*traceparent='…'*/`
comment. With --otlp, the app's own spans are exported (OTLP/HTTP) to that
endpoint.

Modes:
  requests  --count N: N requests, each a span of its own ("request I")
            running one parameterized query; prints one line per request:
            `request I trace TRACE_ID`.
  prepared  --count N: one statement executed N times with prepare=True,
            each under a span of its own (so N different statement texts);
            prints `prepared N`.

Usage: traced_requests.py --port PORT --dbname DB --user USER MODE
                          [--count N] [--otlp URL] [--deadline SECONDS]
"""

import argparse
import sys
import time

from driver_common import psycopg_connect
from opentelemetry import trace
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["requests", "prepared"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dbname", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--otlp", default=None)
    ap.add_argument("--deadline", type=float, default=120)
    args = ap.parse_args()
    deadline = time.monotonic() + args.deadline

    provider = TracerProvider(resource=Resource.create({"service.name": "traced-app"}))
    if args.otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=args.otlp, timeout=10)))
    trace.set_tracer_provider(provider)
    PsycopgInstrumentor().instrument(enable_commenter=True, commenter_options={})
    tracer = trace.get_tracer("traced-app")

    conn = psycopg_connect(args, "traced-app", autocommit=True)
    try:
        for i in range(args.count):
            if time.monotonic() > deadline:
                sys.exit(f"deadline passed after {i} of {args.count}")
            with tracer.start_as_current_span(f"request {i}", kind=trace.SpanKind.SERVER) as span:
                with conn.cursor() as cur:
                    if args.mode == "requests":
                        cur.execute("SELECT %s::int AS n", (i,))
                        assert cur.fetchone()[0] == i
                    else:
                        cur.execute("SELECT %s::int + 1 AS n", (i,), prepare=True)
                        assert cur.fetchone()[0] == i + 1
                if args.mode == "requests":
                    tid = format(span.get_span_context().trace_id, "032x")
                    print(f"request {i} trace {tid}", flush=True)
        if args.mode == "prepared":
            print(f"prepared {args.count}", flush=True)
    finally:
        conn.close()
        provider.shutdown()


if __name__ == "__main__":
    main()
