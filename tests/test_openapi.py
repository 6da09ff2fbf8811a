"""function/openapi.json matches the function: real answers validate against it, every
documented answer is produced, and schemathesis fuzzes the real server from it."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import jsonschema
import pytest

from conftest import ROOT, function_client, python_env
from fixtures import images as test_images
from function import errors
from function.config import default_model, load_settings
from function.runtime import tflite_path
from test_server import served

DOC = json.loads((ROOT / "function" / "openapi.json").read_text())
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
         "response_headers_conformance"


def resolve(node: dict) -> dict:
    """A `$ref` to this document's components, followed."""
    while "$ref" in node:
        target = DOC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def validate(instance, schema: dict) -> None:
    # OpenAPI 3.0 schema objects are a draft-04 dialect; refs resolve inside the document.
    jsonschema.Draft4Validator({**schema, "components": DOC["components"]}).validate(instance)


def check(response, path: str, method: str) -> tuple:
    """Validate a real answer against the document; return what it exercised."""
    answers = DOC["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in answers, f"{method.upper()} {path} answered {status}, which is not documented"
    answer = resolve(answers[status])
    assert response.mimetype in answer["content"], (path, method, status, response.mimetype)
    schema = answer["content"][response.mimetype]["schema"]
    validate(response.get_json() if response.mimetype == "application/json" else response.get_data(as_text=True),
             schema)
    for header, spec in answer.get("headers", {}).items():
        validate(int(response.headers[header]), spec["schema"])
    return path, method, status, response.mimetype


def documented(answered_by: str = "function") -> set[tuple]:
    """Every (path, method, status, media type) the document promises; answers marked
    `x-answered-by: server` come from the server before the function runs."""
    return {(path, method, status, media)
            for path, operations in DOC["paths"].items()
            for method, operation in operations.items()
            for status, answer in operation["responses"].items()
            if resolve(answer).get("x-answered-by", "function") == answered_by
            for media in resolve(answer)["content"]}


class Answer:
    """A raw HTTP answer with the little of a Flask response that `check` reads."""

    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_code = int(lines[0].split()[1])
        self.headers = dict(line.split(": ", 1) for line in lines[1:])
        self.mimetype = self.headers["Content-Type"].split(";")[0]

    def get_json(self):
        return json.loads(self.body)


def exchange(base: str, request: bytes) -> Answer:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return Answer(received)


@pytest.mark.slow
def test_the_servers_own_answers_are_documented(stand_in):
    """408, 414 and 431 come from `python -m function.server`, before the function runs."""
    with served({**stand_in.env(), "CLASSIFIER_REQUEST_READ_DEADLINE": "1"}) as (base, _):
        seen = {
            check(exchange(base, b"GET /?url=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"), "/", "get"),
            check(exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"), "/", "get"),
            check(exchange(base, b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"), "/",
                  "post"),
            check(exchange(base, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 10\r\n\r\n{"), "/", "post"),
        }
    assert seen == documented("server")


def test_every_documented_answer_is_real_and_valid(use_stand_in, stand_in, flowers, monkeypatch):
    broken = json.loads(flowers.registry())["flowers"] | {"url": stand_in.server.url("/models/missing.tflite")}
    monkeypatch.setenv("CLASSIFIER_MODELS", json.dumps({"flowers": json.loads(flowers.registry())["flowers"],
                                                        "broken": broken}))
    monkeypatch.setenv("CLASSIFIER_MAX_UPLOAD_BYTES", "100000")
    client = function_client()
    red = stand_in.image_url("openapi-red.png", (250, 5, 5))
    image = test_images.encode(test_images.solid((250, 5, 5)))
    seen = {
        check(client.get("/healthz"), "/healthz", "get"),
        check(client.get("/models"), "/models", "get"),
        check(client.get("/openapi.json"), "/openapi.json", "get"),
        check(client.get("/metrics"), "/metrics", "get"),
        check(client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}),
              "/metrics", "get"),
        check(client.get("/", headers={"Accept": "text/html"}), "/", "get"),
        check(client.get("/", query_string={"url": [red, "nope"], "model": "flowers"}), "/", "get"),
        check(client.get("/", query_string={"top_k": "x"}), "/", "get"),
        check(client.get("/", query_string={"url": red, "model": "broken"}), "/", "get"),
        check(client.post("/", json={"urls": [red, "ftp://x/y.png"], "top_k": 5}), "/", "post"),
        check(client.post("/?top_k=1", data={"image": [(io.BytesIO(image), "a.png"), (io.BytesIO(b"?"), "b.png")]},
                          content_type="multipart/form-data"), "/", "post"),
        check(client.post("/?name=raw.png", data=image, content_type="image/png"), "/", "post"),
        check(client.post("/", json={"urls": [red], "model": "nope"}), "/", "post"),
        check(client.post("/", data=b"x" * 100_001, content_type="image/jpeg"), "/", "post"),
        check(client.post("/", json={"urls": [red], "model": "broken"}), "/", "post"),
    }
    assert seen == documented()
    assert client.get("/models").get_json()["models"][0]["loaded"] is True  # validated loaded, too
    check(client.get("/models"), "/models", "get")


def test_item_error_codes_are_the_error_tree():
    enum = DOC["components"]["schemas"]["Failed"]["properties"]["error"]["properties"]["code"]["enum"]

    def tree(cls):
        return {cls.code}.union(*(tree(sub) for sub in cls.__subclasses__()))

    assert set(enum) == tree(errors.ItemError)


def test_the_document_is_openapi_3_with_valid_schemas():
    assert DOC["openapi"].startswith("3.0.")
    metaschema = jsonschema.Draft4Validator.META_SCHEMA
    for name, schema in DOC["components"]["schemas"].items():
        jsonschema.Draft4Validator(metaschema).validate(schema)
    assert {op["operationId"] for ops in DOC["paths"].values() for op in ops.values()} == {
        "classifyQuery", "classify", "health", "metrics", "models", "openapi"}


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_the_real_server(use_stand_in, stand_in, flowers, tmp_path):
    """Bounded fuzzing, 20 examples per operation. Private addresses stay refused, so no
    generated URL reaches anything on this machine; the fetch deadline bounds the rest."""
    tflite_path(default_model(load_settings()), str(stand_in.cache_dir))  # no TensorFlow in the server
    env = {**stand_in.env(), "CLASSIFIER_MODELS": flowers.registry(), "CLASSIFIER_FETCH_DEADLINE": "2",
           "CLASSIFIER_LOG_LEVEL": "error"}  # the server's stderr is a pipe nobody reads
    del env["CLASSIFIER_ALLOW_PRIVATE_URLS"]
    with served(env) as (base, _):
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
             "--checks", CHECKS, "--max-examples", "20", "--workers", "2", "--request-timeout", "30",
             "--seed", "1", "--generation-database", "none", "--no-color"],
            cwd=tmp_path, env=python_env({}), capture_output=True, text=True, timeout=240,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
