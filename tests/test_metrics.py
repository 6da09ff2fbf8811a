"""function/metrics.py: the declared series, stage timing, and multiprocess mode with real
processes (prometheus-client's files, gunicorn workers under functions-framework)."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from conftest import ROOT, python_env
from function import metrics, metrics_dir
from function.config import Settings
from test_server import served

# A stand-in worker: counts what it is told to, in the multiprocess directory of its environment.
WORKER = """
import sys
from function import metrics
metrics.REQUESTS.labels("json", "200").inc(int(sys.argv[1]))
metrics.STAGE_SECONDS.labels("fetch").observe(float(sys.argv[2]))
if sys.argv[3] == "dies-in-flight":
    metrics.IN_FLIGHT.inc()
"""


def parse(text: str) -> dict:
    """An exposition, read by prometheus-client's own parser: {(sample name, labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposed(app) -> dict:
    response = Client(app).get("/metrics")
    assert response.status_code == 200
    return parse(response.get_data(as_text=True))


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_contracted_metric_is_exposed_with_its_type():
    text = Client(metrics.wsgi_app()).get("/metrics").get_data(as_text=True)
    types_ = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert {name: types_.get(name) for name in (
        "classifier_requests", "classifier_images", "classifier_model_loads", "classifier_stage_seconds",
        "classifier_model_load_seconds", "classifier_in_flight_requests", "classifier_request_duration_seconds",
    )} == {"classifier_requests": "counter", "classifier_images": "counter", "classifier_model_loads": "counter",
           "classifier_stage_seconds": "histogram", "classifier_model_load_seconds": "histogram",
           "classifier_in_flight_requests": "gauge", "classifier_request_duration_seconds": "histogram"}
    samples = parse(text)
    for stage in ("fetch", "decode", "model_wait", "inference", "total"):  # there before any request
        assert ("classifier_stage_seconds_count", (("stage", stage),)) in samples
    assert not any(name.endswith("_created") for name, _ in samples)  # the same series in both modes


def test_a_stage_is_observed_even_when_it_fails():
    before = exposed(metrics.wsgi_app())
    with pytest.raises(ValueError), metrics.stage("decode") as timer:
        time.sleep(0.01)
        raise ValueError("not an image")
    after = exposed(metrics.wsgi_app())
    assert timer.seconds >= 0.01
    assert sample(after, "classifier_stage_seconds_count", stage="decode") == \
        sample(before, "classifier_stage_seconds_count", stage="decode") + 1
    assert sample(after, "classifier_stage_seconds_sum", stage="decode") - \
        sample(before, "classifier_stage_seconds_sum", stage="decode") == pytest.approx(timer.seconds)


@pytest.mark.slow
def test_workers_are_added_up_and_a_dead_worker_leaves_the_in_flight_gauge(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "restored-after-the-test")
    monkeypatch.setattr(metrics_dir, "_directory", "")
    directory = tmp_path / "metrics"  # prepare makes it
    metrics_dir.prepare(Settings(metrics_dir=str(directory)))
    workers = []
    for count, seconds, fate in ((3, 0.2, "exits"), (4, 0.7, "dies-in-flight")):
        process = subprocess.Popen([sys.executable, "-c", WORKER, str(count), str(seconds), fate], cwd=ROOT,
                                   env=python_env({"PROMETHEUS_MULTIPROC_DIR": str(directory)}),
                                   stderr=subprocess.PIPE, text=True)
        assert process.wait(60) == 0, process.stderr.read()
        workers.append(process.pid)
    app = metrics.wsgi_app(str(directory))
    samples = exposed(app)
    assert sample(samples, "classifier_requests_total", door="json", code="200") == 7
    assert sample(samples, "classifier_stage_seconds_count", stage="fetch") == 2
    assert sample(samples, "classifier_stage_seconds_sum", stage="fetch") == pytest.approx(0.9)
    assert sample(samples, "classifier_stage_seconds_bucket", stage="fetch", le="0.25") == 1
    assert sample(samples, "classifier_in_flight_requests") == 1  # the second died mid-request
    metrics_dir.child_exit(None, types.SimpleNamespace(pid=workers[1]))
    samples = exposed(app)
    assert sample(samples, "classifier_in_flight_requests") == 0
    assert sample(samples, "classifier_requests_total", door="json", code="200") == 7  # its counts stay


@pytest.mark.slow
def test_gunicorn_workers_answer_one_scrape_for_all(stand_in, tmp_path):
    """functions-framework with WORKERS=2 in multiprocess mode: whichever worker answers the
    scrape, it counts every request, once both workers have answered some."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**stand_in.env(), "WORKERS": "2", "THREADS": "2", "PROMETHEUS_MULTIPROC_DIR": str(directory),
           "CLASSIFIER_LOG_LEVEL": "warning"}  # the server's stderr is a pipe nobody reads
    with served(env) as (base, _):
        sent = 0
        while len(list(directory.glob("counter_*.db"))) < 2 and sent < 200:  # until both have counted
            requests.get(base + "/nope", timeout=30)  # a new connection each: either worker may take it
            sent += 1
        assert len(list(directory.glob("counter_*.db"))) == 2, f"one worker took all {sent} requests"
        for _ in range(4):  # scrapes, too, land on either worker
            scraped = parse(requests.get(base + "/metrics", timeout=30).text)
            assert sample(scraped, "classifier_requests_total", door="other", code="404") == sent
            assert sample(scraped, "classifier_in_flight_requests") == 0
