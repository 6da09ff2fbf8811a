"""The hostile run: one real instance (the Dockerfile's WORKERS and THREADS, the pod's
memory) against what an attacker sends at once: many concurrent requests of 16 URLs each
to gzip bombs, 20 MB images, a 44-byte pixel-bomb GIF and endless bodies, beside good
images, plus 2 x THREADS clients dripping their requests a byte at a time. Nothing may be
lost and the instance must stay small (docs/reliability.md)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
import yaml
from PIL import Image

from benchlib import procs
from fixtures import images as test_images
from fixtures.server import LoopbackServer
from function.config import inflight_bytes, load_settings

from .driver import Call, HealthPoller, Outcome, Poll, drive, expect_results, pod_rss_mb, summary
from .faults import GOOD_COLOURS, Target, expected_top

SERVICE = procs.ROOT / "knative" / "service.yaml"
MB = 1024 * 1024
HEALTH_BOUND = 1.0  # seconds /healthz may take, at most, throughout
QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?$")
UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclasses.dataclass(frozen=True)
class Plan:
    seconds: float = 30.0
    clients: int = 8  # concurrent attackers (each request 16 URLs)
    urls_per_request: int = 16
    good_share: float = 0.25  # of the URLs in a request: good images, the rest attacks
    bomb_inflated_mb: int = 1024  # what one gzip bomb inflates to
    read_deadline: float = 5.0  # CLASSIFIER_REQUEST_READ_DEADLINE: drippers are cut this soon
    drip_interval: float = 0.5  # seconds between a dripper's bytes
    rss_margin_mb: float = 64.0  # RSS after the run may exceed the idle RSS by this much
    settle_seconds: float = 3.0  # after the last answer, before RSS is read again
    seed: int = 0

    def server_env(self, pod_memory: int, server_env: dict[str, str]) -> dict[str, str]:
        """`server_env` (the Dockerfile's WORKERS, THREADS...) decides the download budget
        as the pod would from its cgroup limit, which this machine does not have."""
        budget = inflight_bytes(load_settings(server_env), pod_memory)
        return {
            "CLASSIFIER_ALLOW_PRIVATE_URLS": "1",  # the "internet" is on loopback
            "CLASSIFIER_REQUEST_READ_DEADLINE": str(self.read_deadline),
            "CLASSIFIER_MAX_INFLIGHT_BYTES": str(budget),
            "CLASSIFIER_LOG_LEVEL": "warning",
        }


FULL = Plan()
QUICK = Plan(seconds=6.0, bomb_inflated_mb=256, read_deadline=2.0, settle_seconds=2.0)


def pod_memory_limit(path: Path = SERVICE) -> int:
    """The classifier container's memory limit in knative/service.yaml, in bytes: the one
    source, so the run follows any change to the manifest."""
    service = yaml.safe_load(path.read_text())
    containers = service["spec"]["template"]["spec"]["containers"]
    container = next((c for c in containers if c.get("ports")), containers[0])  # the serving one, beside sidecars
    raw = str(container["resources"]["limits"]["memory"])
    match = QUANTITY.match(raw)
    if match is None:
        raise ValueError(f"{path}: cannot read the memory limit {raw!r}")
    return int(match.group(1)) * UNITS[match.group(2)]


def big_image(side: int, colour: tuple[int, int, int]) -> Image.Image:
    """A solid colour under noise: nearly incompressible, so a PNG of it is ~3 bytes a pixel."""
    noise = np.random.default_rng(side).integers(-64, 65, size=(side, side, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8), "RGB")


def build_internet(server: LoopbackServer, plan: Plan, max_image_bytes: int) -> tuple[list[Target], list[Target]]:
    """(good, attacks): solid colours and photos of noise near the image limit (16 MB);
    the bombs and endless bodies."""
    good = []
    for name, colour in GOOD_COLOURS.items():
        body = test_images.encode(test_images.solid(colour), "PNG")
        label, score = expected_top(body)
        good.append(Target("good", server.add(f"/good/{name}.png", body, content_type="image/png"),
                           label=label, score=score))
    side = int((max_image_bytes * 0.95 / 3) ** 0.5)  # at 3 bytes a pixel: under the image limit
    for name in ("red", "blue"):
        body = test_images.encode(big_image(side, GOOD_COLOURS[name]), "PNG", compress_level=1)
        label, score = expected_top(body)
        good.append(Target("good-20mb", server.add(f"/big/{name}.png", body, content_type="image/png"),
                           label=label, score=score))
    bomb = test_images.gzip_bomb(plan.bomb_inflated_mb * MB)
    attacks = [
        Target("gzip-bomb", server.add("/attack/bomb.png", bomb, content_type="image/png",
                                       headers={"Content-Encoding": "gzip"}), frozenset({"too_large", "overloaded"})),
        Target("pixel-bomb-gif", server.add("/attack/bomb.gif", test_images.bomb_gif(), content_type="image/gif"),
               frozenset({"image_too_large"})),
        Target("endless", server.add("/attack/endless.jpg", b"\xff", fault="endless", content_type="image/jpeg"),
               frozenset({"too_large", "timeout", "overloaded"})),
    ]
    return good, attacks


class Mix:
    """POSTs of `urls_per_request` URLs: the attacks taken in turn, some good images, the
    big photos among them, and now and then the same URL twice."""

    def __init__(self, good: Sequence[Target], attacks: Sequence[Target], plan: Plan):
        self.good, self.plan = list(good), plan
        self._attacks = itertools.cycle(attacks)
        self._lock = threading.Lock()

    def __call__(self, rng: random.Random) -> Call:
        with self._lock:
            targets = [rng.choice(self.good) if rng.random() < self.plan.good_share else next(self._attacks)
                       for _ in range(self.plan.urls_per_request)]
        return Call("POST", "/", expect_results(targets, lambda target, result: target.judge(result)),
                    json={"urls": [t.url for t in targets]},
                    tags=tuple(t.kind for t in targets))


class Drippers:
    """Clients that send a request's head, then its body a byte every `interval` seconds,
    never finishing; each reconnects when cut. Records how long each connection lived and
    what, if anything, it was answered."""

    HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"

    def __init__(self, base: str, count: int, interval: float, seconds: float):
        host, port = base.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.count, self.interval, self.seconds = count, interval, seconds
        self.cuts: list[tuple[float, bytes]] = []  # (seconds connected, the answer's status line)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"dripper-{i}") for i in range(count)]

    def _run(self) -> None:
        origin = time.monotonic()
        while time.monotonic() - origin < self.seconds:
            started = time.monotonic()
            with socket.create_connection(self.address, timeout=30) as sock:
                status = b""
                try:
                    sock.sendall(self.HEAD)
                    while time.monotonic() - origin < self.seconds:
                        time.sleep(self.interval)
                        sock.sendall(b" ")
                except OSError:  # cut: read what the server said before it closed
                    try:
                        status = sock.recv(4096).split(b"\r\n", 1)[0]
                    except OSError:
                        pass
                else:
                    continue  # the run ended first: not a cut
            with self._lock:
                self.cuts.append((time.monotonic() - started, status))

    def __enter__(self) -> "Drippers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for thread in self._threads:
            thread.join()


@dataclasses.dataclass(frozen=True)
class Run:
    outcomes: list[Outcome]
    polls: list[Poll]
    cuts: list[tuple[float, bytes]]
    drippers: int
    # The server's processes added up (master and workers), as the pod's memory limit counts them
    idle_rss_mb: float  # after the warm-up request (model loaded)
    peak_rss_mb: float  # VmHWM at the end
    after_rss_mb: float  # VmRSS once the run settled
    pod_memory_mb: float
    attacks: list[Target]


def run(server: procs.Server, internet: LoopbackServer, plan: Plan, threads: int, pod_memory: int,
        max_image_bytes: int) -> Run:
    good, attacks = build_internet(internet, plan, max_image_bytes)
    warm = server_post(server.base, [t.url for t in good])
    if any("predictions" not in r for r in warm["results"]):
        raise RuntimeError(f"the warm-up request failed: {warm}")
    time.sleep(plan.settle_seconds)
    idle = pod_rss_mb(server.pid, "VmRSS")
    drippers = 2 * threads
    with HealthPoller(server.base, timeout=30) as poller, \
            Drippers(server.base, drippers, plan.drip_interval, plan.seconds) as dripping:
        outcomes = drive(server.base, Mix(good, attacks, plan), plan.clients, plan.seconds, timeout=300,
                         seed=plan.seed)
    time.sleep(plan.settle_seconds)
    return Run(outcomes, poller.polls, dripping.cuts, drippers, idle, pod_rss_mb(server.pid),
               pod_rss_mb(server.pid, "VmRSS"), pod_memory / MB, attacks)


def server_post(base: str, urls: list[str]) -> dict:
    response = requests.post(base + "/", json={"urls": urls}, timeout=300)
    response.raise_for_status()
    return response.json()


def figures(run: Run, plan: Plan) -> dict:
    """Everything the report and the JSON show, and the invariants' verdicts."""
    answered = [o for o in run.outcomes if o.status is not None]
    wrong = [o for o in answered if o.problems]
    kinds: dict[str, Counter[str]] = {}
    for outcome in answered:
        results = (outcome.answer or {}).get("results", []) if outcome.status == 200 else []
        for kind, result in zip(outcome.call.tags, results):
            code = result.get("error", {}).get("code", "classified")
            kinds.setdefault(kind, Counter())[code] += 1
    health = summary([p.seconds for p in run.polls])
    cut_after = summary([seconds for seconds, _ in run.cuts])
    statuses = Counter(status.decode(errors="replace") or "(closed)" for _, status in run.cuts)
    rss_bound = run.idle_rss_mb + plan.rss_margin_mb
    invariants = {
        "every request answered": bool(run.outcomes) and len(answered) == len(run.outcomes),
        "every answer right (good images classified, attacks refused)": bool(answered) and not wrong,
        "every attack sent": all(kinds.get(t.kind) for t in run.attacks),
        f"/healthz answered within {HEALTH_BOUND:g} s throughout": bool(run.polls)
            and all(p.status == 200 for p in run.polls) and health["max"] <= HEALTH_BOUND,
        # + 2 s: the server's loop sweeps deadlines every second, a dripper notices at its next byte
        f"drippers cut within the read deadline + 2 s ({plan.read_deadline + 2:g} s)": bool(run.cuts)
            and cut_after["max"] <= plan.read_deadline + 2,
        f"peak RSS <= the pod's memory limit ({run.pod_memory_mb:.0f} MB)": 0 < run.peak_rss_mb <= run.pod_memory_mb,
        f"RSS after the run <= idle + {plan.rss_margin_mb:g} MB ({rss_bound:.0f} MB)": run.after_rss_mb <= rss_bound,
    }
    return {
        "plan": dataclasses.asdict(plan),
        "requests": {"sent": len(run.outcomes), "answered": len(answered), "wrong": len(wrong),
                     "status": dict(Counter(str(o.status) for o in answered)),
                     "latency_s": summary([o.seconds for o in answered])},
        "images": {kind: dict(codes) for kind, codes in sorted(kinds.items())},
        "drippers": {"clients": run.drippers, "cut": len(run.cuts), "cut_after_s": cut_after,
                     "answers": dict(statuses)},
        "healthz": {"polls": len(run.polls), "failed": sum(p.status != 200 for p in run.polls), "latency_s": health},
        "rss_mb": {"idle": round(run.idle_rss_mb, 1), "peak": round(run.peak_rss_mb, 1),
                   "after": round(run.after_rss_mb, 1), "pod_limit": round(run.pod_memory_mb)},
        "problems": [p for o in wrong for p in o.problems][:20] + [o.error for o in run.outcomes if o.error][:20],
        "invariants": invariants,
        "passed": all(invariants.values()),
    }


def table(result: dict) -> str:
    plan, req, drip, health, rss = (result[k] for k in ("plan", "requests", "drippers", "healthz", "rss_mb"))
    lat, hl, cut = req["latency_s"], health["latency_s"], drip["cut_after_s"]
    lines = [
        f"hostile load test: {plan['seconds']:g} s, {plan['clients']} clients x {plan['urls_per_request']} URLs, "
        f"{drip['clients']} drippers, gzip bombs of {plan['bomb_inflated_mb']} MB, read deadline "
        f"{plan['read_deadline']:g} s",
        "",
        f"requests   sent {req['sent']}  answered {req['answered']}  wrong {req['wrong']}  status {req['status']}",
        f"latency    p50 {lat.get('p50', 0):.2f} s  p95 {lat.get('p95', 0):.2f} s  max {lat.get('max', 0):.2f} s",
        "images",
    ]
    lines += [f"  {kind:<15} " + ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
              for kind, codes in result["images"].items()]
    lines += [
        f"drippers   cut {drip['cut']}  after p50 {cut.get('p50', 0):.2f} s  max {cut.get('max', 0):.2f} s  "
        f"answers {drip['answers']}",
        f"/healthz   polls {health['polls']}  failed {health['failed']}  p50 {hl.get('p50', 0):.3f} s  "
        f"max {hl.get('max', 0):.3f} s",
        f"RSS        idle {rss['idle']:.1f} MB, peak {rss['peak']:.1f} MB (pod limit {rss['pod_limit']} MB), "
        f"after {rss['after']:.1f} MB (the server's processes together)",
        "",
    ]
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in result["invariants"].items()]
    lines += [f"  problem: {p}" for p in result["problems"]]
    return "\n".join(lines)
