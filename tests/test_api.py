"""The HTTP target through functions-framework's Flask app (`create_app(...).test_client()`)."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from conftest import ROOT, function_client
from fixtures import images as test_images
from function.events import GCS_FINALIZED


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


DEEP = b"[" * 100_000  # deeper than the interpreter's recursion limit


@pytest.mark.parametrize(
    "body, headers",
    [
        (DEEP, {"Content-Type": "application/json"}),
        (b'{"urls": ' + DEEP, {"Content-Type": "application/json"}),
        (b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": ' + DEEP,
         {"Content-Type": "application/cloudevents+json"}),  # a structured CloudEvent
        (DEEP, {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "1",
                "ce-source": "s", "ce-type": GCS_FINALIZED}),  # a binary one
    ],
    ids=["json", "json-urls", "structured-event", "binary-event"],
)
def test_json_nested_past_the_recursion_limit_is_400_bad_request(app_client, body, headers):
    response = app_client.post("/", data=body, headers=headers)
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_request"


def test_a_body_that_ends_before_its_length_is_408(app_client):
    """What the server's read deadline leaves the function (or a client that went away):
    a body shorter than its Content-Length."""
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(b'{"urls": ['),
                             content_type="application/json").get_environ()
    environ["CONTENT_LENGTH"] = "1000"  # as sent; the test client would count the stream instead
    body, status, _ = run_wsgi_app(app_client.application, environ, buffered=True)
    assert status.startswith("408 ")
    assert json.loads(b"".join(body))["error"]["code"] == "request_timeout"


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


# --- uploads, models, the page and the API description ---------------------------------


def png(colour) -> bytes:
    return test_images.encode(test_images.solid(colour))


@pytest.fixture
def client(use_stand_in, flowers, monkeypatch):
    """The app with the flowers in the registry beside the (default) birds."""
    monkeypatch.setenv("CLASSIFIER_MODELS", flowers.registry())
    return function_client()


def test_multipart_uploads_are_named_by_their_filenames(client):
    files = [(io.BytesIO(png((250, 5, 5))), "robin.png"),
             (io.BytesIO(test_images.encode(test_images.solid((5, 5, 250)), "JPEG")), "tit.jpg")]
    response = client.post("/?top_k=2", data={"image": files, "note": "ignored"}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data()
    results = response.get_json()["results"]
    assert [r["url"] for r in results] == ["robin.png", "tit.jpg"]
    assert [r["predictions"][0]["label"] for r in results] == ["Erithacus rubecula", "Cyanistes caeruleus"]
    assert all(len(r["predictions"]) == 2 for r in results)


def test_a_raw_image_body_is_named_by_the_query(client):
    response = client.post("/?name=green.png&top_k=1", data=png((5, 250, 5)), content_type="image/png")
    assert response.get_json()["results"] == [
        {"url": "green.png", "predictions": [{"label": "Picus viridis", "score": pytest.approx(0.9, abs=0.1)}]}]
    unnamed = client.post("/", data=b"not an image at all", content_type="image/jpeg")
    assert unnamed.get_json()["results"] == [
        {"url": "upload", "error": {"code": "not_an_image", "message": "the body is not an image in a format we can read"}}]


def test_every_way_in_chooses_the_model(client, stand_in, flowers):
    url = stand_in.image_url("api-flower.png", (20, 40, 220))
    answers = [
        client.post("/", json={"urls": [url], "model": "flowers"}),
        client.get("/", query_string={"url": url, "model": "flowers"}),
        client.post("/?model=flowers", data={"image": (io.BytesIO(png((20, 40, 220))), "f.png")},
                    content_type="multipart/form-data"),
        client.post("/?model=flowers", data=png((20, 40, 220)), content_type="image/png"),
    ]
    for response in answers:
        body = response.get_json()
        assert body["model"] == flowers.url
        assert body["results"][0]["predictions"][0]["label"] == "tulips"
    default = client.post("/", json={"urls": [url]}).get_json()
    assert default["model"] == stand_in.model_url
    assert default["results"][0]["predictions"][0]["label"] == "Cyanistes caeruleus"


def test_models_lists_the_registry_and_what_is_loaded(client, stand_in, flowers):
    listing = client.get("/models").get_json()
    assert listing["default"] == "birds"
    assert [(m["name"], m["url"], m["loaded"]) for m in listing["models"]] == [
        ("birds", stand_in.model_url, False), ("flowers", flowers.url, False)]
    assert listing["models"][1] | {"loaded": None} == {
        "name": "flowers", "url": flowers.url, "labels": flowers.labels_url, "input_size": [180, 180],
        "input_range": [0, 255], "output": "logits", "loaded": None}
    client.post("/", json={"urls": [stand_in.image_url("api-load.png")]})
    assert [m["loaded"] for m in client.get("/models").get_json()["models"]] == [True, False]


@pytest.mark.parametrize(
    "request_kwargs, status, code",
    [
        ({"json": {"urls": ["http://a/b.jpg"], "model": "nope"}}, 400, "unknown_model"),
        ({"json": {"urls": ["http://a/b.jpg"], "model": ""}}, 400, "bad_request"),
        ({"json": {"urls": ["http://a/b.jpg"], "model": 3}}, 400, "bad_request"),
        ({"query_string": {"model": "nope"}, "data": b"x", "content_type": "image/png"}, 400, "unknown_model"),
        ({"query_string": {"top_k": "0"}, "data": b"x", "content_type": "image/png"}, 400, "bad_request"),
        ({"data": {"photo": (io.BytesIO(b"x"), "a.png")}, "content_type": "multipart/form-data"}, 400, "bad_request"),
        ({"data": b"--x\r\n", "content_type": "multipart/form-data"}, 400, "bad_request"),  # no boundary
        ({"data": {"image": [(io.BytesIO(b"x"), f"{i}.png") for i in range(33)]},
          "content_type": "multipart/form-data"}, 400, "too_many_urls"),  # counted by the pipeline
        ({"data": {"image": [(io.BytesIO(b""), f"{i}.png") for i in range(49)]},
          "content_type": "multipart/form-data"}, 400, "too_many_urls"),  # over 32 + 16 parts: by the parser
        ({"data": b"x" * 10_001, "content_type": "image/png"}, 413, "request_too_large"),
        ({"data": {"image": (io.BytesIO(b"x" * 10_001), "big.png")}, "content_type": "multipart/form-data"},
         413, "request_too_large"),
    ],
)
def test_upload_and_model_errors(use_stand_in, monkeypatch, request_kwargs, status, code):
    monkeypatch.setenv("CLASSIFIER_MAX_UPLOAD_BYTES", "10000")
    response = function_client().post("/", **request_kwargs)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_an_upload_over_the_image_limit_fails_alone(use_stand_in, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_MAX_IMAGE_BYTES", "2000")
    big = test_images.encode(test_images.photo_like(100, 100))
    data = {"image": [(io.BytesIO(big), "big.png"), (io.BytesIO(png((250, 5, 5))), "small.png")]}
    results = function_client().post("/", data=data, content_type="multipart/form-data").get_json()["results"]
    assert results[0] == {"url": "big.png", "error": {"code": "too_large",
                                                      "message": f"image is {len(big)} bytes, the limit is 2000"}}
    assert results[1]["predictions"][0]["label"] == "Erithacus rubecula"


def test_browsers_get_the_page_and_everyone_else_json(app_client):
    page = app_client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'unsafe-inline'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assert "<title>Bird classifier</title>" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained: no CDN
    for accept in ("*/*", "application/json"):
        assert error_of(app_client.get("/", headers={"Accept": accept}))["code"] == "bad_request"
    url = "http://example.invalid/x.jpg"
    assert app_client.get("/", query_string={"url": url}, headers={"Accept": "text/html"}).mimetype == "application/json"


def test_openapi_document_is_served_and_other_methods_are_405(app_client):
    response = app_client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == json.loads((ROOT / "function" / "openapi.json").read_text())
    for path in ("/models", "/openapi.json"):
        assert error_of(app_client.post(path))["code"] == "method_not_allowed"


class CountingBody(io.RawIOBase):
    """A request body of `size` bytes made up as it is read, counting what is read."""

    def __init__(self, size: int):
        self.size, self.position, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:  # the test client measures the body by seeking
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: offset, 1: self.position + offset, 2: self.size + offset}[whence]
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        buffer[:count] = b"{" * count
        self.position += count
        self.read_bytes += count
        return count


@pytest.mark.parametrize(
    "method, path, content_type, status",
    [
        ("POST", "/", "application/json", 413),
        ("POST", "/", "text/plain", 400),
        ("GET", "/", "application/json", 400),
        ("POST", "/healthz", "application/json", 405),
        ("GET", "/healthz", "application/json", 200),
        ("PUT", "/nope", "application/json", 404),
    ],
)
def test_a_huge_body_is_never_read_into_memory(app_client, method, path, content_type, status):
    """functions-framework reads every unread request body after the answer; no answer
    may let it read more than the request limit (1 MiB by default)."""
    body = CountingBody(64 * 1024 * 1024)
    response = app_client.open(path, method=method, input_stream=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert body.read_bytes <= 1024 * 1024 + 1
