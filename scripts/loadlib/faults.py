"""The fault-injection run: a loopback "internet" of good and misbehaving hosts, one real
functions-framework instance, concurrent clients mixing them, and the invariants the
run must keep (docs/reliability.md)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from urllib.parse import quote

import numpy as np
import requests
from PIL import Image

from fixtures import images as test_images
from fixtures.models import COLOUR_LABELS, expected_colour_scores
from fixtures.server import LoopbackServer

from .driver import Call, HealthPoller, Outcome, Poll, drive, expect_results, rss_mb, summary

SCORE_TOLERANCE = 2e-3  # the function's scores (LiteRT, rounded to 4 places) vs numpy's
GOOD_COLOURS = {"red": (230, 20, 30), "green": (10, 200, 40), "blue": (20, 40, 220), "dark": (25, 12, 5)}
# Good images of a few kilobytes that decode to tens of megabytes: memory must stay bounded.
BIG_IMAGES = (("big-red", "RGB", (230, 20, 30), 4000), ("big-blue", "RGBA", (20, 40, 220, 255), 3000))


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long, how hard, and the limits the run holds the function to."""

    seconds: float = 20.0
    clients: int = 4  # = THREADS, the containerConcurrency Knative lets through
    deadline: float = 3.0  # CLASSIFIER_FETCH_DEADLINE of the instance under test
    margin: float = 2.0  # decode, inference and a busy machine on top of the deadline
    max_image_bytes: int = 2_000_000  # CLASSIFIER_MAX_IMAGE_BYTES of the instance
    urls_per_request: int = 4  # at most; <= CLASSIFIER_FETCH_WORKERS, so one deadline bounds a request
    fault_share: float = 0.5  # of the URLs in a request
    max_rss_mb: float = 512.0  # the worker before any request, plus one full pixel budget of decoding
    seed: int = 0

    @property
    def latency_bound(self) -> float:
        return self.deadline + self.margin

    def server_env(self) -> dict[str, str]:
        return {
            "CLASSIFIER_ALLOW_PRIVATE_URLS": "1",  # the "internet" is on loopback
            "CLASSIFIER_FETCH_DEADLINE": str(self.deadline),
            "CLASSIFIER_MAX_IMAGE_BYTES": str(self.max_image_bytes),
            "CLASSIFIER_LOG_LEVEL": "warning",
        }


FULL = Plan()
# CI runners are shared and small: twice the deadline of slack for CPU, still far below
# the 30 s a fetch that ignored its deadline would take against these hosts.
QUICK = Plan(seconds=6.0, deadline=1.5, margin=3.0)


@dataclasses.dataclass(frozen=True)
class Target:
    """One URL on the loopback internet and what the function must answer for it."""

    kind: str  # "good" (or "good-..."), or the name of the fault
    url: str
    codes: frozenset[str] = frozenset()  # error codes a fault may end in
    label: str = ""  # a good image's expected top label and score
    score: float = 0.0

    def judge(self, result: dict) -> list[str]:
        if self.kind.startswith("good"):  # "good", or a kind of good image ("good-20mb")
            if "predictions" not in result:
                return [f"good image {self.url} failed: {result.get('error')}"]
            top = result["predictions"][0]
            if top["label"] != self.label or abs(top["score"] - self.score) > SCORE_TOLERANCE:
                return [f"{self.url}: got {top}, expected {self.label} {self.score:.4f}"]
            return []
        code = result.get("error", {}).get("code")
        if code not in self.codes:
            return [f"{self.kind} {self.url}: got {code or 'predictions'}, expected one of {sorted(self.codes)}"]
        return []


def expected_top(body: bytes) -> tuple[str, float]:
    """The colour model's top label and score for an encoded image, computed in numpy."""
    with Image.open(io.BytesIO(body)) as image:
        scores = expected_colour_scores(test_images.pixels01(image))
    best = int(np.argmax(scores))
    return COLOUR_LABELS[best], float(scores[best])


def build_internet(server: LoopbackServer, plan: Plan) -> tuple[list[Target], list[Target]]:
    """Good images and one route per fault; returns (good, faults)."""
    good = []
    for name, colour in GOOD_COLOURS.items():
        for format in ("PNG", "JPEG"):
            body = test_images.encode(test_images.solid(colour), format)
            label, score = expected_top(body)
            url = server.add(f"/good/{name}.{format.lower()}", body, content_type=f"image/{format.lower()}")
            good.append(Target("good", url, label=label, score=score))
    for name, mode, colour, side in BIG_IMAGES:
        body = test_images.encode(Image.new(mode, (side, side), colour))
        label, score = expected_top(body)
        good.append(Target("good", server.add(f"/good/{name}.png", body, content_type="image/png"),
                           label=label, score=score))
    photo = test_images.encode(test_images.photo_like(400, 300), "PNG")  # ~300 KB
    limit = plan.max_image_bytes
    routes = {  # name: (route options, the codes it may end in)
        "slow-drip": ({"body": photo, "fault": "drip", "content_type": "image/png"}, {"timeout"}),
        "header-drip": ({"body": photo, "fault": "drip_headers", "content_type": "image/png"}, {"timeout"}),
        "hanging": ({"body": photo, "fault": "hang", "content_type": "image/png"}, {"timeout"}),
        "silent": ({"body": photo, "latency": 60.0}, {"timeout"}),
        "reset-mid-body": ({"body": photo, "fault": "reset", "content_type": "image/png"}, {"fetch_failed"}),
        "endless": ({"body": b"\xff", "fault": "endless", "content_type": "image/jpeg"}, {"too_large", "timeout"}),
        "huge": ({"body": random.Random(1).randbytes(limit + 1), "content_type": "image/jpeg"}, {"too_large"}),
        "lying-length": ({"body": b"\xff", "fault": "hang", "headers": {"Content-Length": str(10 * limit)}},
                         {"too_large"}),
        "gzip-bomb": ({"body": gzip.compress(b"\0" * (32 * limit), 9), "content_type": "image/png",
                       "headers": {"Content-Encoding": "gzip"}}, {"too_large"}),
        "wrong-type": ({"body": b"<!doctype html><title>404</title>", "content_type": "image/jpeg"},
                       {"not_an_image"}),
        "pixel-bomb": ({"body": test_images.bomb_png(30_000, 30_000), "content_type": "image/png"},
                       {"image_too_large"}),
        "not-found": ({"body": b"gone", "status": 404}, {"http_status"}),
        "redirect-loop": ({"status": 302, "headers": {"Location": "/fault/redirect-loop"}}, {"too_many_redirects"}),
    }
    faults = [Target(name, server.add(f"/fault/{name}", **options), frozenset(codes))
              for name, (options, codes) in routes.items()]
    return good, faults


class Mix:
    """The calls of a run: mostly POSTs of 1..n URLs mixing good images and faults (the
    faults taken in turn, so every kind is injected), some GETs, a few malformed bodies."""

    def __init__(self, good: Sequence[Target], faults: Sequence[Target], plan: Plan):
        self.good = list(good)
        self.plan = plan
        self._faults = itertools.cycle(faults)
        self._lock = threading.Lock()

    def next_fault(self) -> Target:
        with self._lock:
            return next(self._faults)

    def __call__(self, rng: random.Random) -> Call:
        roll = rng.random()
        if roll < 0.05:
            return Call("POST", "/", _expect_400, data=b'{"urls": [', headers={"Content-Type": "application/json"},
                        tags=("malformed",))
        count = rng.randint(1, self.plan.urls_per_request)
        targets = [self.next_fault() if rng.random() < self.plan.fault_share else rng.choice(self.good)
                   for _ in range(count)]
        tags = tuple(t.kind for t in targets)
        if roll < 0.20:
            query = "&".join(f"url={quote(t.url, safe='')}" for t in targets)
            return Call("GET", "/?" + query, _expect_results(targets), tags=tags)
        return Call("POST", "/", _expect_results(targets), json={"urls": [t.url for t in targets]}, tags=tags)


def _expect_results(targets: Sequence[Target]) -> Callable[[requests.Response], list[str]]:
    return expect_results(targets, lambda target, result: target.judge(result))


def _expect_400(response: requests.Response) -> list[str]:
    if response.status_code != 400 or response.json()["error"]["code"] != "bad_request":
        return [f"malformed body: status {response.status_code}, {response.text[:200]}"]
    return []


# --- the run and its verdict ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    outcomes: list[Outcome]
    polls: list[Poll]
    faults: list[Target]
    warm_rss_mb: float  # after the first request (the model loaded)
    peak_rss_mb: float  # VmHWM at the end


def run(base: str, pid: int, internet: LoopbackServer, plan: Plan) -> Run:
    """Drive the instance at `base` (process `pid`) for `plan.seconds`, /healthz polled beside."""
    good, faults = build_internet(internet, plan)
    warm = requests.post(base + "/", json={"urls": [good[0].url]}, timeout=120)  # the model loads here
    warm.raise_for_status()
    warm_rss = rss_mb(pid, "VmRSS")
    with HealthPoller(base, timeout=plan.latency_bound + 30) as poller:
        outcomes = drive(base, Mix(good, faults, plan), plan.clients, plan.seconds,
                         timeout=plan.latency_bound + 30, seed=plan.seed)
    return Run(outcomes, poller.polls, faults, warm_rss, rss_mb(pid))


def figures(run: Run, plan: Plan) -> dict:
    """Everything the report and the JSON show, and the invariants' verdicts."""
    outcomes, polls, faults = run.outcomes, run.polls, run.faults
    answered = [o for o in outcomes if o.status is not None]
    statuses = Counter(str(o.status) for o in answered)
    injected: Counter[str] = Counter()
    codes: dict[str, Counter[str]] = {t.kind: Counter() for t in faults}
    good = 0
    for outcome in answered:
        results = (outcome.answer or {}).get("results", []) if outcome.status == 200 else []
        for kind, result in zip(outcome.call.tags, results):
            if kind == "good":
                good += 1
            elif kind in codes:
                injected[kind] += 1
                codes[kind][result.get("error", {}).get("code", "predictions")] += 1
    wrong = [o for o in answered if o.problems]
    server_errors = sum(1 for o in answered if o.status >= 500)
    latencies = [o.seconds for o in answered]
    polls_ok = [p for p in polls if p.status == 200]
    health_latency = summary([p.seconds for p in polls])
    invariants = {
        "every request answered": len(answered) == len(outcomes) and bool(outcomes),
        "no 5xx": server_errors == 0,
        "every answer right": not wrong,
        f"no request over deadline + margin ({plan.latency_bound:g} s)":
            bool(latencies) and max(latencies) <= plan.latency_bound,
        "/healthz answered throughout": bool(polls) and len(polls_ok) == len(polls)
            and health_latency["max"] <= plan.latency_bound,
        "every fault injected": all(injected[t.kind] for t in faults),
        f"peak RSS <= {plan.max_rss_mb:g} MB": 0 < run.peak_rss_mb <= plan.max_rss_mb,
    }
    return {
        "plan": {**dataclasses.asdict(plan), "latency_bound": plan.latency_bound},
        "requests": {"sent": len(outcomes), "answered": len(answered), "status": dict(sorted(statuses.items())),
                     "server_errors": server_errors, "wrong": len(wrong), "latency_s": summary(latencies)},
        "images": {"good": good, "faults_injected": sum(injected.values()),
                   "faults": {kind: {"injected": injected[kind], "codes": dict(codes[kind])} for kind in codes}},
        "healthz": {"polls": len(polls), "failed": len(polls) - len(polls_ok), "latency_s": health_latency},
        "rss_mb": {"after_warmup": round(run.warm_rss_mb, 1), "peak": round(run.peak_rss_mb, 1)},
        "problems": [p for o in wrong for p in o.problems][:20] + [o.error for o in outcomes if o.error][:20],
        "invariants": invariants,
        "passed": all(invariants.values()),
    }


def table(result: dict) -> str:
    """The figures as text, for people."""
    plan, req, img, health = result["plan"], result["requests"], result["images"], result["healthz"]
    lat, hl = req["latency_s"], health["latency_s"]
    lines = [
        f"fault-injection load test: {plan['seconds']:g} s, {plan['clients']} clients, "
        f"fetch deadline {plan['deadline']:g} s, image limit {plan['max_image_bytes']} bytes",
        "",
        f"requests   sent {req['sent']}  answered {req['answered']}  5xx {req['server_errors']}  "
        f"wrong {req['wrong']}  status {req['status']}",
        f"latency    p50 {lat.get('p50', 0):.3f} s  p95 {lat.get('p95', 0):.3f} s  max {lat.get('max', 0):.3f} s"
        f"  (bound {plan['latency_bound']:g} s)",
        f"images     good {img['good']}  faults injected {img['faults_injected']}",
    ]
    for kind, fault in img["faults"].items():
        outcomes = ", ".join(f"{code} {n}" for code, n in sorted(fault["codes"].items()))
        lines.append(f"  {kind:<15} {fault['injected']:>5}  -> {outcomes}")
    lines += [
        f"/healthz   polls {health['polls']}  failed {health['failed']}  max {hl.get('max', 0):.3f} s",
        f"RSS        {result['rss_mb']['after_warmup']:.1f} MB after warm-up, peak {result['rss_mb']['peak']:.1f} MB"
        " (VmHWM of the gunicorn worker)",
        "",
    ]
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in result["invariants"].items()]
    lines += [f"  problem: {p}" for p in result["problems"]]
    return "\n".join(lines)
