"""Which request a piece of work belongs to: its id and trace, in a context variable.

One `RequestContext` per answered HTTP request (function/access.py), kept in a
`contextvars.ContextVar` as functions-framework's execution_id.py does, so that any log
line can name its request without the id being passed around: `LogFilter` adds the ids
to every record. Threads do not inherit context variables, so work handed to a pool goes
through `carry`, or its log lines (and spans) lose the request.

Every request has a trace id, so that every line can be grouped by one: from W3C
`traceparent`, else Google's `X-Cloud-Trace-Context`, else made up here. With tracing on
(function/tracing.py) the request's own span replaces the span id.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
EXECUTION_ID_HEADER = "Function-Execution-Id"  # functions-framework sets one on every request
TRACEPARENT_HEADER = "traceparent"
CLOUD_TRACE_HEADER = "X-Cloud-Trace-Context"

# Ids taken from outside: visible ASCII and bounded, so they are safe in a header and a log line.
_FOREIGN_ID = re.compile(r"[\x21-\x7e]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16


@dataclasses.dataclass
class RequestContext:
    """One request as logs, metrics and the reply event see it; filled in while it is answered."""

    request_id: str
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits: the caller's span, or ours when tracing is on
    sampled: bool = False
    incoming_trace: bool = False  # the trace came with the request (not made up here)
    request_id_from: str = "generated"  # "header", "event", "execution" or "generated"
    door: str = "other"  # json, query, upload, event or other (metrics and the request line)
    error: str = ""  # the error code of an error answer
    images_ok: int = 0
    images_failed: int = 0

    def traceparent(self) -> str:
        """This request's place in its trace, as W3C writes it (the reply event carries it)."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("request_context", default=None)


def from_headers(headers: Mapping[str, str]) -> RequestContext:
    """The request id (X-Request-Id, else the execution id, else a new one) and the trace."""
    request_id, origin = uuid.uuid4().hex, "generated"
    for header, source in ((REQUEST_ID_HEADER, "header"), (EXECUTION_ID_HEADER, "execution")):
        value = (headers.get(header) or "").strip()
        if _FOREIGN_ID.fullmatch(value):
            request_id, origin = value, source
            break
    trace = _incoming_trace(headers)
    if trace is None:
        return RequestContext(request_id, secrets.token_hex(16), secrets.token_hex(8), request_id_from=origin)
    trace_id, span_id, sampled = trace
    return RequestContext(request_id, trace_id, span_id, sampled, incoming_trace=True, request_id_from=origin)


def _incoming_trace(headers: Mapping[str, str]) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) from traceparent, else X-Cloud-Trace-Context."""
    match = _TRACEPARENT.fullmatch((headers.get(TRACEPARENT_HEADER) or "").strip())
    if (match and match[1] != "ff" and not (match[1] == "00" and match[5])
            and match[2] != _NO_TRACE and match[3] != _NO_SPAN):
        return match[2], match[3], bool(int(match[4], 16) & 1)
    match = _CLOUD_TRACE.fullmatch((headers.get(CLOUD_TRACE_HEADER) or "").strip())
    if match and match[1].lower() != _NO_TRACE:
        span = int(match[2] or 0)  # decimal here, hex everywhere else
        span_id = f"{span:016x}" if 0 < span < 2**64 else secrets.token_hex(8)
        return match[1].lower(), span_id, match[3] == "1"
    return None


@contextlib.contextmanager
def activate(context: RequestContext) -> Iterator[RequestContext]:
    """`context` is the current request's for the duration of the block (this thread only)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current() -> RequestContext | None:
    return _current.get()


def carry(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn`, to be run on another thread in a copy of the calling thread's context: the
    request (and the current span) go along. Each call runs in its own copy, since one
    context cannot be entered by two threads at once."""
    context = contextvars.copy_context()

    def run(*args, **kwargs) -> T:
        return context.copy().run(fn, *args, **kwargs)

    return run


def adopt_event_id(event_id: str) -> None:
    """A CloudEvent's id names the request unless the caller sent X-Request-Id: unlike an
    execution id, which functions-framework makes up for every request, it is the same in
    every retry of the event."""
    context = _current.get()
    if context is not None and context.request_id_from != "header" and _FOREIGN_ID.fullmatch(event_id):
        context.request_id, context.request_id_from = event_id, "event"


def set_door(door: str) -> None:
    context = _current.get()
    if context is not None:
        context.door = door


def note_error(code: str) -> None:
    context = _current.get()
    if context is not None:
        context.error = code


def note_images(ok: int, failed: int) -> None:
    """Count a classification's images toward the current request (nothing outside one: the CLI)."""
    context = _current.get()
    if context is not None:
        context.images_ok += ok
        context.images_failed += failed


def traceparent() -> str | None:
    context = _current.get()
    return None if context is None else context.traceparent()


class LogFilter(logging.Filter):
    """Adds the current request's ids to a record's `fields`, which both log formats print;
    attached to the handler, so records of every module's logger get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            record.fields = {**getattr(record, "fields", {}), "request_id": context.request_id,
                             "trace_id": context.trace_id, "span_id": context.span_id}
        return True
