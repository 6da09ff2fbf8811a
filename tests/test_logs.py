"""function/logs.py: JSON lines as Cloud Logging and Knative's collectors read them, and a
text format in which what strangers sent (names, URLs, event ids) cannot forge a line."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import sys

import pytest

from function import logs, request_context
from function.config import Settings
from function.request_context import RequestContext

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


@pytest.fixture
def emit(monkeypatch):
    """Log through logs.configure's handler into a buffer; returns a function giving the lines."""

    package = logging.getLogger("function")
    for attribute in ("handlers", "level", "propagate"):  # put back as they were after the test
        value = getattr(package, attribute)
        monkeypatch.setattr(package, attribute, list(value) if attribute == "handlers" else value)

    def configured(**settings):
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        logs.configure(Settings(**settings))
        return lambda: [line for line in stream.getvalue().splitlines() if line]

    return configured


def test_json_lines_have_severity_message_logger_and_rfc3339_utc_milliseconds(emit):
    lines = emit(log_format="json")
    logging.getLogger("function.test").warning("careful with %s", "that", extra={"fields": {"count": 3}})
    entry = json.loads(lines()[0])
    assert entry["severity"] == "WARNING" and entry["message"] == "careful with that"
    assert entry["logger"] == "function.test" and entry["count"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry["time"]
    logged = datetime.datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - logged).total_seconds()) < 60
    assert "fields" not in entry and "trace_id" not in entry  # outside a request: no ids


def test_json_lines_in_a_request_carry_its_ids_and_cloud_logging_trace_fields(emit):
    lines = emit(log_format="json", google_cloud_project="my-project")
    with request_context.activate(RequestContext("rid-1", TRACE, SPAN)):
        logging.getLogger("function.test").info("hello")
    entry = json.loads(lines()[0])
    assert (entry["request_id"], entry["trace_id"], entry["span_id"]) == ("rid-1", TRACE, SPAN)
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{TRACE}"
    assert entry["logging.googleapis.com/spanId"] == SPAN


def test_no_cloud_logging_fields_without_a_project(emit):
    lines = emit(log_format="json")
    with request_context.activate(RequestContext("rid-1", TRACE, SPAN)):
        logging.getLogger("function.test").info("hello")
    entry = json.loads(lines()[0])
    assert entry["trace_id"] == TRACE and not any(key.startswith("logging.googleapis.com/") for key in entry)


def test_json_exceptions_and_control_characters_stay_on_one_line(emit):
    lines = emit(log_format="json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("function.test").exception("failed on\nline two")
    [line] = lines()
    entry = json.loads(line)
    assert entry["severity"] == "ERROR" and entry["message"] == "failed on\nline two"
    assert "ValueError: boom" in entry["exception"]


def test_text_lines_in_a_request_end_with_its_ids(emit):
    lines = emit()
    with request_context.activate(RequestContext("rid-2", TRACE, SPAN)):
        logging.getLogger("function.test").info("hello", extra={"fields": {"event": "x"}})
    assert lines()[0].endswith(f'hello event="x" request_id="rid-2" trace_id="{TRACE}" span_id="{SPAN}"')


# --- the text format ---------------------------------------------------------------

FORGED = "2024-01-01 00:00:00,000 INFO function.api: forged"


def record(message: str, *args, fields=None, exc_info=None) -> logging.LogRecord:
    entry = logging.LogRecord("function.pipeline", logging.INFO, __file__, 1, message, args, exc_info)
    if fields is not None:
        entry.fields = fields
    return entry


@pytest.mark.parametrize(
    "name, shown",
    [
        (f"robin.jpg\n{FORGED}", f"robin.jpg\\n{FORGED}"),
        (f"robin.jpg\r{FORGED}", f"robin.jpg\\r{FORGED}"),
        ("robin\x1b[2J.jpg", "robin\\x1b[2J.jpg"),  # a terminal escape: clear the screen
        ("robin\u2028.jpg\x85\x7f", "robin\\u2028.jpg\\x85\\x7f"),
        ("rouge-gorge é.jpg\ttab", "rouge-gorge é.jpg\\ttab"),
    ],
    ids=["newline", "carriage-return", "escape", "unicode-breaks", "printable-kept"],
)
def test_line_breaks_and_controls_in_messages_are_escaped(name, shown):
    text = logs.TextFormatter().format(record("%s: not_an_image", name))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.endswith(f"function.pipeline: {shown}: not_an_image")


def test_fields_are_json_escaped():
    text = logs.TextFormatter().format(record("skipped", fields={"id": f"e1\n{FORGED}", "name": "a\x7fb"}))
    assert text.count("\n") == 0
    assert text.endswith('id="e1\\n' + FORGED + '" name="a\\u007fb"')


def test_every_traceback_line_is_indented_so_none_passes_for_a_record():
    try:
        raise ValueError(f"bad name\n{FORGED}")
    except ValueError:
        text = logs.TextFormatter().format(record("unexpected failure on %s", "x.jpg", exc_info=sys.exc_info()))
    first, *rest = text.splitlines()
    assert first.endswith("unexpected failure on x.jpg")
    assert rest and all(line.startswith("    ") for line in rest)
    assert f"    {FORGED}" in rest
