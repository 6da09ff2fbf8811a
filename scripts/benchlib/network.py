"""The benchmark's stand-in internet: one loopback server for the model, the labels and
the images, with per-request latency and bandwidth caps, that stops on its own."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

from fixtures.server import LoopbackServer

from .corpus import Corpus

MAX_SERVE_SECONDS = 30 * 60  # a hung benchmark still stops serving


@dataclasses.dataclass(frozen=True)
class Profile:
    """Time to first byte spread over [min_latency, max_latency] by image size; a
    bandwidth cap per request (each connection gets `rate` bytes/s)."""

    name: str
    min_latency: float = 0.150
    max_latency: float = 0.400
    rate: float | None = 3_000_000

    def latencies(self, count: int) -> list[float]:
        if count == 1:
            return [self.max_latency]
        step = (self.max_latency - self.min_latency) / (count - 1)
        return [self.min_latency + step * index for index in range(count)]


INTERNET = Profile("internet")
NO_LATENCY = Profile("none", 0.0, 0.0, None)


@dataclasses.dataclass(frozen=True)
class Site:
    """URLs on the running server: `images` behind the profile, `lan_images` without caps."""

    server: LoopbackServer
    profile: Profile
    model_url: str
    labels_url: str
    images: tuple[str, ...]
    lan_images: tuple[str, ...]

    def largest(self, lan: bool = False) -> str:
        return (self.lan_images if lan else self.images)[-1]


@contextlib.contextmanager
def serve(corpus: Corpus, profile: Profile, max_seconds: float = MAX_SERVE_SECONDS) -> Iterator[Site]:
    """Serve `corpus` on loopback until the block ends or `max_seconds` pass."""
    with LoopbackServer() as server:
        watchdog = threading.Timer(max_seconds, server.stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            model_url = server.add("/models/mobilenet_v2.tar.gz", corpus.model_archive.read_bytes(),
                                   content_type="application/x-gzip")
            labels_url = server.add("/labels.csv", corpus.labels_csv.read_bytes(), content_type="text/csv",
                                    latency=profile.min_latency, rate=profile.rate)
            by_size = sorted(corpus.images, key=lambda image: len(image.data))
            images = tuple(
                server.add(f"/net/{image.name}", image.data, content_type="image/jpeg",
                           latency=latency, rate=profile.rate)
                for image, latency in zip(by_size, profile.latencies(len(by_size)))
            )
            lan = tuple(server.add(f"/lan/{image.name}", image.data, content_type="image/jpeg")
                        for image in by_size)
            yield Site(server, profile, model_url, labels_url, images, lan)
        finally:
            watchdog.cancel()
