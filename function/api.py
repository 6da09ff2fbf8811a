"""The HTTP front door: route, parse, call the pipeline, encode; every error as JSON.

functions-framework sends every path and method to one function, so routing lives
here. One status map turns our errors into answers, and a catch-all keeps any
surprise a JSON 500 without a traceback (none is expected; tests fuzz for it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import flask

from . import events
from .errors import BadRequest, ClassifierError, MethodNotAllowed, ModelUnavailable, NotFound, RequestTooLarge
from .pipeline import Classifier

logger = logging.getLogger(__name__)

MAX_TOP_K = 20
JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class ClassifyRequest:
    urls: tuple[str, ...]
    top_k: int


def parse_json_body(body: bytes, default_top_k: int) -> ClassifyRequest:
    """`{"urls": [...], "top_k": k}` or a BadRequest naming what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest('body must be a JSON object like {"urls": ["https://..."]}')
    return ClassifyRequest(_urls(payload.get("urls")), _top_k(payload.get("top_k", default_top_k)))


def parse_query(args: Mapping[str, Any], default_top_k: int) -> ClassifyRequest:
    """`?url=A&url=B&top_k=3` (werkzeug MultiDict)."""
    urls = args.getlist("url")
    raw_k = args.get("top_k")
    if raw_k is None:
        top_k = default_top_k
    else:
        try:
            top_k = int(raw_k)
        except ValueError:
            raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw_k!r}") from None
    return ClassifyRequest(_urls(urls or None), _top_k(top_k))


def _urls(value: Any) -> tuple[str, ...]:
    if value is None:
        raise BadRequest("missing 'urls': give a list of image URLs")
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise BadRequest("'urls' must be a list of strings")
    if not value:
        raise BadRequest("'urls' is empty: give at least one image URL")
    return tuple(value)


def _top_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return value


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype=JSON, headers=dict(headers or {}))


def error_response(error: ClassifierError) -> flask.Response:
    headers = {}
    if isinstance(error, ModelUnavailable):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    response = json_response({"error": error.to_dict()}, error.status, headers)
    if isinstance(error, RequestTooLarge):
        # functions-framework reads the whole body after every non-streamed response;
        # a streamed one leaves the oversized body unread (the server discards it).
        response.response = iter([response.get_data()])
    return response


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, never more than `limit` bytes in memory."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"request body is {request.content_length} bytes, the limit is {limit}")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise RequestTooLarge(f"request body is larger than {limit} bytes")
    return body


class HttpApp:
    """`classify`'s body: one instance per process, built from a Classifier."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self.settings = classifier.settings
        self.events = events.EventHandler(classifier)

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            return self.route(request)
        except ClassifierError as exc:
            return error_response(exc)
        except Exception:  # noqa: BLE001 - the one catch-all: log it, answer JSON
            logger.exception("unhandled error on %s %s", request.method, request.path)
            return json_response({"error": {"code": "internal", "message": "internal error"}}, 500)

    def route(self, request: flask.Request) -> flask.Response:
        path = request.path.rstrip("/") or "/"
        if path == "/healthz":
            _allow(request, "GET", "HEAD")
            return json_response({"status": "ok"})
        if path != "/":
            raise NotFound(f"no such path: {request.path}")
        _allow(request, "GET", "POST")
        if request.method == "GET":
            return self.classify(parse_query(request.args, self.settings.top_k))
        return self.post(request)

    def post(self, request: flask.Request) -> flask.Response:
        if events.is_cloud_event(request.headers):
            return self.event(request)
        if request.mimetype != JSON:
            raise BadRequest(f"POST a JSON body with Content-Type: {JSON} (got {request.mimetype or 'none'!r})")
        body = read_body(request, self.settings.max_request_bytes)
        return self.classify(parse_json_body(body, self.settings.top_k))

    def classify(self, parsed: ClassifyRequest) -> flask.Response:
        return json_response(self.classifier.classify_urls(parsed.urls, parsed.top_k))

    def event(self, request: flask.Request) -> flask.Response:
        """A storage CloudEvent: the reply event in binary mode, or 204 when it is skipped."""
        reply = self.events.handle(request.headers, read_body(request, self.settings.max_request_bytes))
        if reply is None:
            return flask.Response(status=204)
        headers, body = reply
        return flask.Response(body, headers=headers)


def _allow(request: flask.Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(methods)}")
