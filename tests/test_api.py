"""The HTTP target through functions-framework's Flask app (`create_app(...).test_client()`)."""

from __future__ import annotations

import json
import sys

import pytest


def error_of(response):
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


def test_healthz_answers_without_loading_the_model(app_client):
    response = app_client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    # (that it doesn't even import TensorFlow is checked in a fresh process: test_server.py)
    assert not sys.modules["main"]._app.classifier.model().loaded


def test_post_json_classifies_in_order(app_client, stand_in):
    red = stand_in.image_url("api-red.png", (240, 10, 10))
    blue = stand_in.image_url("api-blue.png", (10, 10, 240))
    response = app_client.post("/", json={"urls": [blue, red], "top_k": 2})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == stand_in.model_url
    assert [r["url"] for r in body["results"]] == [blue, red]
    assert [r["predictions"][0]["label"] for r in body["results"]] == ["Cyanistes caeruleus", "Erithacus rubecula"]
    assert all(len(r["predictions"]) == 2 for r in body["results"])
    assert {"fetch", "decode", "model_load", "inference"} <= set(body["timings_ms"])


def test_get_with_query_urls(app_client, stand_in):
    green = stand_in.image_url("api-green.png", (10, 240, 10))
    response = app_client.get("/", query_string=[("url", green), ("url", green), ("top_k", "1")])
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 2 and all(len(r["predictions"]) == 1 for r in results)
    assert results[0]["predictions"][0]["label"] == "Picus viridis"


def test_one_bad_url_does_not_fail_the_request(app_client, stand_in):
    good = stand_in.image_url("api-good.png")
    response = app_client.post("/", json={"urls": ["not a url", good]})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert results[0]["error"]["code"] in ("forbidden_url", "invalid_url")
    assert "predictions" in results[1]


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"{}", "application/json"),
        (b'{"urls": "http://a/b.jpg"}', "application/json"),
        (b'{"urls": [1, 2]}', "application/json"),
        (b'{"urls": []}', "application/json"),
        (b'{"urls": ["http://a/b.jpg"], "top_k": 0}', "application/json"),
        (b'{"urls": ["http://a/b.jpg"], "top_k": 21}', "application/json"),
        (b'{"urls": ["http://a/b.jpg"], "top_k": "3"}', "application/json"),
        (b'{"urls": ["http://a/b.jpg"], "top_k": true}', "application/json"),
        (b'{"urls": ["http://a/b.jpg"]}', "text/plain"),
    ],
)
def test_malformed_bodies_are_400_bad_request(app_client, body, content_type):
    response = app_client.post("/", data=body, content_type=content_type)
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_request"


def test_too_many_urls_is_400(app_client, monkeypatch):
    urls = [f"http://example.invalid/{i}.jpg" for i in range(33)]
    response = app_client.post("/", json={"urls": urls})
    assert response.status_code == 400
    assert error_of(response)["code"] == "too_many_urls"


@pytest.mark.parametrize("query", ["", "?url=http://a/b.jpg&top_k=x", "?url=http://a/b.jpg&top_k=99"])
def test_bad_queries_are_400(app_client, query):
    response = app_client.get("/" + query)
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_request"


def test_unknown_path_and_method(app_client):
    assert error_of(app_client.get("/nope"))["code"] == "not_found"
    response = app_client.delete("/")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_huge_body_is_413(app_client):
    body = json.dumps({"urls": ["http://example.invalid/" + "a" * (2 * 1024 * 1024)]})
    response = app_client.post("/", data=body, content_type="application/json")
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
