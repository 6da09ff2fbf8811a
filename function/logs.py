"""Logging set-up for front doors: text for people, one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import sys

from .config import Settings


class JsonFormatter(logging.Formatter):
    """Cloud Logging and Knative's collectors read `severity` and `message` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line per record for people. Messages quote what strangers sent (names, URLs,
    event ids): their line breaks and control characters are escaped, so no input can
    start a forged log line or drive the terminal; a traceback's own lines are indented,
    so none of them can pass for a record either."""

    # C0 and C1 controls, DEL and the Unicode line and paragraph separators, as Python
    # escapes them (fields need none: json.dumps escapes every one of them)
    ESCAPES = {c: ascii(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(self.ESCAPES)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in fields.items())
        return text

    def formatException(self, ei) -> str:
        return self._indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._indented(super().formatStack(stack_info))

    def _indented(self, text: str) -> str:
        return "\n".join("    " + line.translate(self.ESCAPES) for line in text.splitlines())


def configure(settings: Settings, quiet: bool = False) -> None:
    """Route the package's logs to stderr; called by front doors only, never on import."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    package = logging.getLogger("function")
    package.handlers[:] = [handler]
    package.setLevel(logging.ERROR + 10 if quiet else settings.log_level)
    package.propagate = False
