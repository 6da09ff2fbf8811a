"""LiteRT (the default) against TensorFlow (the reference) on the same pixels: litert may
stay the default only while both give the same top-3 and scores within 1e-3."""

from __future__ import annotations

import numpy as np

from fixtures import images as test_images
from fixtures.models import expected_colour_scores
from function import runtime
from function.config import ModelSpec

TOLERANCE = 1e-3


def batch() -> np.ndarray:
    """Solid colours, photo-like noise and plain noise, as the model is fed them ([0,1])."""
    solids = [test_images.pixels01(test_images.solid(c)) for c in ((230, 20, 30), (10, 200, 40), (25, 12, 5))]
    photos = [test_images.pixels01(test_images.photo_like(320, 240, seed)) for seed in range(3)]
    noise = list(np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32))
    return np.stack(solids + photos + noise).astype(np.float32)


def test_litert_agrees_with_tensorflow_on_the_stand_in(stand_in):
    spec = ModelSpec("birds", stand_in.model_url, stand_in.labels_url)
    pixels = batch()
    scores = {name: runtime.load(spec, name, str(stand_in.cache_dir))(pixels)
              for name in ("tensorflow", "litert")}
    litert, tensorflow = scores["litert"], scores["tensorflow"]
    assert litert.shape == tensorflow.shape == (len(pixels), 4)
    top3 = {name: np.argsort(-s, axis=1)[:, :3] for name, s in scores.items()}
    np.testing.assert_array_equal(top3["litert"], top3["tensorflow"])
    assert np.abs(litert - tensorflow).max() < TOLERANCE
    # and both are the model itself, not merely each other
    want = np.stack([expected_colour_scores(p) for p in pixels])
    np.testing.assert_allclose(litert, want, atol=TOLERANCE)
