"""The production server: functions-framework's `classify` app under gunicorn, with limits
on how much and how slowly a client may send (`python -m function.server`).

functions-framework's own CLI builds gunicorn with `limit_request_line=0` (a request line
of any length, read into memory), no deadline for reading a request, and no way to pass
options. This serves the same app (`create_app`, the HTTP target `classify`) with the
same environment (PORT, WORKERS, THREADS, CLOUD_RUN_TIMEOUT_SECONDS, HOST), plus:
request line and header limits answered 414 / 431 at once, and `receiver.ReceivingWorker`,
whose threads only ever serve requests that have fully arrived (408 for those that do not
arrive within CLASSIFIER_REQUEST_READ_DEADLINE).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gunicorn.app.base
from functions_framework import create_app

from . import metrics_dir
from .config import ConfigError, Settings, load_settings, request_threads
from .receiver import ReceivingWorker

MAIN = Path(__file__).with_name("main.py")  # the functions-framework source with `classify`
# gunicorn's largest request line (a GET of several long URLs fits; longer lists: POST them),
# and its defaults for header count and size.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELDS = 100
MAX_HEADER_FIELD_BYTES = 8190


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """Every gunicorn option the server runs with: the one place to add one."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": request_threads(settings),
        "worker_class": ReceivingWorker,
        "timeout": settings.timeout_seconds,
        "limit_request_line": MAX_REQUEST_LINE,
        "limit_request_fields": MAX_HEADER_FIELDS,
        "limit_request_field_size": MAX_HEADER_FIELD_BYTES,
        "loglevel": "error",  # as functions-framework: the function logs its own lines
        "child_exit": metrics_dir.child_exit,  # a dead worker's requests leave the in-flight gauge
    }


class Server(gunicorn.app.base.BaseApplication):
    """gunicorn around an already built WSGI app; workers read `settings` through it."""

    def __init__(self, settings: Settings, app):
        self.settings = settings
        self.application = app
        super().__init__()

    def load_config(self):
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


def main() -> None:
    try:
        settings = load_settings()
        # Before the app (and with it prometheus_client) is imported: every worker then
        # counts into the shared directory, and GET /metrics adds them up.
        metrics_dir.prepare(settings)
        app = create_app(target="classify", source=str(MAIN))
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    Server(settings, app).run()


if __name__ == "__main__":
    main()
