"""The one pipeline behind every way in: fetch + decode concurrently while the model
loads, one batched model call, top-k; one log line per request."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import fetch, images, memory, metrics, request_context, tracing
from .budget import Budget
from .config import ModelSpec, Settings, choose_model, inflight_bytes, model_specs, request_threads
from .errors import ItemError, TooManyUrls
from .model import LazyModel, LoadedModel
from .redaction import redact
from .source import Source

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class _Item:
    source: Source
    pixels: np.ndarray | None = None
    # The error as answered, not the exception: a stored exception keeps its traceback,
    # and with it the frames, this item and the image being decoded, alive in a cycle.
    error: dict[str, str] | None = None
    # Wall and this thread's CPU seconds of each phase that completed (CPU: what it cost the instance)
    fetched: metrics.Timer = dataclasses.field(default_factory=metrics.Timer)
    decoded: metrics.Timer = dataclasses.field(default_factory=metrics.Timer)


class Classifier:
    """Holds what lives as long as the process: settings, HTTP session, models."""

    def __init__(self, settings: Settings, session: fetch.Session | None = None,
                 models: Sequence[ModelSpec] | None = None):
        self.settings = settings
        self.session = session or fetch.make_session(settings)
        # Images decoding at once hold no more pixels than the largest one allowed, and
        # downloads no more bytes than a share of the container's memory.
        self.decode_budget = Budget(settings.max_image_pixels)
        self.download_budget = Budget(inflight_bytes(settings, memory.container_limit()))
        self._idle_trim = memory.IdleTrim()
        # Downloads, decodes and a first model load run on threads that outlive requests:
        # a pool per request started and joined up to nine threads for each, 2-5 ms of CPU
        # per request at full load (docs/performance.md). Every request the server runs at
        # once has its fetch_workers and a load here, so none waits for another's; threads
        # start only when none is idle.
        self._threads = concurrent.futures.ThreadPoolExecutor(
            request_threads(settings) * (settings.fetch_workers + 1), thread_name_prefix="fetch")
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
        """A URL given twice is one source: fetched and decoded once, answered at both places."""
        sources = {url: self.url_source(url) for url in urls}
        return self.classify([sources[url] for url in urls], top_k, model)

    def classify(self, sources: Sequence[Source], top_k: int | None = None, model: str | None = None) -> dict:
        """{"model", "results", "timings_ms"}; raises ModelUnavailable if the model can't load.
        A source given at several places is prepared once."""
        if len(sources) > self.settings.max_urls:
            raise TooManyUrls(f"{len(sources)} images in one request, the limit is {self.settings.max_urls}")
        with self._idle_trim.working():  # the last request of a burst gives the memory back
            return self._classify(sources, top_k or self.settings.top_k, self.model(model))

    def _classify(self, sources: Sequence[Source], top_k: int, lazy: LazyModel) -> dict:
        started = time.perf_counter()
        places = {source: place for place, source in enumerate(dict.fromkeys(sources))}
        unique = list(places)
        # This request's share of the threads: at most fetch_workers of its images at once.
        share = threading.BoundedSemaphore(max(1, min(len(unique), self.settings.fetch_workers)))

        def prepare(source: Source) -> _Item:
            try:
                return self._prepare(source, lazy.spec)
            finally:
                share.release()

        # The model loads (first request only) while the images download, both in the
        # request's context: their log lines and spans stay the request's.
        loading = None if lazy.loaded else self._threads.submit(
            request_context.carry(_timed), functools.partial(lazy.get, len(unique)))
        jobs: list[concurrent.futures.Future] = []
        try:
            for source in unique:
                share.acquire()
                jobs.append(self._threads.submit(request_context.carry(prepare), source))
            prepared = [job.result() for job in jobs]
            fetched = time.perf_counter()
            loaded, load_seconds = loading.result() if loading else (lazy.get(), 0.0)
        finally:
            concurrent.futures.wait([*jobs, *filter(None, [loading])])  # nothing of this request outlives it
        waited = time.perf_counter() - fetched
        inference_started, inference_cpu = time.perf_counter(), time.thread_time()
        with tracing.span("inference", {"classifier.model": lazy.spec.name, "classifier.images": len(prepared)}):
            results = self._predict(prepared, [places[s] for s in sources], loaded, top_k)
        inference = time.perf_counter() - inference_started
        cpu_ms = {"fetch": sum(i.fetched.cpu_seconds for i in prepared),
                  "decode": sum(i.decoded.cpu_seconds for i in prepared),
                  "inference": time.thread_time() - inference_cpu}
        timings = {
            "fetch": max((i.fetched.seconds for i in prepared), default=0.0),
            "decode": sum(i.decoded.seconds for i in prepared),
            "model_load": load_seconds,
            "model_wait": waited,
            "inference": inference,
            "total": time.perf_counter() - started,
        }
        timings_ms = {k: round(v * 1000, 1) for k, v in timings.items()}
        failed = sum(1 for r in results if "error" in r)
        metrics.observe_classification(lazy.spec.name, [r["error"]["code"] if "error" in r else "ok" for r in results],
                                       timings)
        request_context.note_images(len(results) - failed, failed)
        logger.info(
            "classified %d images: %d ok, %d failed",
            len(results), len(results) - failed, failed,
            extra={"fields": {"event": "classified", "model": lazy.spec.name, "count": len(results),
                              "ok": len(results) - failed, "failed": failed,
                              "errors": sorted({r["error"]["code"] for r in results if "error" in r}),
                              "timings_ms": timings_ms,
                              "cpu_ms": {k: round(v * 1000, 2) for k, v in cpu_ms.items()}}},
        )
        return {"model": redact(lazy.spec.url), "results": results, "timings_ms": timings_ms}

    def _prepare(self, source: Source, spec: ModelSpec) -> _Item:
        """Load and decode one image. The bytes a download holds count against the download
        budget (`fetch` reserves them in this lease) until they are decoded."""
        item = _Item(source)
        shown = redact(source.name)
        try:
            with self.download_budget.lease():
                with metrics.stage("fetch") as fetched, tracing.span("fetch", {"url.full": shown}):
                    data = source.load()
                item.fetched = fetched
                with metrics.stage("decode") as decoded, tracing.span("decode"):
                    item.pixels = images.decode(
                        data, spec.input_size, self.settings.max_image_pixels, self.settings.allowed_formats,
                        self.decode_budget,
                    )
                item.decoded = decoded
            logger.debug("%s: fetched in %.1f ms, decoded in %.1f ms", shown, fetched.seconds * 1000,
                         decoded.seconds * 1000, extra={"fields": {"event": "image", "image": shown, "outcome": "ok"}})
        except ItemError as exc:
            item.error = exc.to_dict()
            logger.info("%s: %s %s", shown, exc.code, exc.message,
                        extra={"fields": {"event": "image", "image": shown, "outcome": exc.code}})
        except Exception as exc:  # noqa: BLE001 - one bad image never spoils the others
            logger.exception("unexpected failure on %s", shown)
            item.error = ItemError(f"unexpected error: {type(exc).__name__}").to_dict()
        return item

    def _predict(self, prepared: list[_Item], places: list[int], model: LoadedModel, top_k: int) -> list[dict]:
        """One batched model call for the images that decoded; one result per place, each
        place naming the prepared item it shows."""
        good = [i for i, item in enumerate(prepared) if item.pixels is not None]
        scores = model.probabilities(np.stack([prepared[i].pixels for i in good])) if good else None
        rows = {item: row for row, item in enumerate(good)}
        results = []
        for place in places:
            item = prepared[place]
            if item.error is not None:
                results.append({"url": item.source.name, "error": dict(item.error)})
                continue
            results.append({"url": item.source.name,
                            "predictions": top_predictions(scores[rows[place]], model.labels, top_k)})
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
