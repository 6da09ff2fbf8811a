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
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in fields.items())
        return text


def configure(settings: Settings, quiet: bool = False) -> None:
    """Route the package's logs to stderr; called by front doors only, never on import."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    package = logging.getLogger("function")
    package.handlers[:] = [handler]
    package.setLevel(logging.ERROR + 10 if quiet else settings.log_level)
    package.propagate = False
