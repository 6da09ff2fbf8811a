"""Failing gracefully: a model that cannot load is a 503 with Retry-After and a clear
code, retried with backoff while the process keeps serving; one image's crash stays its own."""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import time

import numpy as np
import pytest
import requests

from conftest import function_client
from fixtures import images as test_images
from fixtures.hub_module import write_labels
from fixtures.models import COLOUR_LABELS, build_hub_archive, colour_model
from function import images, model
from function.config import load_settings
from function.pipeline import Classifier


class FakeClock:
    """`time` as function.model sees it: monotonic() moves only when a test says so."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(model, "time", fake)
    return fake


@pytest.fixture(scope="session")
def broken_models(stand_in, tmp_path_factory) -> dict[str, str]:
    """URLs on the stand-in's server of models and labels that cannot be used."""
    work = tmp_path_factory.mktemp("broken-models")
    small = build_hub_archive(colour_model, work, "small-input", height=100, width=100)
    server = stand_in.server
    return {
        "missing": server.url("/models/missing.tar.gz"),
        "garbage": server.add("/models/garbage.tar.gz", np.random.default_rng(7).bytes(50_000),
                              content_type="application/x-gzip"),
        "wrong_signature": server.add("/models/small-input.tar.gz", small.read_bytes(),
                                      content_type="application/x-gzip"),
        "three_labels": server.add("/labels-3.csv", write_labels(work / "l3.csv", COLOUR_LABELS[:3], (0, 1, 2))
                                   .read_bytes(), content_type="text/csv"),
        "refused": "http://127.0.0.1:9/models/down.tar.gz",  # the discard port: nothing listens
    }


def client_for(monkeypatch, stand_in, tmp_path, **env: str):
    """The HTTP target with the stand-in's settings overridden by `env`, own model cache."""
    for key, value in stand_in.env(TFHUB_CACHE_DIR=str(tmp_path / "cache"), **env).items():
        monkeypatch.setenv(key, value)
    client = function_client()
    return client, sys.modules["main"]._app.classifier.model()


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


@pytest.mark.parametrize(
    "model_url, labels_url, code",
    [
        ("missing", None, "model_unavailable"),
        ("garbage", None, "model_unavailable"),
        ("refused", None, "model_unavailable"),
        ("wrong_signature", None, "bad_model"),
        (None, "three_labels", "bad_model"),
        (None, "missing", "model_unavailable"),
    ],
    ids=["404", "bad-archive", "network-down", "wrong-signature", "labels-short", "labels-404"],
)
def test_an_unloadable_model_is_503_then_retried_with_backoff(
    monkeypatch, stand_in, tmp_path, broken_models, clock, model_url, labels_url, code
):
    env = {"CLASSIFIER_MODEL_RETRY_SECONDS": "5"}
    if model_url:
        env["CLASSIFIER_MODEL_URL"] = broken_models[model_url]
    if labels_url:
        env["CLASSIFIER_LABELS_URL"] = broken_models[labels_url]
    client, lazy = client_for(monkeypatch, stand_in, tmp_path, **env)
    request = {"urls": [stand_in.image_url("while-broken.png")]}

    first = client.post("/", json=request)
    assert first.status_code == 503
    assert error_of(first)["code"] == code
    assert first.headers["Retry-After"] == "5"
    assert lazy.load_count == 1

    clock.now += 2  # within the backoff: fail fast, same code, no new load
    second = client.post("/", json=request)
    assert (second.status_code, error_of(second)["code"], second.headers["Retry-After"]) == (503, code, "3")
    assert lazy.load_count == 1
    assert client.get("/healthz").status_code == 200

    clock.now += 4  # past it: the load is tried again, and the next pause doubles
    third = client.post("/", json=request)
    assert (third.status_code, error_of(third)["code"], third.headers["Retry-After"]) == (503, code, "10")
    assert lazy.load_count == 2


def test_a_model_that_comes_back_is_loaded_on_the_next_retry(monkeypatch, stand_in, tmp_path, clock):
    archive = requests.get(stand_in.model_url, timeout=10).content
    url = stand_in.server.add("/models/flaky.tar.gz", b"not yet", content_type="application/x-gzip")
    client, lazy = client_for(monkeypatch, stand_in, tmp_path, CLASSIFIER_MODEL_URL=url,
                              CLASSIFIER_MODEL_RETRY_SECONDS="1")
    request = {"urls": [stand_in.image_url("after-recovery.png", (250, 5, 5))]}
    assert client.post("/", json=request).status_code == 503

    stand_in.server.add("/models/flaky.tar.gz", archive, content_type="application/x-gzip")
    clock.now += 1.5
    response = client.post("/", json=request)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["results"][0]["predictions"][0]["label"] == "Erithacus rubecula"
    assert lazy.load_count == 2 and lazy.loaded


def test_load_errors_do_not_leak_signed_urls(monkeypatch, stand_in, tmp_path, clock, caplog):
    """The 503 goes to strangers and the error to the logs: an operator's signed model or
    labels URL must be in neither."""
    client, _ = client_for(monkeypatch, stand_in, tmp_path,
                           CLASSIFIER_MODEL_URL=stand_in.model_url + "?sig=SECRET1",
                           CLASSIFIER_LABELS_URL=stand_in.server.url("/labels-gone.csv?token=SECRET2"))
    monkeypatch.setattr(logging.getLogger("function"), "propagate", True)  # main.py turned it off
    caplog.set_level(logging.DEBUG, logger="function")
    response = client.post("/", json={"urls": [stand_in.image_url("leak.png")]})
    assert response.status_code == 503
    assert "/labels-gone.csv" in error_of(response)["message"]
    assert "SECRET" not in response.get_data(as_text=True)
    assert "model load failed" in caplog.text and "SECRET" not in caplog.text


def test_answers_do_not_carry_a_signed_model_url(monkeypatch, stand_in, tmp_path):
    client, _ = client_for(monkeypatch, stand_in, tmp_path, CLASSIFIER_MODEL_URL=stand_in.model_url + "?sig=SECRET1",
                           CLASSIFIER_LABELS_URL=stand_in.labels_url + "?sig=SECRET2")
    response = client.post("/", json={"urls": [stand_in.image_url("signed-model.png")]})
    assert response.status_code == 200
    assert response.get_json()["model"] == stand_in.model_url
    assert "SECRET" not in response.get_data(as_text=True)
    listed = client.get("/models")
    assert listed.get_json()["models"][0]["url"] == stand_in.model_url
    assert "SECRET" not in listed.get_data(as_text=True)


# --- one image's failure stays its own --------------------------------------------------


POISON = test_images.encode(test_images.solid((1, 2, 3)), "PNG")


@pytest.fixture
def poisoned_decode(monkeypatch):
    """images.decode crashes (not an ItemError: a bug) on one particular image."""
    real = images.decode

    def decode(data, *args, **kwargs):
        if data == POISON:
            raise RuntimeError("boom")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(images, "decode", decode)


def test_a_crash_on_one_image_spares_the_others_in_the_request(use_stand_in, stand_in, poisoned_decode):
    poison = stand_in.server.add("/images/poison.png", POISON, content_type="image/png")
    red = stand_in.image_url("poison-red.png", (240, 10, 10))
    blue = stand_in.image_url("poison-blue.png", (10, 10, 240))
    results = Classifier(load_settings()).classify_urls([red, poison, blue])["results"]
    assert results[0]["predictions"][0]["label"] == "Erithacus rubecula"
    assert results[1]["error"]["code"] == "item_failed"
    assert "boom" not in results[1]["error"]["message"]  # internals stay in the log
    assert results[2]["predictions"][0]["label"] == "Cyanistes caeruleus"


def test_a_crash_on_one_image_spares_concurrent_requests(use_stand_in, stand_in, poisoned_decode):
    classifier = Classifier(load_settings())
    poison = stand_in.server.add("/images/poison-c.png", POISON, content_type="image/png")
    green = stand_in.image_url("poison-green.png", (10, 240, 10))
    requests_ = [[green, poison] if i % 2 else [green, green] for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(classifier.classify_urls, requests_))
    for urls, report in zip(requests_, reports):
        for url, result in zip(urls, report["results"]):
            if url == poison:
                assert result["error"]["code"] == "item_failed"
            else:
                assert result["predictions"][0]["label"] == "Picus viridis"
