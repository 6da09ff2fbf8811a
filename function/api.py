"""The HTTP front door: route, parse, call the pipeline, encode; every error as JSON.

functions-framework sends every path and method to one function, so routing lives
here. One status map turns our errors into answers, and a catch-all keeps any
surprise a JSON 500 without a traceback (none is expected; tests fuzz for it).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import flask
from werkzeug.exceptions import ClientDisconnected

from . import access, events, metrics, request_context, uploads
from .errors import (
    BadRequest,
    ClassifierError,
    MethodNotAllowed,
    ModelUnavailable,
    NotFound,
    RequestTimeout,
    RequestTooLarge,
    Unauthenticated,
)
from .options import MAX_TOP_K, check_top_k
from .pipeline import Classifier
from .redaction import redact

logger = logging.getLogger(__name__)

ROUTES = frozenset({"/", "/healthz", "/models", "/openapi.json", metrics.PATH})
JSON = "application/json"
HTML = "text/html"
MULTIPART = "multipart/form-data"
# The page inlines its own script and style (no CDN); thumbnails of pasted URLs load from anywhere.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src * data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'")


@dataclasses.dataclass(frozen=True)
class ClassifyRequest:
    urls: tuple[str, ...]
    top_k: int
    model: str | None = None  # None: the default model


def parse_json_body(body: bytes, default_top_k: int) -> ClassifyRequest:
    """`{"urls": [...], "top_k": k, "model": name}` or a BadRequest naming what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # `[[[[...` deeper than the interpreter's recursion limit
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise BadRequest('body must be a JSON object like {"urls": ["https://..."]}')
    return ClassifyRequest(_urls(payload.get("urls")), check_top_k(payload.get("top_k", default_top_k)),
                           _model(payload.get("model")))


def parse_query(args: Mapping[str, Any], default_top_k: int) -> ClassifyRequest:
    """`?url=A&url=B&top_k=3&model=name` (werkzeug MultiDict)."""
    return ClassifyRequest(_urls(args.getlist("url") or None), *query_options(args, default_top_k))


def query_options(args: Mapping[str, Any], default_top_k: int) -> tuple[int, str | None]:
    """`top_k` and `model` from a query string (GET, and POSTed uploads)."""
    raw_k = args.get("top_k")
    if raw_k is None:
        top_k = default_top_k
    else:
        try:
            top_k = int(raw_k)
        except ValueError:
            raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw_k!r}") from None
    return check_top_k(top_k), _model(args.get("model"))


def _urls(value: Any) -> tuple[str, ...]:
    if value is None:
        raise BadRequest("missing 'urls': give a list of image URLs")
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise BadRequest("'urls' must be a list of strings")
    if not value:
        raise BadRequest("'urls' is empty: give at least one image URL")
    return tuple(value)


def _model(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise BadRequest(f"model must be a model name (GET /models lists them), got {value!r}")
    return value


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype=JSON, headers=dict(headers or {}))


def error_response(error: ClassifierError) -> flask.Response:
    headers = {}
    if isinstance(error, ModelUnavailable):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 6750: what the 401 asks for
    return json_response({"error": error.to_dict()}, error.status, headers)


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, never more than `limit` bytes in memory. A body that ends before
    its length (the server cut a client that sent too slowly, or the client went away) is
    a 408, never a truncated body taken for the whole; bad chunked framing is a 400."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"request body is {declared} bytes, the limit is {limit}")
    try:
        body = request.stream.read(limit + 1)
    except (ClientDisconnected, OSError):
        raise RequestTimeout("the request body did not arrive in time") from None
    except Exception as exc:  # noqa: BLE001 - the server's own framing errors (a bad chunk size)
        raise BadRequest(f"the request body is malformed ({type(exc).__name__})") from None
    if declared is not None and len(body) < declared:
        raise RequestTimeout(f"the request body ended after {len(body)} of {declared} bytes")
    if len(body) > limit:
        raise RequestTooLarge(f"request body is larger than {limit} bytes")
    return body


@functools.cache
def resource(name: str) -> bytes:
    """A file shipped in the package (the page, the OpenAPI document), read once."""
    return importlib.resources.files(__package__).joinpath(name).read_bytes()


class HttpApp:
    """`classify`'s body: one instance per process, built from a Classifier."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self.settings = classifier.settings
        self.events = events.EventHandler(classifier)
        self.metrics = metrics.wsgi_app(self.settings.metrics_dir)

    def __call__(self, request: flask.Request) -> flask.Response:
        path = _path(request)
        return access.serve(request, self.respond, path if path in ROUTES else "")

    def respond(self, request: flask.Request) -> flask.Response:
        response = self.answer(request)
        if request.content_length or request.headers.get("Transfer-Encoding"):
            # functions-framework reads the whole request body into memory after every
            # non-streamed response. Streamed, the answer leaves what no handler read (an
            # oversized or unwanted body) to the server, which discards it unkept.
            response.response = iter([response.get_data()])
        return response

    def answer(self, request: flask.Request) -> flask.Response:
        try:
            return self.route(request)
        except ClassifierError as exc:
            request_context.note_error(exc.code)
            return error_response(exc)
        except Exception:  # noqa: BLE001 - the one catch-all: log it, answer JSON
            logger.exception("unhandled error on %s %s", request.method, request.path)
            request_context.note_error("internal")
            return json_response({"error": {"code": "internal", "message": "internal error"}}, 500)

    def route(self, request: flask.Request) -> flask.Response:
        path = _path(request)
        if path == "/healthz":
            _allow(request, "GET", "HEAD")
            return json_response({"status": "ok"})
        if path == "/models":
            _allow(request, "GET")
            return json_response(self.models())
        if path == "/openapi.json":
            _allow(request, "GET")
            return flask.Response(resource("openapi.json"), mimetype=JSON)
        if path == metrics.PATH:
            _allow(request, "GET")
            return flask.Response.from_app(self.metrics, request.environ)
        if path != "/":
            raise NotFound(f"no such path: {request.path}")
        _allow(request, "GET", "POST")
        if request.method == "GET":
            if "url" not in request.args and request.accept_mimetypes.best_match([JSON, HTML]) == HTML:
                return flask.Response(resource("static/index.html"), mimetype=HTML,
                                      headers={"Content-Security-Policy": PAGE_POLICY})
            request_context.set_door("query")
            return self.classify(parse_query(request.args, self.settings.top_k))
        return self.post(request)

    def post(self, request: flask.Request) -> flask.Response:
        if events.is_cloud_event(request.headers):
            request_context.set_door("event")
            return self.event(request)
        if request.mimetype == MULTIPART or request.mimetype.startswith("image/"):
            request_context.set_door("upload")
            return self.upload(request)
        request_context.set_door("json")
        if request.mimetype != JSON:
            raise BadRequest(f"POST a JSON body with Content-Type: {JSON}, a {MULTIPART} form "
                             f"or an image/* body (got {request.mimetype or 'none'!r})")
        body = read_body(request, self.settings.max_request_bytes)
        return self.classify(parse_json_body(body, self.settings.top_k))

    def classify(self, parsed: ClassifyRequest) -> flask.Response:
        return json_response(self.classifier.classify_urls(parsed.urls, parsed.top_k, parsed.model))

    def upload(self, request: flask.Request) -> flask.Response:
        """`image` parts of a form, or one raw image named by `?name=`; options in the query."""
        body = read_body(request, self.settings.max_upload_bytes)
        if request.mimetype == MULTIPART:
            sources = uploads.multipart_sources(body, request.mimetype_params, self.settings)
        else:
            name = request.args.get("name") or uploads.DEFAULT_NAME
            sources = [uploads.image_source(name, body, self.settings.max_image_bytes)]
        top_k, model = query_options(request.args, self.settings.top_k)
        return json_response(self.classifier.classify(sources, top_k, model))

    def models(self) -> dict[str, Any]:
        """GET /models: the registry as configured, and which models are loaded (loads none)."""
        return {
            "default": self.classifier.default_model,
            "models": [{**_public(lazy.spec.describe()), "loaded": lazy.loaded}
                       for lazy in self.classifier.models.values()],
        }

    def event(self, request: flask.Request) -> flask.Response:
        """A storage CloudEvent: the reply event in binary mode, or 204 when it is skipped."""
        self.events.authenticate(request.headers)  # before the body is read: strangers get a 401 only
        reply = self.events.handle(request.headers, read_body(request, self.settings.max_request_bytes))
        if reply is None:
            return flask.Response(status=204)
        headers, body = reply
        return flask.Response(body, headers=headers)


def _public(described: dict[str, Any]) -> dict[str, Any]:
    """A model's description for strangers: its URLs without query strings (signatures)."""
    return {**described, "url": redact(described["url"]), "labels": redact(described["labels"])}


def _path(request: flask.Request) -> str:
    """The path as routed: a trailing slash makes no difference."""
    return request.path.rstrip("/") or "/"


def _allow(request: flask.Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(methods)}")
