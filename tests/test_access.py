"""function/access.py through the real HTTP target: every answered request gets an id, one
log line and its metrics; the lines of its images (logged on the download threads) share
the ids. Counts are compared before and after, as this process's metrics live on."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import tempfile

import pytest
import requests
from cloudevents.conversion import to_binary

from conftest import function_client
from fixtures import images as test_images
from function import api
from function.config import default_model, load_settings
from function.runtime import tflite_path
from test_events import capture_logs, gcs_event, put_object
from test_metrics import parse
from test_server import served

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def changes(before: dict, after: dict, name: str) -> dict:
    """How each series of sample `name` moved: {labels: delta}, unmoved series left out."""
    moved = {labels: value - before.get((name, labels), 0.0)
             for (sample, labels), value in after.items() if sample == name}
    return {labels: delta for labels, delta in moved.items() if delta}


def series(**labels) -> tuple:
    return tuple(sorted(labels.items()))


@pytest.fixture
def client(use_stand_in, stand_in, flowers, monkeypatch):
    """The app with a model that cannot load (`broken`) and the stand-in as the events' bucket."""
    broken = json.loads(flowers.registry())["flowers"] | {"url": stand_in.server.url("/models/missing.tflite")}
    monkeypatch.setenv("CLASSIFIER_MODELS", json.dumps({"broken": broken}))
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", stand_in.server.url("/{bucket}/{name}"))
    monkeypatch.setenv("CLASSIFIER_LOG_LEVEL", "debug")  # the lines of images that went well, too
    return function_client()


@pytest.fixture
def logs(client, monkeypatch, caplog):
    return capture_logs(monkeypatch, caplog)


def logged(caplog) -> list[logging.LogRecord]:
    """Each record once: pytest may attach its handler to the package's (non-propagating)
    logger as well as to the root logger that capture_logs lets records reach."""
    return list({id(record): record for record in caplog.records}.values())


def request_lines(records, request_id: str) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "fields", {}).get("request_id") == request_id
            and r.fields.get("event") == "request"]


def test_a_known_mix_of_requests_shows_in_metrics_and_logs(client, logs, stand_in, monkeypatch):
    red = stand_in.image_url("access-red.png", (250, 5, 5))
    missing = stand_in.server.url("/images/access-missing.png")
    garbage = stand_in.server.add("/images/access-garbage.png", b"not a picture", content_type="image/png")
    put_object(stand_in, "/access-bucket/robin.png")
    event_headers, event_body = to_binary(gcs_event("access-bucket", "robin.png"))
    png = test_images.encode(test_images.solid((5, 5, 250)))
    before = scrape(client)

    answers = [
        client.post("/", json={"urls": [red, missing, garbage]}, headers={"traceparent": TRACEPARENT}),
        client.get("/", query_string={"url": red}, headers={"X-Request-Id": "query-1"}),
        client.post("/", data={"image": [(io.BytesIO(png), "a.png"), (io.BytesIO(b"??"), "b.png")]},
                    content_type="multipart/form-data"),
        client.post("/", headers={**event_headers, "traceparent": TRACEPARENT}, data=event_body),
        client.post("/", json={"urls": []}),
        client.post("/", json={"urls": [red], "model": "broken"}),
        client.get("/nope"),
        client.delete("/"),
        client.get("/healthz"),
    ]
    monkeypatch.setattr(api.HttpApp, "models", lambda self: 1 / 0)
    answers.append(client.get("/models"))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 400, 503, 404, 405, 200, 500]
    after = scrape(client)
    records = logged(logs)

    assert changes(before, after, "classifier_requests_total") == {
        series(door="json", code="200"): 1, series(door="query", code="200"): 1,
        series(door="upload", code="200"): 1, series(door="event", code="200"): 1,
        series(door="json", code="400"): 1, series(door="json", code="503"): 1,
        series(door="other", code="404"): 1, series(door="other", code="405"): 1,
        series(door="other", code="200"): 2,  # /healthz and the first scrape
        series(door="other", code="500"): 1,
    }
    assert changes(before, after, "classifier_images_total") == {
        series(model="birds", outcome="ok"): 4, series(model="birds", outcome="http_status"): 1,
        series(model="birds", outcome="not_an_image"): 2,
    }
    # fetch and decode once per image (the 503's image was fetched while its model failed to
    # load; the missing one never reached decode); the others once per classification.
    assert changes(before, after, "classifier_stage_seconds_count") == {
        series(stage="fetch"): 8, series(stage="decode"): 7, series(stage="model_wait"): 4,
        series(stage="inference"): 4, series(stage="total"): 4,
    }
    assert changes(before, after, "classifier_model_loads_total") == {
        series(model="birds", result="ok"): 1, series(model="broken", result="error"): 1}
    assert changes(before, after, "classifier_model_load_seconds_count") == {
        series(model="birds", runtime="litert"): 1}
    assert changes(before, after, "classifier_request_duration_seconds_count") == {
        series(door="json"): 3, series(door="query"): 1, series(door="upload"): 1, series(door="event"): 1,
        series(door="other"): 5}
    assert after[("classifier_in_flight_requests", ())] == 0

    ids = [a.headers["X-Request-Id"] for a in answers]
    assert len(set(ids)) == len(ids) and ids[1] == "query-1" and ids[3] == "9876543210123"  # the event's id
    for answer, request_id in zip(answers, ids):
        [line] = request_lines(records, request_id)
        assert line.fields["status"] == answer.status_code
        assert re.fullmatch(r"[0-9a-f]{32}", line.fields["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", line.fields["span_id"])
    assert [request_lines(records, ids[i])[0].fields["trace_id"] for i in (0, 3)] == [TRACE, TRACE]
    json_line = request_lines(records, ids[0])[0]
    assert {k: json_line.fields[k] for k in ("method", "path", "door", "images", "ok", "failed")} == {
        "method": "POST", "path": "/", "door": "json", "images": 3, "ok": 1, "failed": 2}
    assert request_lines(records, ids[5])[0].fields["error"] == "model_unavailable"
    assert request_lines(records, ids[9])[0].levelno == logging.WARNING

    # The per-image lines, written by the download threads, name the same request and trace.
    images = [r for r in records if getattr(r, "fields", {}).get("event") == "image"
              and r.fields["request_id"] == ids[0]]
    assert sorted(r.fields["outcome"] for r in images) == ["http_status", "not_an_image", "ok"]
    assert all(r.threadName.startswith("fetch") for r in images)
    assert {(r.fields["trace_id"], r.fields["span_id"]) for r in images} == {(TRACE, SPAN)}


def test_the_reply_event_carries_the_trace_the_event_came_with(client, stand_in):
    put_object(stand_in, "/access-bucket/tit.png", (5, 5, 250))
    headers, body = to_binary(gcs_event("access-bucket", "tit.png"))
    reply = client.post("/", headers={**headers, "traceparent": TRACEPARENT}, data=body)
    assert reply.status_code == 200 and reply.headers["ce-traceparent"] == TRACEPARENT
    untraced = client.post("/", headers=headers, data=body)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", untraced.headers["ce-traceparent"])


def test_x_request_id_is_echoed_on_errors_and_metrics_too(client):
    for answer in (client.get("/nope", headers={"X-Request-Id": "r-404"}),
                   client.get("/metrics", headers={"X-Request-Id": "r-metrics"})):
        assert answer.headers["X-Request-Id"] == answer.request.headers["X-Request-Id"]


def test_metrics_never_load_a_model_and_refuse_other_methods(client):
    assert ("classifier_in_flight_requests", ()) in scrape(client)
    assert not any(lazy.loaded for lazy in sys.modules["main"]._app.classifier.models.values())
    response = client.post("/metrics")
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"


def test_metrics_speak_openmetrics_when_asked(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.mimetype == "application/openmetrics-text"
    text = response.get_data(as_text=True)
    assert "# TYPE classifier_requests counter" in text and text.endswith("# EOF\n")


def test_logged_paths_are_bounded_and_never_carry_the_query(client, logs):
    client.get("/" + "x" * 5000, query_string={"X-Goog-Signature": "SECRET"})
    client.get("/models", query_string={"X-Goog-Signature": "SECRET"})
    lines = [r for r in logged(logs) if getattr(r, "fields", {}).get("event") == "request"]
    assert [len(r.fields["path"]) for r in lines] == [256, len("/models")]
    assert all("SECRET" not in r.getMessage() and "SECRET" not in json.dumps(r.fields) for r in lines)


@pytest.mark.slow
def test_as_deployed_json_lines_and_one_scrape_tell_the_same_story(stand_in, flowers):
    """The real server process with JSON logs for Cloud Logging: each answer's
    X-Request-Id has one request line with its trace, the image lines share it, and a scrape
    counts exactly what was sent."""
    tflite_path(default_model(load_settings(stand_in.env())), str(stand_in.cache_dir))  # no TensorFlow there
    broken = json.loads(flowers.registry())["flowers"] | {"url": stand_in.server.url("/models/missing.tflite")}
    env = stand_in.env(CLASSIFIER_LOG_FORMAT="json", GOOGLE_CLOUD_PROJECT="birds-prod",
                       CLASSIFIER_MODELS=json.dumps({"broken": broken}))
    red = stand_in.image_url("deployed-red.png", (250, 5, 5))
    missing = stand_in.server.url("/images/deployed-missing.png")
    with tempfile.TemporaryFile() as log, served(env, log) as (base, process):
        before = parse(requests.get(base + "/metrics", timeout=30).text)
        answers = [
            requests.post(base, json={"urls": [red, missing]}, headers={"traceparent": TRACEPARENT}, timeout=60),
            requests.get(base, params={"url": red}, timeout=60),
            requests.post(base, json={"urls": [red], "model": "broken"}, timeout=60),
            requests.post(base, data=b"{", headers={"Content-Type": "application/json"}, timeout=60),
            requests.get(base + "/nope", timeout=60),
        ]
        after = parse(requests.get(base + "/metrics", timeout=30).text)
        process.terminate()
        process.wait(30)
        log.seek(0)
        lines = [json.loads(line) for line in log.read().decode().splitlines() if line.startswith("{")]
    assert [a.status_code for a in answers] == [200, 200, 503, 400, 404]
    assert changes(before, after, "classifier_requests_total") == {
        series(door="json", code="200"): 1, series(door="query", code="200"): 1, series(door="json", code="503"): 1,
        series(door="json", code="400"): 1, series(door="other", code="404"): 1,
        series(door="other", code="200"): 1}  # the first scrape
    assert changes(before, after, "classifier_images_total") == {
        series(model="birds", outcome="ok"): 2, series(model="birds", outcome="http_status"): 1}
    assert changes(before, after, "classifier_stage_seconds_count") == {
        series(stage="fetch"): 4, series(stage="decode"): 3, series(stage="model_wait"): 2,
        series(stage="inference"): 2, series(stage="total"): 2}
    assert changes(before, after, "classifier_model_loads_total") == {
        series(model="birds", result="ok"): 1, series(model="broken", result="error"): 1}
    for answer in answers:
        request_id = answer.headers["X-Request-Id"]
        [line] = [e for e in lines if e.get("event") == "request" and e["request_id"] == request_id]
        assert line["status"] == answer.status_code and line["severity"] in ("INFO", "WARNING")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["logging.googleapis.com/trace"] == f"projects/birds-prod/traces/{line['trace_id']}"
        assert line["logging.googleapis.com/spanId"] == line["span_id"]
    first = answers[0].headers["X-Request-Id"]
    [image] = [e for e in lines if e.get("event") == "image" and e["request_id"] == first]
    assert (image["outcome"], image["trace_id"], image["span_id"]) == ("http_status", TRACE, SPAN)
