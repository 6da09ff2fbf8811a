"""The one pipeline behind every way in: fetch + decode concurrently while the model
loads, one batched model call, top-k; one log line per request."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import requests

from . import fetch, images
from .config import ModelSpec, Settings, choose_model, model_specs
from .errors import ItemError, TooManyUrls
from .model import LazyModel, LoadedModel
from .source import Source

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class _Item:
    source: Source
    pixels: np.ndarray | None = None
    error: ItemError | None = None
    fetch_seconds: float = 0.0
    decode_seconds: float = 0.0
    fetch_cpu: float = 0.0  # this thread's CPU seconds: what a phase costs the instance
    decode_cpu: float = 0.0


class Classifier:
    """Holds what lives as long as the process: settings, HTTP session, models."""

    def __init__(self, settings: Settings, session: requests.Session | None = None,
                 models: Sequence[ModelSpec] | None = None):
        self.settings = settings
        self.session = session or fetch.make_session(settings)
        # Images decoding at once hold no more pixels than the largest one allowed.
        self.decode_budget = images.PixelBudget(settings.max_image_pixels)
        specs = list(models or model_specs(settings))
        self.models = {
            spec.name: LazyModel(spec, settings.runtime, settings.cache_dir, settings.model_retry_seconds,
                                 settings.litert_threads)
            for spec in specs
        }
        self.default_model = specs[0].name

    def url_source(self, url: str) -> Source:
        return fetch.url_source(self.session, url, self.settings)

    def model(self, name: str | None = None) -> LazyModel:
        """The named model (default: the first configured), or UnknownModel (400)."""
        return self.models[choose_model([lazy.spec for lazy in self.models.values()], name).name]

    def classify_urls(self, urls: Sequence[str], top_k: int | None = None, model: str | None = None) -> dict:
        return self.classify([self.url_source(u) for u in urls], top_k, model)

    def classify(self, sources: Sequence[Source], top_k: int | None = None, model: str | None = None) -> dict:
        """{"model", "results", "timings_ms"}; raises ModelUnavailable if the model can't load."""
        started = time.perf_counter()
        if len(sources) > self.settings.max_urls:
            raise TooManyUrls(f"{len(sources)} images in one request, the limit is {self.settings.max_urls}")
        top_k = top_k or self.settings.top_k
        lazy = self.model(model)
        workers = max(1, min(len(sources), self.settings.fetch_workers))
        with concurrent.futures.ThreadPoolExecutor(workers + 1, thread_name_prefix="fetch") as pool:
            # The model loads (first request only) while the images download.
            loading = None if lazy.loaded else pool.submit(_timed, functools.partial(lazy.get, len(sources)))
            items = list(pool.map(lambda s: self._prepare(s, lazy.spec), sources))
            fetched = time.perf_counter()
            if loading is not None:
                loaded, load_seconds = loading.result()
            else:
                loaded, load_seconds = lazy.get(), 0.0
        waited = time.perf_counter() - fetched
        inference_started, inference_cpu = time.perf_counter(), time.thread_time()
        results = self._predict(items, loaded, top_k)
        inference = time.perf_counter() - inference_started
        cpu_ms = {"fetch": sum(i.fetch_cpu for i in items), "decode": sum(i.decode_cpu for i in items),
                  "inference": time.thread_time() - inference_cpu}
        timings = {
            "fetch": max((i.fetch_seconds for i in items), default=0.0),
            "decode": sum(i.decode_seconds for i in items),
            "model_load": load_seconds,
            "model_wait": waited,
            "inference": inference,
            "total": time.perf_counter() - started,
        }
        timings_ms = {k: round(v * 1000, 1) for k, v in timings.items()}
        failed = sum(1 for r in results if "error" in r)
        logger.info(
            "classified %d images: %d ok, %d failed",
            len(results), len(results) - failed, failed,
            extra={"fields": {"event": "classified", "model": lazy.spec.name, "count": len(results),
                              "ok": len(results) - failed, "failed": failed,
                              "errors": sorted({r["error"]["code"] for r in results if "error" in r}),
                              "timings_ms": timings_ms,
                              "cpu_ms": {k: round(v * 1000, 2) for k, v in cpu_ms.items()}}},
        )
        return {"model": fetch.redact(lazy.spec.url), "results": results, "timings_ms": timings_ms}

    def _prepare(self, source: Source, spec: ModelSpec) -> _Item:
        item = _Item(source)
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            data = source.load()
            item.fetch_seconds, item.fetch_cpu = time.perf_counter() - started, time.thread_time() - cpu
            started, cpu = time.perf_counter(), time.thread_time()
            item.pixels = images.decode(
                data, spec.input_size, self.settings.max_image_pixels, self.settings.allowed_formats,
                self.decode_budget,
            )
            item.decode_seconds, item.decode_cpu = time.perf_counter() - started, time.thread_time() - cpu
        except ItemError as exc:
            item.error = exc
            logger.info("%s: %s %s", fetch.redact(source.name), exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad image never spoils the others
            logger.exception("unexpected failure on %s", fetch.redact(source.name))
            item.error = ItemError(f"unexpected error: {type(exc).__name__}")
        return item

    def _predict(self, items: list[_Item], model: LoadedModel, top_k: int) -> list[dict]:
        good = [i for i in items if i.pixels is not None]
        scores = model.probabilities(np.stack([i.pixels for i in good])) if good else None
        rows = iter(range(len(good)))
        results = []
        for item in items:
            if item.error is not None:
                results.append({"url": item.source.name, "error": item.error.to_dict()})
                continue
            results.append({"url": item.source.name,
                            "predictions": top_predictions(scores[next(rows)], model.labels, top_k)})
        return results


def top_predictions(scores: np.ndarray, names, k: int) -> list[dict]:
    """The k best classes, best first: argpartition, then sort only those k."""
    k = min(k, scores.shape[0])
    best = np.argpartition(scores, -k)[-k:]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [{"label": names.get(int(i), str(int(i))), "score": round(float(scores[i]), 4)} for i in best]


def _timed(fn: Callable):
    started = time.perf_counter()
    return fn(), time.perf_counter() - started
