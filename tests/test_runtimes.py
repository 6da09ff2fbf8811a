"""LiteRT (the default) against TensorFlow (the reference) on the same pixels: litert may
stay the default only while both give the same top-3 and scores within 1e-3."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fixtures import images as test_images
from fixtures.models import expected_colour_scores
from function import runtime
from function.config import ModelSpec

TOLERANCE = 1e-3


def batch() -> np.ndarray:
    """Solid colours, photo-like noise and plain noise, as the pipeline decodes them (uint8)."""
    solids = [test_images.pixels01(test_images.solid(c)) for c in ((230, 20, 30), (10, 200, 40), (25, 12, 5))]
    photos = [test_images.pixels01(test_images.photo_like(320, 240, seed)) for seed in range(3)]
    noise = list(np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32))
    return np.rint(np.stack(solids + photos + noise) * 255).astype(np.uint8)


def test_litert_agrees_with_tensorflow_on_the_stand_in(stand_in):
    spec = ModelSpec("birds", stand_in.model_url, stand_in.labels_url)
    pixels = batch()
    scores = {name: runtime.load(spec, name, str(stand_in.cache_dir))(pixels, 1 / 255)
              for name in ("tensorflow", "litert")}
    litert, tensorflow = scores["litert"], scores["tensorflow"]
    assert litert.shape == tensorflow.shape == (len(pixels), 4)
    top3 = {name: np.argsort(-s, axis=1)[:, :3] for name, s in scores.items()}
    np.testing.assert_array_equal(top3["litert"], top3["tensorflow"])
    assert np.abs(litert - tensorflow).max() < TOLERANCE
    # and both are the model itself, not merely each other
    want = np.stack([expected_colour_scores(p / 255) for p in pixels.astype(np.float32)])
    np.testing.assert_allclose(litert, want, atol=TOLERANCE)


@pytest.mark.parametrize("threads, extra", [(1, 0), (3, 2)])
def test_litert_runs_on_the_configured_number_of_threads(stand_in, threads, extra):
    """CLASSIFIER_LITERT_THREADS reaches the interpreter: n threads = the caller's + n - 1 workers."""
    spec = ModelSpec("birds", stand_in.model_url, stand_in.labels_url)
    before = len(os.listdir("/proc/self/task"))
    predict = runtime.load(spec, "litert", str(stand_in.cache_dir), litert_threads=threads)
    predict(batch()[:1], 1 / 255)
    assert len(os.listdir("/proc/self/task")) - before == extra
