"""The text log format: what strangers sent (names, URLs, event ids) cannot forge a line."""

from __future__ import annotations

import logging
import sys

import pytest

from function import logs

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
