"""The concurrency sweep: one functions-framework instance (the container's entrypoint and
the Dockerfile's WORKERS/THREADS, or THREADS overridden), requests for N loopback-served
images each, at rising client concurrency; per level the throughput, latency percentiles,
errors, server CPU and RSS. docs/scaling.md chooses containerConcurrency, the KPA target
and the resources from its table."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import requests

from benchlib import corpus, network, procs

from .driver import Call, drive, expect_results, pod_rss_mb, rss_mb, summary

REQUEST_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Each level stops after `seconds` or `max_requests`, whichever comes first."""

    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16)
    seconds: float = 10.0
    max_requests: int = 200
    images_per_request: int = 5


FULL = Plan()
QUICK = Plan(concurrencies=(1, 2, 4), seconds=2.0, max_requests=20)


@dataclasses.dataclass(frozen=True)
class Target:
    """One image URL and the top-1 label the function must answer for it."""

    url: str
    label: str


def request(targets: Sequence[Target]) -> Call:
    """One POST for every target's URL; judged by status, result count and each top-1."""

    def judge(target: Target, result: dict) -> list[str]:
        top = _top(result)
        return [] if top == target.label else [f"{target.url}: got {top or result.get('error')}, expected {target.label}"]

    return Call("POST", "/", expect_results(targets, judge), json={"urls": [t.url for t in targets]}, tags=tuple(t.url for t in targets))


def _top(result: dict) -> str | None:
    return result["predictions"][0]["label"] if result.get("predictions") else None


def reference(base: str, urls: Sequence[str]) -> list[Target]:
    """Targets labelled by one request sent alone: for a model whose answers are not known
    beforehand, every answer under load must agree with the unloaded one."""
    response = requests.post(base + "/", json={"urls": list(urls)}, timeout=REQUEST_TIMEOUT)
    response.raise_for_status()
    results = response.json()["results"]
    failed = [r for r in results if "predictions" not in r]
    if failed:
        raise RuntimeError(f"the reference request failed: {failed[0]}")
    return [Target(url, r["predictions"][0]["label"]) for url, r in zip(urls, results)]


def level(server: procs.Server, call: Call, concurrency: int, plan: Plan) -> dict:
    """`concurrency` clients sending `call` back to back for one bounded level."""
    cpu0, started = server.cpu_seconds(), time.monotonic()
    outcomes = drive(server.base, lambda _rng: call, concurrency, plan.seconds, plan.max_requests,
                     timeout=REQUEST_TIMEOUT)
    elapsed, cpu = time.monotonic() - started, server.cpu_seconds() - cpu0
    ok = [o for o in outcomes if o.status == 200 and not o.problems]
    images = len(ok) * len(call.tags)
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(ok) / elapsed, 3),
        "images_per_s": round(images / elapsed, 3),
        "latency_s": summary([o.seconds for o in outcomes if o.status is not None]),
        "server_cores": round(cpu / elapsed, 2),  # CPU seconds per second: cores kept busy
        # what a request costs, whatever else runs on the machine: capacity per core = 1 / this
        "server_cpu_s_per_request": round(cpu / len(ok), 3) if ok else None,
        # the largest process's, and all of them added up: what the pod's memory request must hold
        "rss_mb": {"VmRSS": round(rss_mb(server.pid, "VmRSS"), 1), "VmHWM": round(rss_mb(server.pid), 1),
                   "pod_VmHWM": round(pod_rss_mb(server.pid), 1)},
        "problems": [p for o in outcomes for p in o.problems][:5] + [o.error for o in outcomes if o.error][:5],
    }


def instance(env: Mapping[str, str], urls: Sequence[str], plan: Plan, log_path: Path,
             targets: Sequence[Target] | None = None, log: Callable[[str], None] = print) -> dict:
    """Start one instance with `env` (THREADS in it overrides the Dockerfile's), load the
    model with a first request, then run every level of `plan` against it. Without
    `targets`, the expected labels are the first request's (`reference`)."""
    with procs.Server(env, log_path) as server:
        started = time.monotonic()
        expected = reference(server.base, urls)
        if targets is not None and [t.label for t in targets] != [t.label for t in expected]:
            raise RuntimeError(f"the first request answered {expected}, expected {list(targets)}")
        first_s = time.monotonic() - started
        warm_rss = rss_mb(server.pid, "VmRSS")
        call = request(expected)
        levels = []
        for concurrency in plan.concurrencies:
            log(f"THREADS={server_threads(env)}: {concurrency} concurrent clients ...")
            levels.append(level(server, call, concurrency, plan))
    return {"threads": int(server_threads(env)), "workers": int(procs.dockerfile_env(["WORKERS"])["WORKERS"]),
            "images_per_request": len(call.tags),
            "first_request_s": round(first_s, 3), "rss_after_warmup_mb": round(warm_rss, 1),
            "peak_rss_mb": max(lvl["rss_mb"]["VmHWM"] for lvl in levels),
            "pod_peak_rss_mb": max(lvl["rss_mb"]["pod_VmHWM"] for lvl in levels), "levels": levels}


def server_threads(env: Mapping[str, str]) -> str:
    return env.get("THREADS") or procs.dockerfile_env(["THREADS"])["THREADS"]


def passed(instances: Sequence[dict]) -> bool:
    return all(not lvl["errors"] and lvl["requests"] for inst in instances for lvl in inst["levels"])


def table(result: dict) -> str:
    """One block per THREADS value: a row per concurrency level."""
    lines = [f"concurrency sweep: {result['images_per_request']} images/request ({result['images']}), "
             f"image latency: {result['latency']}; each level <= {result['plan']['seconds']:g} s "
             f"or {result['plan']['max_requests']} requests; {result['cpus']} CPUs, load average "
             f"{' -> '.join(map(str, result['load_average']))} (before -> after)"]
    header = (f"{'clients':>7} {'reqs':>5} {'errors':>6} {'req/s':>6} {'img/s':>6} {'p50 s':>6} {'p95 s':>6} "
              f"{'p99 s':>6} {'cores':>5} {'CPU s/req':>9} {'VmRSS MB':>8} {'VmHWM MB':>8} {'pod MB':>6}")
    for inst in result["instances"]:
        lines += ["", f"THREADS={inst['threads']} (WORKERS={inst['workers']}): first request {inst['first_request_s']:.2f} s "
                      f"(model load), RSS after it {inst['rss_after_warmup_mb']:.0f} MB, "
                      f"peak (VmHWM) {inst['peak_rss_mb']:.0f} MB, the pod's processes together "
                      f"{inst['pod_peak_rss_mb']:.0f} MB", header]
        for lvl in inst["levels"]:
            lat = lvl["latency_s"]
            lines.append(
                f"{lvl['concurrency']:>7} {lvl['requests']:>5} {lvl['errors']:>6} {lvl['requests_per_s']:>6.2f} "
                f"{lvl['images_per_s']:>6.1f} {lat.get('p50', 0):>6.3f} {lat.get('p95', 0):>6.3f} "
                f"{lat.get('p99', 0):>6.3f} {lvl['server_cores']:>5.2f} {lvl['server_cpu_s_per_request'] or 0:>9.3f} "
                f"{lvl['rss_mb']['VmRSS']:>8.0f} "
                f"{lvl['rss_mb']['VmHWM']:>8.0f} {lvl['rss_mb']['pod_VmHWM']:>6.0f}")
            lines += [f"        problem: {p}" for p in lvl["problems"]]
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=_ints, help="--sweep: the client levels, comma-separated "
                                                         f"(default {_csv(FULL.concurrencies)}, quick {_csv(QUICK.concurrencies)})")
    parser.add_argument("--threads", type=_ints, help="--sweep: one instance per THREADS value, comma-separated "
                                                     "(default: the Dockerfile's)")
    parser.add_argument("--max-requests", type=int, help="--sweep: requests per level at most "
                                                        f"(default {FULL.max_requests}, quick {QUICK.max_requests})")
    parser.add_argument("--images", type=int, help=f"--sweep: image URLs per request (default {FULL.images_per_request})")
    parser.add_argument("--latency", action="store_true",
                        help="--sweep: images behind internet-like latency and bandwidth (default: none added)")
    parser.add_argument("--corpus-cache", type=Path, default=procs.ROOT / "bench-results" / "cache",
                        help="--sweep: where scripts/bench caches the model and images (default: %(default)s)")


def run_cli(args: argparse.Namespace, prepare: Callable[[str, str, Path], None]) -> int:
    """`--sweep`: the bench's MobileNetV2-sized stand-in and JPEGs on a loopback server,
    `prepare` (the .tflite conversion), then one instance per THREADS value."""
    overrides = {"seconds": args.seconds, "max_requests": args.max_requests, "concurrencies": args.concurrency,
                 "images_per_request": args.images}
    plan = dataclasses.replace(QUICK if args.quick else FULL, **{k: v for k, v in overrides.items() if v is not None})
    fixtures = corpus.load(args.corpus_cache, log=lambda m: print(m, file=sys.stderr))
    load_before = os.getloadavg()[0]
    profile = network.INTERNET if args.latency else network.NO_LATENCY
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp, network.serve(fixtures, profile) as site:
        work = Path(tmp)
        cache_dir = args.cache_dir or work / "tfhub"
        prepare(site.model_url, site.labels_url, cache_dir)
        env = {"CLASSIFIER_MODEL_URL": site.model_url, "CLASSIFIER_LABELS_URL": site.labels_url,
               "CLASSIFIER_ALLOW_PRIVATE_URLS": "1", "CLASSIFIER_LOG_LEVEL": "warning",
               "TFHUB_CACHE_DIR": str(cache_dir)}
        urls = [site.images[i % len(site.images)] for i in range(plan.images_per_request)]
        log = lambda message: print(message, file=sys.stderr, flush=True)
        instances = [instance({**env, **({"THREADS": str(t)} if t else {})}, urls, plan, work / f"server-{t}.log",
                              log=log)
                     for t in (args.threads or [None])]
    sizes = {url.rsplit("/", 1)[-1]: len(image.data) for url, image in
             zip(site.images, sorted(fixtures.images, key=lambda image: len(image.data)))}
    result = {"plan": dataclasses.asdict(plan), "latency": profile.name, "cpus": os.cpu_count(),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # others' work shows here
              "images_per_request": plan.images_per_request,
              "images": ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items()),
              "instances": instances, "passed": passed(instances)}
    print(table(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _csv(numbers: Sequence[int]) -> str:
    return ",".join(map(str, numbers))
