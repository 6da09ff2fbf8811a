"""`.tflite` models through the registry: downloaded once, run on LiteRT, logits softmaxed."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fixtures import images as test_images
from fixtures.flowers import FLOWER_LABELS, expected_flower_scores
from function.config import load_settings
from function.errors import BadModel
from function.pipeline import Classifier

RED, BLUE, YELLOW = (230, 20, 30), (20, 40, 220), (240, 220, 20)


def expected(colour, k=3):
    pixels = np.asarray(test_images.solid(colour).resize((180, 180)), np.float32)
    scores = expected_flower_scores(pixels)
    return [(FLOWER_LABELS[i], float(scores[i])) for i in np.argsort(-scores)[:k]]


@pytest.fixture
def registry(use_stand_in, flowers, monkeypatch, tmp_path):
    """The flowers in the registry, a fresh cache (so the download is this test's)."""
    monkeypatch.setenv("CLASSIFIER_MODELS", flowers.registry())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    return flowers


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
def test_tflite_url_runs_on_litert_with_softmax(registry, stand_in, monkeypatch, runtime):
    monkeypatch.setenv("CLASSIFIER_RUNTIME", runtime)  # .tflite files run on LiteRT either way
    urls = [stand_in.image_url(f"flower-{i}.png", c) for i, c in enumerate((RED, BLUE, YELLOW))]
    report = Classifier(load_settings()).classify_urls(urls, top_k=3, model="flowers")
    assert report["model"] == registry.url
    for colour, result in zip((RED, BLUE, YELLOW), report["results"]):
        got = [(p["label"], p["score"]) for p in result["predictions"]]
        want = expected(colour)
        assert [label for label, _ in got] == [label for label, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=2e-4)
    assert [r["predictions"][0]["label"] for r in report["results"]] == ["roses", "tulips", "dandelion"]


def test_tflite_is_downloaded_once_into_the_cache(registry, stand_in, tmp_path):
    before = stand_in.server.hits.get("/models/flowers.tflite", 0)
    url = stand_in.image_url("flower-cached.png", RED)
    for _ in range(2):  # two processes' worth of Classifiers share the cache
        Classifier(load_settings()).classify_urls([url], model="flowers")
    assert stand_in.server.hits["/models/flowers.tflite"] == before + 1
    assert len(list((tmp_path / "cache").glob("*.tflite"))) == 1


def test_local_tflite_path(use_stand_in, stand_in, flowers, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_MODELS", flowers.registry(url=str(flowers.path)))
    report = Classifier(load_settings()).classify_urls([stand_in.image_url("flower-local.png", BLUE)],
                                                       model="flowers")
    assert report["results"][0]["predictions"][0]["label"] == "tulips"


def test_default_model_stays_the_birds(registry, stand_in):
    classifier = Classifier(load_settings())
    assert list(classifier.models) == ["birds", "flowers"]
    report = classifier.classify_urls([stand_in.image_url("flower-default.png", RED)])
    assert report["model"] == stand_in.model_url
    assert report["results"][0]["predictions"][0]["label"] == "Erithacus rubecula"
    assert not classifier.model("flowers").loaded


def test_registry_input_size_must_match_the_model(use_stand_in, stand_in, flowers, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_MODELS", flowers.registry(input_size=224))
    with pytest.raises(BadModel, match=r"\[N,224,224,3\]"):
        Classifier(load_settings()).classify_urls([stand_in.image_url("flower-size.png")], model="flowers")


# --- without TensorFlow (the lean image) ------------------------------------------------

@pytest.mark.parametrize(("runtime", "needed_for"), [
    ("tensorflow", "CLASSIFIER_RUNTIME=tensorflow for model 'birds' needs TensorFlow"),
    ("litert", "converting model 'birds' (http://127.0.0.1:"),
], ids=["tensorflow-runtime", "unbaked-hub-model"])
def test_without_tensorflow_a_hub_model_answers_503_naming_the_full_image(use_stand_in, monkeypatch, tmp_path,
                                                                         runtime, needed_for):
    """As in the lean image: TensorFlow is not importable and nothing is baked in the cache."""
    from conftest import function_client

    for module in ("tensorflow", "tensorflow_hub", "tf_keras"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` now fails as if not installed
    monkeypatch.setenv("CLASSIFIER_RUNTIME", runtime)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "unbaked"))  # not the session's, converted by others
    client = function_client()
    for _ in range(2):  # the process keeps answering: a clear error each time, never a crash
        response = client.post("/", json={"urls": [use_stand_in.image_url("lean.png")]})
        assert response.status_code == 503 and "Retry-After" in response.headers
        error = response.get_json()["error"]
        assert error["code"] == "model_unavailable"
        assert needed_for in error["message"]
        assert "use the full image (scripts/build-image IMAGE --target full)" in error["message"]
    assert client.get("/healthz").status_code == 200
