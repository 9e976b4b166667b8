"""gunicorn settings that instrument each worker with OpenTelemetry, as an
app's deployment would: Django's instrumentation (request spans, and its
sqlcommenter) and psycopg's (a span per statement, and its sqlcommenter,
which puts that span's trace context at the end of the statement).

The exporter and the sampler are the SDK's standard variables:
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_TRACES_SAMPLER(_ARG). Spans are
exported as they end (no batching), so none wait in a worker for a flush.
"""


def post_fork(server, worker):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "traced-django"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(timeout=10)))
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument(is_sql_commentor_enabled=True)
    PsycopgInstrumentor().instrument(enable_commenter=True, commenter_options={})
