"""Every Prometheus metric, declared once, and the WSGI app that serves them at GET /metrics.

The names and labels are a public contract (dashboards and alerts are built on them):
docs/observability.md lists them. The code that times each phase observes them where it
already measures (pipeline.py, model.py, access.py), as kserve's metrics.py is used.

With several server workers (prometheus-client's multiprocess mode), PROMETHEUS_MULTIPROC_DIR
must be set before this module is imported: function/metrics_dir.py prepares it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               make_wsgi_app)
from prometheus_client.multiprocess import MultiProcessCollector

# `*_created` series exist only in single-process mode; off, both modes expose the same series.
disable_created_metrics()

PATH = "/metrics"

PER_IMAGE_STAGES = ("fetch", "decode")
PER_CLASSIFICATION_STAGES = ("model_wait", "inference", "total")
# From a cached thumbnail (milliseconds) to a download at the 20 s deadline.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
# From a cached .tflite (a fraction of a second) to a first download plus conversion.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

REQUESTS = Counter(
    "classifier_requests_total", "Answered HTTP requests, by front door and HTTP status.", ["door", "code"])
REQUEST_SECONDS = Histogram(
    "classifier_request_duration_seconds", "Time to answer an HTTP request, errors included, by front door.",
    ["door"], buckets=STAGE_BUCKETS)
IMAGES = Counter(
    "classifier_images_total", "Images classified, by model and outcome: ok or the per-image error code.",
    ["model", "outcome"])
STAGE_SECONDS = Histogram(
    "classifier_stage_seconds", "Time in each pipeline stage: fetch and decode per image; "
    "model_wait, inference and total per classification.", ["stage"], buckets=STAGE_BUCKETS)
MODEL_LOAD_SECONDS = Histogram(
    "classifier_model_load_seconds", "Time to load a model (successful loads), by model and the runtime it runs on.",
    ["model", "runtime"], buckets=LOAD_BUCKETS)
MODEL_LOADS = Counter(
    "classifier_model_loads_total", "Model load attempts, by model and result (ok or error).", ["model", "result"])
# livesum: the workers alive now; a dead worker's requests are not in flight any more.
IN_FLIGHT = Gauge(
    "classifier_in_flight_requests", "HTTP requests being answered now.", multiprocess_mode="livesum")

for _stage in PER_IMAGE_STAGES + PER_CLASSIFICATION_STAGES:  # every stage's histogram is there from the first scrape, at zero
    STAGE_SECONDS.labels(_stage)


@dataclasses.dataclass
class Timer:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this thread's CPU time: what the stage cost the instance


@contextlib.contextmanager
def stage(name: str) -> Iterator[Timer]:
    """Times the block as pipeline stage `name`; observed even when the stage fails."""
    timer = Timer()
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        yield timer
    finally:
        timer.seconds, timer.cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu
        STAGE_SECONDS.labels(name).observe(timer.seconds)


def observe_classification(model: str, outcomes: list[str], seconds: dict[str, float]) -> None:
    """One classification: each image's outcome, and the per-classification stages."""
    for outcome in outcomes:
        IMAGES.labels(model, outcome).inc()
    for name in PER_CLASSIFICATION_STAGES:
        STAGE_SECONDS.labels(name).observe(seconds[name])


def wsgi_app(multiprocess_dir: str = "") -> Callable:
    """prometheus-client's own exposition (content negotiation, gzip) of this process's
    metrics, or, given the workers' shared directory, of all of them together."""
    if not multiprocess_dir:
        return make_wsgi_app(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiprocess_dir)
    return make_wsgi_app(registry)
