"""The scenarios, each repeated: the baseline and this function side by side, on the
same machine, the same stand-in model and the same loopback "internet"."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import requests
import urllib3

from function import fetch
from function.config import Settings

from . import procs
from .network import Site

RUNTIMES = ("litert", "tensorflow")
PROCESS_TIMEOUT = 300.0
REQUEST_TIMEOUT = 120.0


def summary(values: Sequence[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "runs": list(values)}


def _median_fields(rows: Sequence[dict]) -> dict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


@dataclasses.dataclass
class Bench:
    """One run's scenarios against one served corpus, with a model cache of its own
    (empty at first: the first-ever run fills it)."""

    site: Site
    corpus_cache: Path
    work: Path  # per-run scratch: model caches, server logs, scores
    log: Callable[[str], None] = print

    def __post_init__(self):
        self.model_cache = Path(tempfile.mkdtemp(prefix="tfhub-", dir=self.work))

    # --- environments ----------------------------------------------------------------

    def function_env(self, runtime: str, **extra: str) -> dict[str, str]:
        """The function's settings for this run: the stand-in, loopback allowed, JSON logs."""
        return procs.python_env({
            "CLASSIFIER_MODEL_URL": self.site.model_url,
            "CLASSIFIER_LABELS_URL": self.site.labels_url,
            "CLASSIFIER_ALLOW_PRIVATE_URLS": "1",
            "CLASSIFIER_RUNTIME": runtime,
            "CLASSIFIER_LOG_FORMAT": "json",
            "TFHUB_CACHE_DIR": str(self.model_cache),
            **extra,
        })

    # --- (1) cold CLI ----------------------------------------------------------------

    def first_conversion(self) -> dict:
        """Our CLI on an empty cache: download the module, import TensorFlow, convert to
        .tflite, classify. Paid once per model (or at image build); it warms the cache
        the other scenarios use, as a baked image would have it."""
        self.log("first-ever run: download + convert to .tflite ...")
        done = procs.checked(self._ours("litert"), "first classify run")
        return {"seconds": done.seconds, "peak_rss_mb": done.peak_rss_mb}

    def cold_cli(self, rounds: int, runtimes: Sequence[str]) -> dict:
        """Fresh processes for 5 URLs, interleaved round by round so drift hits all alike."""
        runs: dict[str, list] = {"baseline": [], **{r: [] for r in runtimes}}
        for round_ in range(rounds):
            self.log(f"cold CLI round {round_ + 1}/{rounds}: baseline, {', '.join(runtimes)} ...")
            runs["baseline"].append(procs.checked(procs.run(
                ["-m", "benchlib.baseline", self.site.model_url, self.site.labels_url, *self.site.images],
                self.function_env("tensorflow"), PROCESS_TIMEOUT), "baseline"))
            for runtime in runtimes:
                runs[runtime].append(procs.checked(self._ours(runtime), f"classify ({runtime})"))
        result = {}
        for name, done in runs.items():
            outputs = [_json_lines(d.stdout) for d in done]
            entry = {
                "seconds": summary([d.seconds for d in done]),
                "peak_rss_mb": max(d.peak_rss_mb for d in done),
                "top3": _top3(outputs[0]),
            }
            if name == "baseline":
                entry["phases_s"] = _median_fields([o[-1]["phases"] for o in outputs])
            else:
                entry["timings_ms"] = _median_fields([_classified_event(d.stderr) for d in done])
            result[name] = entry
        return result

    def _ours(self, runtime: str) -> procs.Finished:
        return procs.run(["-m", "function", "--json", *self.site.images],
                         self.function_env(runtime), PROCESS_TIMEOUT)

    # --- (3) the floor ---------------------------------------------------------------

    def fetch_floor(self, repeats: int) -> dict:
        """The slowest image fetched alone, through the function's own fetch code. By
        construction the largest image also has the longest time to first byte."""
        settings = Settings(allow_private_urls=True)
        session = fetch.make_session(settings)
        url = self.site.largest()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            fetch.fetch(session, url, settings)
            seconds.append(time.perf_counter() - started)
        return summary(seconds)

    def probe(self, mode: str, runtime: str, *args: str, **env: str) -> dict:
        """benchlib.probe in a fresh process; `others_cpu_share` is how much of the
        machine's CPUs other processes took meanwhile (it slows what the probe times)."""
        machine, bench = procs.machine_busy_seconds(), time.process_time()
        done = procs.checked(procs.run(
            ["-m", "benchlib.probe", mode, "--cache", str(self.corpus_cache), *args],
            self.function_env(runtime, **env), PROCESS_TIMEOUT), f"probe {mode} ({runtime})")
        others = (procs.machine_busy_seconds() - machine - done.cpu_seconds - (time.process_time() - bench))
        return {**json.loads(done.stdout), "others_cpu_share": others / (done.seconds * (os.cpu_count() or 1))}

    def inference(self, runtime: str, batches: Sequence[int], repeat: int,
                  litert_threads: int | None = None, **env: str) -> dict:
        """Batched model calls alone in a fresh process; the fixtures' scores saved for the
        runtime agreement check."""
        scores = self.work / f"scores-{runtime}-{len(list(self.work.glob('scores-*')))}.npy"
        args = ["--batches", ",".join(map(str, batches)), "--repeat", str(repeat), "--scores", str(scores)]
        if litert_threads is not None:
            args += ["--litert-threads", str(litert_threads)]
        result = self.probe("infer", runtime, *args, **env)
        result["inference_s"] = {size: summary(times) for size, times in result["inference_s"].items()}
        result["scores_path"] = str(scores)
        return result

    # --- (2, 4, 5, 6) one functions-framework instance -------------------------------

    def instance(self, runtime: str, warm_repeats: int, concurrencies: Sequence[int],
                 lan: bool = True, **env: str) -> dict:
        """Cold start, then warm 5-URL requests, then throughput; peak RSS at the end."""
        log_path = self.work / f"server-{runtime}-{len(list(self.work.glob('server-*.log')))}.log"
        urls = list(self.site.images)
        with procs.Server(self.function_env(runtime, **env), log_path) as server:
            first = _post(_session(), server.base, urls)
            cold = {
                "healthz_s": server.healthz_seconds,
                "first_answer_s": time.perf_counter() - server.started,
                "first_timings_ms": first["timings_ms"],
            }
            client = _session()
            warm = [_timed_post(client, server.base, urls) for _ in range(warm_repeats)]
            throughput = [
                _throughput(server, list(self.site.lan_images if lan else urls), c)
                for c in concurrencies
            ]
        return {
            "cold_start": cold,
            "warm_s": summary([seconds for seconds, _ in warm]),
            "warm_timings_ms": _median_fields([body["timings_ms"] for _, body in warm]),
            "throughput": throughput,
            "peak_rss_mb": server.peak_rss_mb,
        }


# --- HTTP clients ----------------------------------------------------------------------


def _post(session: requests.Session, base: str, urls: list[str]) -> dict:
    response = session.post(f"{base}/", json={"urls": urls}, timeout=REQUEST_TIMEOUT)
    response.raise_for_status()
    body = response.json()
    failed = [r for r in body["results"] if "error" in r]
    if failed:
        raise RuntimeError(f"the function failed on {len(failed)} images: {failed[0]}")
    return body


def _timed_post(session: requests.Session, base: str, urls: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    body = _post(session, base, urls)
    return time.perf_counter() - started, body


def _throughput(server: procs.Server, urls: list[str], concurrency: int, per_client: int = 3) -> dict:
    """`concurrency` clients, each sending `per_client` 5-URL requests back to back. CPU
    per image is split into the server's, this process's (clients and image server) and
    everyone else's on the machine."""
    local = threading.local()

    def client(_) -> list[float]:
        local.session = getattr(local, "session", None) or _session()
        return [_timed_post(local.session, server.base, urls)[0] for _ in range(per_client)]

    def mark() -> tuple[float, float, float, float]:
        return time.perf_counter(), server.cpu_seconds(), time.process_time(), procs.machine_busy_seconds()

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        t0, server0, bench0, machine0 = mark()
        latencies = [s for batch in pool.map(client, range(concurrency)) for s in batch]
        t1, server1, bench1, machine1 = mark()
    images = len(latencies) * len(urls)
    server_cpu, bench_cpu = server1 - server0, bench1 - bench0
    return {"concurrency": concurrency, "requests": len(latencies), "images_per_s": images / (t1 - t0),
            "latency_s": summary(latencies),
            "cpu_ms_per_image": {"server": 1000 * server_cpu / images, "bench": 1000 * bench_cpu / images,
                                 "others": 1000 * (machine1 - machine0 - server_cpu - bench_cpu) / images}}


def _session() -> requests.Session:
    """A client that, like a load balancer, resends a request whose kept-alive connection
    the server closed just as it was reused (gunicorn drops idle ones after 2 s)."""
    session = requests.Session()
    retry = urllib3.Retry(total=1, connect=1, read=1, status=0, allowed_methods=None)
    session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
    return session


# --- output parsing --------------------------------------------------------------------


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _top3(lines: list[dict]) -> dict[str, list[str]]:
    return {row["url"].rsplit("/", 1)[-1]: [p["label"] for p in row["predictions"]]
            for row in lines if "predictions" in row}


def _classified_event(stderr: str) -> dict:
    for row in _json_lines(stderr):
        if row.get("event") == "classified":
            return row["timings_ms"]
    raise RuntimeError(f"no 'classified' log line in: {stderr[-2000:]}")


def score_agreement(paths: dict[str, str]) -> dict:
    """Top-3 and the largest score difference between runtimes, on the same decoded pixels."""
    scores = {name: np.load(path) for name, path in paths.items()}
    litert, tensorflow = scores["litert"], scores["tensorflow"]
    top = {name: np.argsort(-s, axis=1)[:, :3] for name, s in scores.items()}
    return {
        "top3_identical": int((top["litert"] == top["tensorflow"]).all(axis=1).sum()),
        "images": int(litert.shape[0]),
        "max_score_diff": float(np.abs(litert - tensorflow).max()),
    }
