"""function/request_context.py: request ids, incoming trace context, and carrying both to threads."""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading

import pytest

from function import request_context
from function.request_context import LogFilter, RequestContext, from_headers

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def test_request_id_comes_from_x_request_id_then_the_execution_id_then_is_made_up():
    both = from_headers({"X-Request-Id": "req-1", "Function-Execution-Id": "exec-1"})
    assert (both.request_id, both.request_id_from) == ("req-1", "header")
    execution = from_headers({"Function-Execution-Id": "exec-1"})
    assert (execution.request_id, execution.request_id_from) == ("exec-1", "execution")
    made = [from_headers({}) for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", c.request_id) and c.request_id_from == "generated" for c in made)
    assert made[0].request_id != made[1].request_id


@pytest.mark.parametrize("sent", ["", "   ", "has space", "tab\tinside", "new\nline", "é", "x" * 129])
def test_unusable_request_ids_are_replaced(sent):
    """An id goes back in a header and into every log line: visible ASCII, at most 128 characters."""
    context = from_headers({"X-Request-Id": sent})
    assert context.request_id != sent and context.request_id_from == "generated"


def test_a_request_id_of_128_visible_characters_is_kept():
    sent = "A-z0-9_.:/+=@!~" + "x" * 113
    assert from_headers({"X-Request-Id": sent}).request_id == sent


@pytest.mark.parametrize("flags, sampled", [("01", True), ("00", False), ("03", True), ("02", False)])
def test_traceparent_gives_trace_span_and_sampling(flags, sampled):
    context = from_headers({"traceparent": f"00-{TRACE}-{SPAN}-{flags}"})
    assert (context.trace_id, context.span_id, context.sampled, context.incoming_trace) == (TRACE, SPAN, sampled, True)
    assert context.traceparent() == f"00-{TRACE}-{SPAN}-{'01' if sampled else '00'}"


@pytest.mark.parametrize("header", [
    f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
    f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{SPAN}-01",  # upper case is not W3C
    f"00-{TRACE[:-1]}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four parts
    "garbage",
])
def test_invalid_traceparent_starts_a_new_trace(header):
    context = from_headers({"traceparent": header})
    assert not context.incoming_trace and context.trace_id != TRACE
    assert re.fullmatch(r"[0-9a-f]{32}", context.trace_id) and re.fullmatch(r"[0-9a-f]{16}", context.span_id)


def test_a_future_traceparent_version_may_carry_more_parts():
    assert from_headers({"traceparent": f"01-{TRACE}-{SPAN}-01-more"}).trace_id == TRACE


def test_x_cloud_trace_context_span_is_decimal_and_becomes_hex():
    context = from_headers({"X-Cloud-Trace-Context": "105445AA7843BC8BF206B12000100000/1234567890123456789;o=1"})
    assert context.trace_id == "105445aa7843bc8bf206b12000100000"
    assert context.span_id == f"{1234567890123456789:016x}" and context.sampled and context.incoming_trace


def test_x_cloud_trace_context_without_span_or_options():
    context = from_headers({"X-Cloud-Trace-Context": TRACE})
    assert context.trace_id == TRACE and re.fullmatch(r"[0-9a-f]{16}", context.span_id) and not context.sampled


def test_traceparent_wins_over_x_cloud_trace_context():
    context = from_headers({"traceparent": f"00-{TRACE}-{SPAN}-01",
                            "X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1"})
    assert (context.trace_id, context.span_id) == (TRACE, SPAN)


def test_an_invalid_traceparent_falls_back_to_x_cloud_trace_context():
    context = from_headers({"traceparent": "nonsense", "X-Cloud-Trace-Context": f"{TRACE}/1;o=0"})
    assert (context.trace_id, context.span_id, context.sampled) == (TRACE, "0000000000000001", False)


def test_event_id_replaces_a_made_up_or_execution_id_but_not_the_callers():
    for headers, expected in (({}, "event-7"), ({"Function-Execution-Id": "exec"}, "event-7"),
                              ({"X-Request-Id": "mine"}, "mine")):
        with request_context.activate(from_headers(headers)) as context:
            request_context.adopt_event_id("event-7")
        assert context.request_id == expected
    with request_context.activate(from_headers({})) as context:
        request_context.adopt_event_id("not a header value")
    assert context.request_id != "not a header value"


def test_carry_runs_pool_work_in_the_requests_context():
    context = from_headers({"X-Request-Id": "pooled"})

    def seen(_):
        current = request_context.current()
        return current.request_id if current else None

    with request_context.activate(context), concurrent.futures.ThreadPoolExecutor(3) as pool:
        carried = list(pool.map(request_context.carry(seen), range(6)))
        bare = list(pool.map(seen, range(3)))
    assert carried == ["pooled"] * 6
    assert bare == [None] * 3  # pool threads do not inherit context variables by themselves
    assert request_context.current() is None  # and the block restored what was there before


def test_notes_outside_a_request_are_ignored():
    request_context.note_images(1, 1)  # the CLI classifies outside any request
    request_context.set_door("json")
    assert request_context.current() is None and request_context.traceparent() is None


def test_log_filter_adds_the_ids_to_fields_in_any_thread():
    record = logging.LogRecord("function.x", logging.INFO, __file__, 1, "hello", None, None)
    record.fields = {"event": "image"}
    LogFilter().filter(record)
    assert record.fields == {"event": "image"}  # outside a request: untouched
    context = RequestContext("rid", TRACE, SPAN)
    out = {}

    def log():
        out["record"] = logging.LogRecord("function.x", logging.INFO, __file__, 1, "hi", None, None)
        LogFilter().filter(out["record"])

    with request_context.activate(context):
        thread = threading.Thread(target=request_context.carry(log))
        thread.start()
        thread.join()
        LogFilter().filter(record)
    assert record.fields == {"event": "image", "request_id": "rid", "trace_id": TRACE, "span_id": SPAN}
    assert out["record"].fields == {"request_id": "rid", "trace_id": TRACE, "span_id": SPAN}
