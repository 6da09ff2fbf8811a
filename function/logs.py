"""Logging set-up for front doors: text for people, one JSON object per line for collectors."""

from __future__ import annotations

import datetime
import json
import logging
import sys

from pythonjsonlogger import json as jsonlogger
from pythonjsonlogger.core import RESERVED_ATTRS

from .config import Settings
from .request_context import LogFilter

# Fields Cloud Logging lifts out of a JSON line to group a request's lines under its trace.
CLOUD_TRACE = "logging.googleapis.com/trace"
CLOUD_SPAN_ID = "logging.googleapis.com/spanId"


class JsonFormatter(jsonlogger.JsonFormatter):
    """python-json-logger with the field names Cloud Logging and Knative's collectors read
    (`severity`, `message`, `time` in RFC 3339 UTC with milliseconds), a record's `fields`
    at the top level, and the Cloud Logging trace fields when the project is known."""

    def __init__(self, project: str = ""):
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "severity", "name": "logger", "exc_info": "exception"},
            reserved_attrs=[*RESERVED_ATTRS, "fields"],
        )
        self.project = project

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.update(getattr(record, "fields", {}))
        if self.project and "trace_id" in log_data:
            log_data[CLOUD_TRACE] = f"projects/{self.project}/traces/{log_data['trace_id']}"
            log_data[CLOUD_SPAN_ID] = log_data["span_id"]


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
    handler.setFormatter(JsonFormatter(settings.google_cloud_project) if settings.log_format == "json"
                         else TextFormatter())
    handler.addFilter(LogFilter())  # every line of a request names it
    package = logging.getLogger("function")
    package.handlers[:] = [handler]
    package.setLevel(logging.ERROR + 10 if quiet else settings.log_level)
    package.propagate = False
