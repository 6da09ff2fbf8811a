"""The pipeline on the stand-in model, through the real tensorflow_hub download path."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref

import numpy as np
import pytest

from fixtures import images as test_images
from fixtures.models import COLOUR_LABELS, expected_colour_scores
from function.config import load_settings
from function.errors import FetchFailed
from function.pipeline import Classifier, Source, top_predictions


@pytest.fixture(params=["litert", "tensorflow"])
def classifier(request, use_stand_in, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_RUNTIME", request.param)
    return Classifier(load_settings())


COLOURS = {"red": (230, 20, 30), "green": (10, 200, 40), "blue": (20, 40, 220), "dark": (25, 12, 5)}


def expected(colour, k=3):
    scores = expected_colour_scores(test_images.pixels01(test_images.solid(colour)))
    order = np.argsort(-scores)[:k]
    return [(COLOUR_LABELS[i], float(scores[i])) for i in order]


def test_predictions_match_the_model_on_both_runtimes(classifier, stand_in):
    urls = [stand_in.image_url(f"{name}.png", colour) for name, colour in COLOURS.items()]
    report = classifier.classify_urls(urls, top_k=3)
    assert report["model"] == stand_in.model_url
    for (name, colour), result in zip(COLOURS.items(), report["results"]):
        got = [(p["label"], p["score"]) for p in result["predictions"]]
        want = expected(colour)
        assert [label for label, _ in got] == [label for label, _ in want], name
        for (_, score), (_, want_score) in zip(got, want):
            assert score == pytest.approx(want_score, abs=2e-4)


def test_results_keep_request_order_and_bad_urls_fail_alone(classifier, stand_in):
    good = stand_in.image_url("order-blue.png", COLOURS["blue"])
    missing = stand_in.server.url("/images/nope.png")
    html = stand_in.server.add("/images/page.jpg", b"<html>hi</html>", content_type="image/jpeg")
    red = stand_in.image_url("order-red.png", COLOURS["red"])
    report = classifier.classify_urls([good, missing, "ftp://example.invalid/x.png", html, red])
    results = report["results"]
    assert [r["url"] for r in results] == [good, missing, "ftp://example.invalid/x.png", html, red]
    assert results[0]["predictions"][0]["label"] == "Cyanistes caeruleus"
    assert results[1]["error"]["code"] == "http_status"
    assert results[2]["error"]["code"] == "forbidden_url"
    assert results[3]["error"]["code"] == "not_an_image"
    assert results[4]["predictions"][0]["label"] == "Erithacus rubecula"


def test_five_urls_make_one_model_call_and_one_load(use_stand_in, stand_in):
    classifier = Classifier(load_settings())
    lazy = classifier.model()
    loaded = lazy.get()
    calls = []
    original = loaded.predict

    def counting(batch, factor):
        calls.append(batch.shape)
        return original(batch, factor)

    object.__setattr__(loaded, "predict", counting)
    urls = [stand_in.image_url(f"five-{i}.png", (40 * i, 100, 50)) for i in range(5)]
    classifier.classify_urls(urls)
    classifier.classify_urls(urls)
    assert calls == [(5, 224, 224, 3), (5, 224, 224, 3)]
    assert lazy.load_count == 1


def test_the_load_readies_the_model_for_the_first_requests_batch(use_stand_in, stand_in, monkeypatch):
    """LiteRT's first call at a new, larger batch plans and allocates; the load, which the
    downloads hide, makes that call instead of the request."""
    from function import runtime

    shapes = []
    real_load = runtime.load

    def recording_load(*args, **kwargs):
        predict = real_load(*args, **kwargs)

        def recorded(batch, factor):
            shapes.append(batch.shape[0])
            return predict(batch, factor)

        return recorded

    monkeypatch.setattr(runtime, "load", recording_load)
    urls = [stand_in.image_url(f"ready-{i}.png", (30 * i, 90, 60)) for i in range(4)]
    Classifier(load_settings()).classify_urls(urls)
    assert shapes == [4, 4]  # the load's probe, then the request's own call


def test_concurrent_first_requests_share_one_load(use_stand_in, stand_in):
    classifier = Classifier(load_settings())
    url = stand_in.image_url("concurrent.png", COLOURS["green"])
    barrier = threading.Barrier(6)
    results = []

    def worker():
        barrier.wait()
        results.append(classifier.classify_urls([url]))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6
    assert all(r["results"][0]["predictions"][0]["label"] == "Picus viridis" for r in results)
    assert classifier.model().load_count == 1


def test_local_paths_work_as_model_and_labels(monkeypatch, stand_in):
    monkeypatch.setenv("CLASSIFIER_MODEL_URL", str(stand_in.module_dir))
    monkeypatch.setenv("CLASSIFIER_LABELS_URL", str(stand_in.labels_path))
    monkeypatch.setenv("CLASSIFIER_ALLOW_PRIVATE_URLS", "1")
    report = Classifier(load_settings()).classify_urls([stand_in.image_url("local.png", COLOURS["dark"])])
    assert report["results"][0]["predictions"][0]["label"] == "Corvus corax"


@pytest.mark.parametrize("k", [1, 3, 4, 20])
def test_top_k_is_sorted_and_bounded_by_classes(k):
    scores = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    names = {i: f"c{i}" for i in range(5)}
    got = top_predictions(scores, names, k)
    assert [p["label"] for p in got] == ["c1", "c3", "c4", "c0", "c2"][: min(k, 5)]
    assert [p["score"] for p in got] == sorted((p["score"] for p in got), reverse=True)


def test_timings_name_every_phase(use_stand_in, stand_in):
    report = Classifier(load_settings()).classify_urls([stand_in.image_url("t.png")])
    assert set(report["timings_ms"]) == {"fetch", "decode", "model_load", "model_wait", "inference", "total"}
    assert report["timings_ms"]["model_load"] > 0


def test_a_url_given_twice_is_fetched_and_decoded_once_and_answered_at_each_place(use_stand_in, stand_in):
    red = stand_in.image_url("twice-red.png", COLOURS["red"])
    blue = stand_in.image_url("twice-blue.png", COLOURS["blue"])
    missing = stand_in.server.url("/images/twice-missing.png")
    report = Classifier(load_settings()).classify_urls([red, blue, red, missing, red, missing])
    results = report["results"]
    assert [r["url"] for r in results] == [red, blue, red, missing, red, missing]
    assert results[0] == results[2] == results[4] and results[0]["predictions"][0]["label"] == "Erithacus rubecula"
    assert results[3] == results[5] and results[3]["error"]["code"] == "http_status"
    hits = stand_in.server.hits
    assert (hits["/images/twice-red.png"], hits["/images/twice-missing.png"]) == (1, 1)


class Held:
    """Stands for what a failing download's frames hold: its bytes, response, socket."""


def test_a_failed_image_leaves_nothing_alive_behind_it(use_stand_in, stand_in):
    """With the cycle collector off: a stored error must not keep its traceback, and with
    it the frames, the item and what they held (the issue saw 1.7 GB kept this way)."""
    classifier = Classifier(load_settings())
    classifier.model().get()
    held: list[weakref.ref] = []

    def fails_deep_down() -> bytes:
        buffer = Held()
        held.append(weakref.ref(buffer))
        raise FetchFailed("connection broke mid-body")

    gc.collect()
    gc.disable()
    try:
        results = classifier.classify([Source("https://example.com/a.jpg", fails_deep_down)])["results"]
        assert results[0]["error"]["code"] == "fetch_failed"
        assert held[0]() is None
    finally:
        gc.enable()


def test_the_log_line_says_what_each_phase_cost_in_cpu_not_wall_time(use_stand_in, caplog):
    """scripts/bench splits an instance's CPU by these; a wait is not CPU."""
    photo = test_images.encode(test_images.photo_like(1600, 1200), "JPEG", quality=90)

    def slow_load() -> bytes:
        time.sleep(0.3)
        return photo

    classifier = Classifier(load_settings())
    with caplog.at_level(logging.INFO, logger="function"):
        report = classifier.classify([Source("slow.jpg", slow_load)])
    (fields,) = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "classified"]
    cpu = fields["cpu_ms"]
    assert set(cpu) == {"fetch", "decode", "inference"}
    assert report["timings_ms"]["fetch"] >= 300 and cpu["fetch"] < 100
    assert cpu["decode"] > 0 and cpu["inference"] > 0


def test_requests_reuse_the_download_threads(use_stand_in):
    """Starting and joining a pool's threads for every request cost ~1 ms of CPU per image
    at full load; the threads outlive requests."""
    png = test_images.encode(test_images.solid(COLOURS["green"]))
    ran_on: list[threading.Thread] = []  # the threads themselves: idents are reused after a join

    def load() -> bytes:
        ran_on.append(threading.current_thread())
        return png

    classifier = Classifier(load_settings())
    for request in range(10):
        classifier.classify([Source(f"reuse-{request}-{i}.png", load) for i in range(2)])
    assert len(ran_on) == 20
    assert len(set(ran_on)) <= 10  # a pool per request: 20 threads


def test_a_request_downloads_at_most_fetch_workers_images_at_once(use_stand_in, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_FETCH_WORKERS", "2")
    png = test_images.encode(test_images.solid(COLOURS["blue"]))
    lock = threading.Lock()
    now, most = 0, 0

    def load() -> bytes:
        nonlocal now, most
        with lock:
            now += 1
            most = max(most, now)
        time.sleep(0.05)
        with lock:
            now -= 1
        return png

    report = Classifier(load_settings()).classify([Source(f"share-{i}.png", load) for i in range(6)])
    assert all("predictions" in r for r in report["results"])
    assert most == 2
