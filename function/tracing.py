"""Optional OpenTelemetry traces: a span per request, fetch, decode, model load and inference.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set
and the `otel` extra is installed. Off, nothing here imports opentelemetry and every span
is one shared no-op, so the request path pays nothing. On, spans go to the global tracer
provider: one that is already set up (`opentelemetry-instrument`, a test's in-memory
exporter) is used as it is, else one exporting over OTLP/HTTP is made, configured by the
SDK's own OTEL_* variables. The request span continues the caller's trace (W3C
`traceparent`, or Google's `X-Cloud-Trace-Context`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ContextManager

from .config import Settings
from .request_context import CLOUD_TRACE_HEADER, RequestContext

logger = logging.getLogger(__name__)

SERVICE_NAME = "bird-classifier"  # unless OTEL_SERVICE_NAME says otherwise

_NO_SPAN = contextlib.nullcontext()
_tracer: Any = None  # an opentelemetry Tracer once `configure` turned tracing on


def configure(settings: Settings) -> bool:
    """Turn tracing on when a collector is configured; whether it is on. Front doors call it."""
    global _tracer
    _tracer = None
    if not settings.tracing:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning("an OTLP endpoint is set but the otel extra is not installed: no traces "
                       "(pip install 'bird-classifier[otel]')")
        return False
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        resource = Resource.create()
        if resource.attributes.get("service.name", "").startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("function")
    return True


@contextlib.contextmanager
def request_span(name: str, attributes: Mapping[str, Any], headers: Mapping[str, str],
                 context: RequestContext) -> Iterator[Callable[[int], None]]:
    """The server span of one request, as the current span; `context` takes its ids, so
    log lines and the reply event name it. Yields a function that records the answer's status."""
    if _tracer is None:
        yield _ignore
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with _tracer.start_as_current_span(name, context=_parent(headers, context), kind=SpanKind.SERVER,
                                       attributes=attributes) as span:
        ids = span.get_span_context()
        context.trace_id, context.span_id = f"{ids.trace_id:032x}", f"{ids.span_id:016x}"
        context.sampled = ids.trace_flags.sampled

        def answered(status: int) -> None:
            span.set_attributes({"http.response.status_code": status, "classifier.door": context.door,
                                 "classifier.request_id": context.request_id})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))

        yield answered


def span(name: str, attributes: Mapping[str, Any] | None = None) -> ContextManager:
    """A child span of the current one, around one step (fetch, decode, model_load, inference)."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)


def _parent(headers: Mapping[str, str], context: RequestContext):
    """The caller's span: W3C traceparent through the SDK's propagator; else the
    X-Cloud-Trace-Context the request context read; else none (a new trace)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(headers)
    if trace.get_current_span(parent).get_span_context().is_valid:
        return parent
    if context.incoming_trace and CLOUD_TRACE_HEADER in headers:
        caller = trace.SpanContext(int(context.trace_id, 16), int(context.span_id, 16), is_remote=True,
                                   trace_flags=trace.TraceFlags(int(context.sampled)))
        return trace.set_span_in_context(trace.NonRecordingSpan(caller))
    return None


def _ignore(status: int) -> None:
    """Tracing off: nothing to record."""
