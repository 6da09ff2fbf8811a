"""Every answered HTTP request: its id and trace, one log line, its metrics and its span.

Whatever the status, the answer carries `X-Request-Id`, and one line says what was asked
and how it went; the request's other lines (per image, from the download threads too)
carry the same ids, so a collector can put them together.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import flask

from . import metrics, request_context, tracing

logger = logging.getLogger(__name__)

MAX_LOGGED_PATH = 256  # a path is the caller's to choose: bounded in the log


def serve(request: flask.Request, answer: Callable[[flask.Request], flask.Response], route: str) -> flask.Response:
    """`answer(request)` as the current request; `route` is the matched path, "" for none."""
    started = time.perf_counter()
    context = request_context.from_headers(request.headers)
    span_name = f"{request.method} {route}" if route else request.method
    span_attributes = {"http.request.method": request.method, "url.path": request.path, "http.route": route}
    # A scrape sees the requests in flight besides itself, as it sees the counts of those before it.
    in_flight = contextlib.nullcontext() if route == metrics.PATH else metrics.IN_FLIGHT.track_inprogress()
    with (request_context.activate(context), in_flight,
          tracing.request_span(span_name, span_attributes, request.headers, context) as answered):
        response = answer(request)
        answered(response.status_code)
        response.headers[request_context.REQUEST_ID_HEADER] = context.request_id
        _record(request, response.status_code, context, time.perf_counter() - started)
    return response


def _record(request: flask.Request, status: int, context: request_context.RequestContext, seconds: float) -> None:
    metrics.REQUESTS.labels(context.door, str(status)).inc()
    metrics.REQUEST_SECONDS.labels(context.door).observe(seconds)
    path = request.path[:MAX_LOGGED_PATH]  # never the query string: it can carry signed URLs
    fields = {
        "event": "request", "method": request.method, "path": path, "status": status,
        "duration_ms": round(seconds * 1000, 1), "door": context.door,
        "images": context.images_ok + context.images_failed, "ok": context.images_ok,
        "failed": context.images_failed,
    }
    if context.error:
        fields["error"] = context.error
    logger.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s %d in %.1f ms",
               request.method, path, status, seconds * 1000, extra={"fields": fields})
