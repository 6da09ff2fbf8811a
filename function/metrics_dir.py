"""The directory prometheus-client's multiprocess mode shares between a server's workers.

A pre-fork server (gunicorn) answers from several processes; each keeps its metrics in
its own files in PROMETHEUS_MULTIPROC_DIR and GET /metrics adds them up. The library
picks that mode when it is imported, so the directory must exist, empty, and be named in
the environment before anything imports prometheus_client (function.metrics, and so
function.main); then the workers inherit it. This module therefore imports nothing of
prometheus_client until a worker has died.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

from .config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"

_directory = ""  # what `prepare` set up in this process


def prepare(settings: Settings) -> str:
    """For the server's master, first thing, before it loads the app or forks a worker:
    PROMETHEUS_MULTIPROC_DIR as configured (created, emptied of the last run's files) or a
    fresh private directory. Returns its path."""
    global _directory
    path = settings.metrics_dir
    if not path and "prometheus_client.values" in sys.modules:
        raise RuntimeError("metrics_dir.prepare() must run before prometheus_client is imported "
                           "(by function.metrics or function.main): each worker would count alone")
    if path:
        os.makedirs(path, mode=0o700, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):  # the last run's counts (a restarted container)
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="bird-classifier-metrics-")
    os.environ[ENV] = path  # how prometheus-client is told, here and in every worker forked later
    _directory = path
    return path


def child_exit(server, worker) -> None:
    """gunicorn's `child_exit` hook: a dead worker's requests no longer count as in flight
    (its counters and histograms stay in the totals)."""
    if _directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(worker.pid, _directory)
