"""function/tracing.py: spans through the real HTTP target, recorded by the SDK's in-memory
exporter; off, not even an import; on with no provider set up, real OTLP/HTTP export."""

from __future__ import annotations

import http.server
import logging
import subprocess
import sys
import threading

import pytest
from cloudevents.conversion import to_binary

from conftest import ROOT, function_client, python_env
from function import api, tracing
from function.config import Settings, default_model, load_settings
from function.runtime import tflite_path
from test_access import logged
from test_events import capture_logs, gcs_event, put_object

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter(monkeypatch):
    """An in-memory exporter on a tracer provider that is global for this test only: the
    globals OTel sets once are put back afterwards (as OTel's own tests reset them)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.util._once import Once

    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    return memory


@pytest.fixture
def traced(use_stand_in, stand_in, exporter, monkeypatch):
    """The app with tracing on (the endpoint is never reached: the spans stay in memory)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", stand_in.server.url("/{bucket}/{name}"))
    yield function_client()
    tracing.configure(Settings())  # off again for the tests after this one


def by_name(exporter) -> dict[str, list]:
    spans: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    return spans


def test_a_request_is_one_trace_through_fetch_decode_load_and_inference(traced, exporter, stand_in, monkeypatch,
                                                                         caplog):
    logs = capture_logs(monkeypatch, caplog)
    red = stand_in.image_url("tracing-red.png", (250, 5, 5))
    missing = stand_in.server.url("/images/tracing-missing.png")
    response = traced.post("/", json={"urls": [red, missing]}, headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    assert response.status_code == 200
    spans = by_name(exporter)
    [server] = spans["POST /"]
    assert server.kind.name == "SERVER" and server.parent.span_id == int(SPAN, 16) and server.parent.is_remote
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["classifier.door"] == "json"
    assert server.attributes["classifier.request_id"] == response.headers["X-Request-Id"]
    steps = spans["fetch"] + spans["decode"] + spans["model_load"] + spans["inference"]
    assert [len(spans[name]) for name in ("fetch", "decode", "model_load", "inference")] == [2, 1, 1, 1]
    assert all(s.context.trace_id == int(TRACE, 16) and s.parent.span_id == server.context.span_id for s in steps)
    assert sorted(s.attributes["url.full"] for s in spans["fetch"]) == sorted([red, missing])
    assert [s.status.status_code.name for s in spans["fetch"] if s.attributes["url.full"] == missing] == ["ERROR"]
    assert spans["model_load"][0].attributes["classifier.runtime"] == "litert"
    # Log lines name the request's span, on the download threads too.
    ids = {(r.fields["trace_id"], r.fields["span_id"]) for r in logged(logs) if "trace_id" in getattr(r, "fields", {})}
    assert ids == {(TRACE, f"{server.context.span_id:016x}")}


def test_the_reply_event_carries_the_request_span(traced, exporter, stand_in):
    put_object(stand_in, "/tracing-bucket/robin.png")
    headers, body = to_binary(gcs_event("tracing-bucket", "robin.png"))
    reply = traced.post("/", headers={**headers, "traceparent": f"00-{TRACE}-{SPAN}-01"}, data=body)
    [server] = by_name(exporter)["POST /"]
    assert reply.headers["ce-traceparent"] == f"00-{TRACE}-{server.context.span_id:016x}-01"
    assert server.attributes["classifier.door"] == "event"


def test_x_cloud_trace_context_is_continued(traced, exporter):
    traced.get("/healthz", headers={"X-Cloud-Trace-Context": f"{TRACE}/1234567;o=1"})
    [server] = by_name(exporter)["GET /healthz"]
    assert (server.context.trace_id, server.parent.span_id) == (int(TRACE, 16), 1234567)


def test_without_a_caller_a_request_starts_its_trace(traced, exporter, monkeypatch, caplog):
    logs = capture_logs(monkeypatch, caplog)
    traced.get("/nope")
    [server] = by_name(exporter)["GET"]  # no route matched: the method alone names the span
    assert server.parent is None and server.status.status_code.name == "UNSET"  # a 404 is the caller's
    [line] = [r for r in logged(logs) if getattr(r, "fields", {}).get("event") == "request"]
    assert (line.fields["trace_id"], line.fields["span_id"]) == (
        f"{server.context.trace_id:032x}", f"{server.context.span_id:016x}")


def test_server_errors_mark_the_span(traced, exporter, monkeypatch):
    monkeypatch.setattr(api.HttpApp, "models", lambda self: 1 / 0)
    assert traced.get("/models").status_code == 500
    [server] = by_name(exporter)["GET /models"]
    assert server.status.status_code.name == "ERROR"


def test_off_without_an_endpoint(use_stand_in, exporter, stand_in):
    client = function_client()
    assert client.post("/", json={"urls": [stand_in.image_url("tracing-off.png")]}).status_code == 200
    assert exporter.get_finished_spans() == ()


def test_without_the_otel_extra_tracing_stays_off_and_says_why(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    caplog.set_level(logging.WARNING, logger="function.tracing")
    monkeypatch.setattr(logging.getLogger("function"), "propagate", True)
    assert tracing.configure(Settings(otlp_endpoint="http://collector:4318")) is False
    assert "otel extra is not installed" in caplog.text
    with tracing.span("fetch"):
        pass  # a no-op, not an error


@pytest.mark.slow
def test_tracing_off_never_imports_opentelemetry(stand_in):
    """In a fresh process: every kind of request, and not one opentelemetry module."""
    tflite_path(default_model(load_settings(stand_in.env())), str(stand_in.cache_dir))  # no TensorFlow there
    url = stand_in.image_url("tracing-fresh.png")
    code = (
        "import sys; from functions_framework import create_app; "
        "c = create_app(target='classify', source='function/main.py').test_client(); "
        f"codes = [c.post('/', json={{'urls': [{url!r}]}}).status_code, c.get('/healthz').status_code, "
        "c.get('/metrics').status_code, c.get('/nope').status_code, c.post('/', data=b'x').status_code]; "
        "assert codes == [200, 200, 200, 404, 400], codes; "
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]; assert not loaded, loaded; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=python_env(stand_in.env()),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


class _Collector(http.server.BaseHTTPRequestHandler):
    """A loopback OTLP/HTTP collector: keeps what is posted to /v1/traces."""

    received: list[tuple[str, str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_with_no_provider_set_up_spans_are_exported_over_otlp_http(tmp_path):
    """In a fresh process, as deployed: only OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = (
        "from opentelemetry import trace; from functions_framework import create_app; "
        "c = create_app(target='classify', source='function/main.py').test_client(); "
        "assert c.get('/healthz', headers={'traceparent': '00-" + TRACE + "-" + SPAN + "-01'}).status_code == 200; "
        "assert trace.get_tracer_provider().force_flush(10000)"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
            env=python_env({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
                            "TFHUB_CACHE_DIR": str(tmp_path)}))
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr[-3000:]
    [(path, content_type, body)] = _Collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    [resource_spans] = ExportTraceServiceRequest.FromString(body).resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert (service, span.name, span.trace_id.hex(), span.parent_span_id.hex()) == (
        "bird-classifier", "GET /healthz", TRACE, SPAN)
