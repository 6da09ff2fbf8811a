"""The lazy, thread-safe, once-per-process model cache, with backoff after a failed load.

Importing TensorFlow and loading a model take seconds, so nothing happens at import:
the first request that needs the model loads it while the others wait for that one
load; a failed load is retried by a later request after a growing pause, and in
between requests fail fast with 503 and `Retry-After`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping

import numpy as np

from . import labels, metrics, runtime, tracing
from .config import ModelSpec
from .errors import BadModel, ModelUnavailable
from .redaction import redact, scrub

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    predict: runtime.Predict
    labels: Mapping[int, str]
    num_classes: int
    load_seconds: float

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """One model call for the whole batch of uint8 images; softmax for logit models."""
        outputs = self.predict(batch, self.spec.input_scale / 255.0)
        if self.spec.output == "logits":
            shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            outputs = shifted / shifted.sum(axis=1, keepdims=True)
        return outputs


class LazyModel:
    """Loads `spec` on the first `get()`, once; later calls return the same model."""

    def __init__(self, spec: ModelSpec, runtime_name: str, cache_dir: str, retry_seconds: float,
                 litert_threads: int = 0):
        self.spec = spec
        self._runtime = runtime_name
        self._litert_threads = litert_threads
        self._cache_dir = cache_dir
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: ModelUnavailable | None = None
        self.load_count = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self, batch_size: int = 1) -> LoadedModel:
        """The model, loaded by the first call and readied for its `batch_size`: the first
        call at a new, larger batch costs LiteRT tens of ms of planning and allocation,
        which a load hidden behind the first request's downloads had better include."""
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            wait = self._retry_at - time.monotonic()
            if self._last_error is not None and wait > 0:
                raise type(self._last_error)(self._last_error.message, retry_after=wait)
            runs_on = runtime.effective(self.spec, self._runtime)
            try:
                with tracing.span("model_load", {"classifier.model": self.spec.name, "classifier.runtime": runs_on}):
                    self._model = self._load(batch_size)
            except Exception as exc:  # noqa: BLE001 - any load failure is a 503, never a crash
                metrics.MODEL_LOADS.labels(self.spec.name, "error").inc()
                self._record_failure(exc)
                raise self._last_error from exc
            metrics.MODEL_LOADS.labels(self.spec.name, "ok").inc()
            metrics.MODEL_LOAD_SECONDS.labels(self.spec.name, runs_on).observe(self._model.load_seconds)
            self._failures = 0
            self._last_error = None
            return self._model

    def _load(self, batch_size: int) -> LoadedModel:
        started = time.perf_counter()
        self.load_count += 1
        logger.info("loading model %s (%s runtime)", redact(self.spec.url), self._runtime)
        predict = runtime.load(self.spec, self._runtime, self._cache_dir, self._litert_threads)
        names = labels.load_labels(self.spec.labels_url, self._cache_dir)
        width, height = self.spec.input_size
        probe = predict(np.zeros((batch_size, height, width, 3), np.uint8), 1.0)
        num_classes = int(probe.shape[-1])
        missing = [i for i in range(num_classes) if i not in names]
        if missing:
            raise BadModel(
                f"labels cover {len(names)} ids but the model has {num_classes} classes "
                f"(first missing id: {missing[0]})"
            )
        seconds = time.perf_counter() - started
        logger.info("model %s loaded in %.2f s, %d classes", self.spec.name, seconds, num_classes)
        return LoadedModel(self.spec, predict, names, num_classes, seconds)

    def _record_failure(self, exc: Exception) -> None:
        self._failures += 1
        backoff = min(self._retry_seconds * 2 ** (self._failures - 1), MAX_BACKOFF_SECONDS)
        self._retry_at = time.monotonic() + backoff
        # The message goes to callers and logs: URLs in it (signed ones) are redacted.
        if isinstance(exc, ModelUnavailable):
            error = type(exc)(scrub(exc.message), retry_after=backoff)
        else:
            error = ModelUnavailable(
                scrub(f"cannot load model {self.spec.name!r}: {type(exc).__name__}: {exc}"),
                retry_after=backoff,
            )
        self._last_error = error
        logger.error("model load failed (attempt %d, next try in %.0f s): %s",
                     self._failures, backoff, error.message)
