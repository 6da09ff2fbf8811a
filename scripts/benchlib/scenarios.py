"""The scenarios, each repeated: the baseline and this function side by side, on the
same machine, the same stand-in model and the same loopback "internet".

Whatever compares two sides (runtimes, settings, ours and the baseline) runs them in
turns, round by round, so that drift in the machine's speed falls on every side alike,
and records how much of the CPUs other processes took meanwhile (`others_cpu_share`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import urllib3

from function import fetch
from function.config import Settings

from . import procs
from .network import Site

RUNTIMES = ("litert", "tensorflow")
PROCESS_TIMEOUT = 300.0
REQUEST_TIMEOUT = 120.0
# A throughput level counts the answers of a steady-state window: it opens once the clients
# have had RAMP_SECONDS to fill the instance and lasts LEVEL_SECONDS.
RAMP_SECONDS = 1.0
LEVEL_SECONDS = 5.0
WARM_UP_TRIES = 20
CPUS = os.cpu_count() or 1


def summary(values: Sequence[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "runs": list(values)}


def _median_fields(rows: Sequence[dict]) -> dict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


class Others:
    """The share of the machine's CPUs other processes took while the block ran: all the
    busy CPU time on the machine, less this process's and the measured processes'
    (`measured()`: their CPU seconds so far; `ended`: those of measured processes that
    exited inside the block), over CPUs x wall time."""

    def __init__(self, measured: Callable[[], float] = lambda: 0.0):
        self._measured = measured
        self.ended = 0.0
        self.share = 0.0

    def _mark(self) -> tuple[float, float, float, float]:
        return time.perf_counter(), procs.machine_busy_seconds(), time.process_time(), self._measured()

    def __enter__(self) -> "Others":
        self._start = self._mark()
        return self

    def __exit__(self, *exc) -> None:
        (t0, machine0, own0, measured0), (t1, machine1, own1, measured1) = self._start, self._mark()
        others = (machine1 - machine0) - (own1 - own0) - (measured1 - measured0) - self.ended
        self.share = max(0.0, others) / ((t1 - t0) * CPUS)


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
        """Fresh processes for 5 URLs (the baseline's and ours) and a bare `python -c pass`
        (the floor's interpreter start), taking turns round by round."""
        runs: dict[str, list[procs.Finished]] = {"bare_python": [], "baseline": [], **{r: [] for r in runtimes}}
        with Others() as others:
            for round_ in range(rounds):
                self.log(f"cold CLI round {round_ + 1}/{rounds}: python -c pass, baseline, {', '.join(runtimes)} ...")
                runs["bare_python"].append(procs.checked(procs.run(
                    ["-c", "pass"], self.function_env(runtimes[0]), PROCESS_TIMEOUT), "python -c pass"))
                runs["baseline"].append(procs.checked(procs.run(
                    ["-m", "benchlib.baseline", self.site.model_url, self.site.labels_url, *self.site.images],
                    self.function_env("tensorflow"), PROCESS_TIMEOUT), "baseline"))
                for runtime in runtimes:
                    runs[runtime].append(procs.checked(self._ours(runtime), f"classify ({runtime})"))
                others.ended += sum(done[-1].cpu_seconds for done in runs.values())
        result: dict = {"others_cpu_share": others.share}
        for name, done in runs.items():
            entry = {"seconds": summary([d.seconds for d in done]), "peak_rss_mb": max(d.peak_rss_mb for d in done)}
            if name != "bare_python":
                outputs = [_json_lines(d.stdout) for d in done]
                entry["top3"] = _top3(outputs[0])
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
        """benchlib.probe in a fresh process, and how much of the CPUs others took meanwhile
        (it slows what the probe times)."""
        with Others() as others:
            done = procs.checked(procs.run(
                ["-m", "benchlib.probe", mode, "--cache", str(self.corpus_cache), *args],
                self.function_env(runtime, **env), PROCESS_TIMEOUT), f"probe {mode} ({runtime})")
            others.ended = done.cpu_seconds
        return {**json.loads(done.stdout), "others_cpu_share": others.share}

    def inference(self, runtime: str, batches: Sequence[int], repeat: int, threads: Sequence[int] = (0,)) -> dict:
        """Batched model calls alone in a fresh process (litert: on each LiteRT thread count,
        taking turns); the fixtures' scores saved for the runtime agreement check."""
        scores = self.work / f"scores-{runtime}.npy"
        return {**self.probe("infer", runtime, "--batches", ",".join(map(str, batches)), "--repeat", str(repeat),
                             "--threads", ",".join(map(str, threads)), "--scores", str(scores)),
                "scores_path": str(scores)}

    # --- (2, 4, 5, 6) functions-framework instances ----------------------------------

    def cold_starts(self, runtimes: Sequence[str], rounds: int) -> dict:
        """A fresh instance per runtime and round, in turns: process start to /healthz and
        to the first answer, with the first answer's own timings."""
        runs: dict[str, list[dict]] = {r: [] for r in runtimes}
        with Others() as others:
            for round_ in range(rounds):
                self.log(f"cold start round {round_ + 1}/{rounds}: {', '.join(runtimes)} ...")
                for runtime in runtimes:
                    with procs.Server(self.function_env(runtime), self._log_path(f"cold-{runtime}")) as server:
                        first = _post(_session(), server.base, list(self.site.images))
                        runs[runtime].append({"healthz_s": server.healthz_seconds,
                                              "first_answer_s": time.perf_counter() - server.started,
                                              "first_timings_ms": first["timings_ms"]})
                        others.ended += server.cpu_seconds()
        return {"others_cpu_share": others.share, **{runtime: {
            "healthz_s": summary([r["healthz_s"] for r in rows]),
            "first_answer_s": summary([r["first_answer_s"] for r in rows]),
            "first_timings_ms": _median_fields([r["first_timings_ms"] for r in rows]),
        } for runtime, rows in runs.items()}}

    @contextlib.contextmanager
    def instances(self, variants: Mapping[str, Mapping[str, str]]) -> Iterator[dict[str, procs.Server]]:
        """One instance per variant (name -> runtime and server settings over the
        Dockerfile's), every gunicorn worker's model loaded before the block."""
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, env in variants.items():
                env = dict(env)
                runtime = env.pop("CLASSIFIER_RUNTIME", "litert")
                servers[name] = stack.enter_context(
                    procs.Server(self.function_env(runtime, **env), self._log_path(name.replace(" ", "_"))))
                _warm_up(servers[name], list(self.site.lan_images))
            yield servers

    def warm(self, servers: Mapping[str, procs.Server], repeats: int) -> dict:
        """5-URL requests to warm instances, one to each per round; each worker's memory
        after the first round and after the last (identical requests: no growth expected)."""
        clients = {name: _session() for name in servers}
        runs: dict[str, list] = {name: [] for name in servers}
        memory: dict[str, list] = {name: [] for name in servers}
        with Others(lambda: sum(s.cpu_seconds() for s in servers.values())) as others:
            for round_ in range(repeats):
                for name, server in servers.items():
                    runs[name].append(_timed_post(clients[name], server.base, list(self.site.images)))
                    if round_ in (0, repeats - 1):
                        memory[name].append(server.memory())
        return {"others_cpu_share": others.share, **{name: {
            "warm_s": summary([seconds for seconds, _ in rows]),
            "warm_timings_ms": _median_fields([body["timings_ms"] for _, body in rows]),
            "memory_after_first": memory[name][0], "memory_after_last": memory[name][-1],
        } for name, rows in runs.items()}}

    def throughput(self, server: procs.Server, concurrencies: Sequence[int]) -> list[dict]:
        """Images at loopback speed, so that the CPUs, not the network, are the limit."""
        return [_throughput(server, list(self.site.lan_images), c) for c in concurrencies]

    def settings(self, variants: Mapping[str, Mapping[str, str]], concurrency: int, rounds: int) -> dict:
        """Throughput of one litert instance per server-settings variant at `concurrency`,
        the variants taking turns for `rounds` rounds."""
        with self.instances(variants) as servers:
            rows: dict[str, list[dict]] = {name: [] for name in servers}
            for round_ in range(rounds):
                self.log(f"settings round {round_ + 1}/{rounds}: {len(servers)} instances at {concurrency} clients ...")
                for name, server in servers.items():
                    rows[name].append(_throughput(server, list(self.site.lan_images), concurrency))
        share = statistics.fmean(row["others_cpu_share"] for runs in rows.values() for row in runs)
        return {"concurrency": concurrency, "others_cpu_share": share, "variants": {
            name: {"settings": dict(variants[name]), "runs": runs} for name, runs in rows.items()}}

    def _log_path(self, name: str) -> Path:
        return self.work / f"server-{name}-{len(list(self.work.glob('server-*.log')))}.log"


# --- HTTP clients ----------------------------------------------------------------------


def _post(session: urllib3.PoolManager, base: str, urls: list[str]) -> dict:
    response = session.request("POST", f"{base}/", json={"urls": urls}, timeout=REQUEST_TIMEOUT)
    if response.status != 200:
        raise RuntimeError(f"the function answered {response.status}: {response.data[:200]!r}")
    body = response.json()
    failed = [r for r in body["results"] if "error" in r]
    if failed:
        raise RuntimeError(f"the function failed on {len(failed)} images: {failed[0]}")
    return body


def _timed_post(session: urllib3.PoolManager, base: str, urls: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    body = _post(session, base, urls)
    return time.perf_counter() - started, body


def _warm_up(server: procs.Server, urls: list[str]) -> None:
    """Requests, as many at once as there are workers, until every worker has loaded its
    model (each loads on its own first request: a cold worker is no warm instance)."""
    workers = server.workers
    for _ in range(WARM_UP_TRIES):
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda _: _post(_session(), server.base, urls), range(workers)))
        if len([e for e in _log_events(server.log_path) if " loaded in " in e.get("message", "")]) >= workers:
            return
    raise RuntimeError(f"not every one of {workers} workers loaded its model in {WARM_UP_TRIES} tries")


def _throughput(server: procs.Server, urls: list[str], concurrency: int,
                seconds: float = LEVEL_SECONDS, ramp: float = RAMP_SECONDS) -> dict:
    """`concurrency` clients, each sending 5-URL requests back to back, and what the
    instance does in steady state: only the requests answered inside a window count, one
    that opens `ramp` s after the clients start and closes `seconds` later. (Counting from
    the first request sent to the last answered also counted the end, where the clients
    finish one by one and the instance idles: at 32 clients of 3 requests each, that took
    5-10 % off.) Where the CPUs went per image in the window: the instance (and, from its
    log lines, its phases), this process (clients and image server), everyone else, and
    idle (the instance's threads waiting)."""
    closed = threading.Event()

    def client(_) -> list[tuple[float, float]]:
        session, answered = _session(), []
        while not closed.is_set():
            started = time.perf_counter()
            _post(session, server.base, urls)
            answered.append((started, time.perf_counter()))
        return answered

    def mark() -> tuple[float, float, float, float, int]:
        return (time.perf_counter(), server.cpu_seconds(), time.process_time(), procs.machine_busy_seconds(),
                server.log_path.stat().st_size)

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        clients = [pool.submit(client, index) for index in range(concurrency)]
        time.sleep(ramp)
        t0, server0, bench0, machine0, logged0 = mark()
        time.sleep(seconds)
        t1, server1, bench1, machine1, logged1 = mark()
        closed.set()
        answered = [times for done in clients for times in done.result()]
    latencies = [end - start for start, end in answered if t0 <= end <= t1]
    if not latencies:
        raise RuntimeError(f"no request was answered within the {seconds:g} s window at {concurrency} clients")
    images, wall = len(latencies) * len(urls), t1 - t0
    server_cpu, bench_cpu, busy = server1 - server0, bench1 - bench0, machine1 - machine0
    per_image = lambda seconds: 1000 * seconds / images  # noqa: E731
    logged = [e for e in _log_events(server.log_path, logged0, logged1) if "cpu_ms" in e]
    logged_images = sum(e["count"] for e in logged) or 1
    return {"concurrency": concurrency, "requests": len(latencies), "images_per_s": images / wall,
            "latency_s": summary(latencies), "others_cpu_share": max(0.0, busy - server_cpu - bench_cpu) / (CPUS * wall),
            "cpu_ms_per_image": {"server": per_image(server_cpu), "bench": per_image(bench_cpu),
                                 "others": per_image(busy - server_cpu - bench_cpu),
                                 "idle": per_image(CPUS * wall - busy)},
            # the requests the instance logged in the window: their phases per image they served
            "server_phases_cpu_ms_per_image": {phase: sum(e["cpu_ms"][phase] for e in logged) / logged_images
                                               for phase in ("fetch", "decode", "inference")}}


def _session() -> urllib3.PoolManager:
    """A client that, like a load balancer, resends a request whose kept-alive connection
    the server closed just as it was reused (gunicorn drops idle ones after 2 s). urllib3
    rather than requests: the clients share the CPUs with the instance they measure."""
    return urllib3.PoolManager(retries=urllib3.Retry(total=1, connect=1, read=1, status=0, allowed_methods=None))


# --- output parsing --------------------------------------------------------------------


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _log_events(path: Path, start: int = 0, end: int | None = None) -> list[dict]:
    """The JSON log lines a server wrote between bytes `start` and `end` of its log (to its
    end without `end`): whole lines only, a line either offset cuts belongs to neither side."""
    with open(path, "rb") as log:
        log.seek(max(0, start - 1))
        whole_first = start == 0 or log.read(1) == b"\n"
        data = log.read() if end is None else log.read(max(0, end - start))
    if not whole_first:
        data = data.partition(b"\n")[2]
    if end is not None:
        data = data[:data.rfind(b"\n") + 1]
    return _json_lines(data.decode(errors="replace"))


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
