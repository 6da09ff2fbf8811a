"""Concurrent clients against one base URL for a bounded time, and a /healthz poller
beside them: what each request got, how long it took, and what was wrong with it.

Every mode of `scripts/loadtest` drives the function through `drive`; a mode decides
which calls to make (`next_call`) and how to judge each answer (`Call.check`).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from benchlib import procs


@dataclasses.dataclass(frozen=True)
class Call:
    """One request to send, and how to judge its answer."""

    method: str
    path: str
    check: Callable[[requests.Response], list[str]]  # what is wrong with the answer; [] if nothing
    json: Any = None
    data: bytes | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()  # what the call carries (image kinds), for reports


@dataclasses.dataclass(frozen=True)
class Outcome:
    call: Call
    started: float  # seconds since the run began
    seconds: float
    status: int | None  # None: no answer at all (connection error, client timeout)
    problems: tuple[str, ...] = ()
    answer: Any = None  # the JSON body, when there is one
    error: str | None = None  # why there was no answer


def expect_results(targets: Sequence[Any], judge: Callable[[Any, dict], list[str]]) -> Callable[[requests.Response], list[str]]:
    """A Call check: 200, one result per target, and each result judged against its target."""

    def check(response: requests.Response) -> list[str]:
        if response.status_code != 200:
            return [f"status {response.status_code}: {response.text[:200]}"]
        results = response.json()["results"]
        if len(results) != len(targets):
            return [f"{len(results)} results for {len(targets)} URLs"]
        return [problem for target, result in zip(targets, results) for problem in judge(target, result)]

    return check


def drive(base: str, next_call: Callable[[random.Random], Call], clients: int, seconds: float,
          max_calls: int | None = None, timeout: float = 120.0, seed: int = 0) -> list[Outcome]:
    """`clients` threads, each on its own keep-alive connection, send calls back to back
    until `seconds` have passed (or `max_calls` were sent); calls in flight then finish."""
    origin = time.monotonic()
    numbers = itertools.count()
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        with requests.Session() as session:
            while time.monotonic() - origin < seconds:
                with lock:
                    if max_calls is not None and next(numbers) >= max_calls:
                        return
                outcome = send(session, base, next_call(rng), timeout, origin)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.started)


def send(session: requests.Session, base: str, call: Call, timeout: float, origin: float) -> Outcome:
    started = time.monotonic()
    try:
        response = session.request(call.method, base + call.path, json=call.json, data=call.data,
                                   headers=dict(call.headers), timeout=timeout)
    except requests.RequestException as exc:
        return Outcome(call, started - origin, time.monotonic() - started, None, error=f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - started
    try:
        answer = response.json()
    except ValueError:
        answer = None
    try:
        problems = tuple(call.check(response))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        problems = (f"unexpected answer shape: {type(exc).__name__}: {exc}",)
    return Outcome(call, started - origin, seconds, response.status_code, problems, answer)


@dataclasses.dataclass(frozen=True)
class Poll:
    started: float
    seconds: float
    status: int | None  # None: no answer


class HealthPoller:
    """GETs /healthz every `interval` seconds on its own connection while the block runs."""

    def __init__(self, base: str, interval: float = 0.25, timeout: float = 60.0):
        self.base = base
        self.interval = interval
        self.timeout = timeout
        self.polls: list[Poll] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-poller")

    def _run(self) -> None:
        origin = time.monotonic()
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = session.get(self.base + "/healthz", timeout=self.timeout).status_code
                except requests.RequestException:
                    status = None
                self.polls.append(Poll(started - origin, time.monotonic() - started, status))
                self._stop.wait(self.interval)

    def __enter__(self) -> "HealthPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p95, p99 and max, rounded to milliseconds."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    figures = {"mean": statistics.fmean(ordered), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99),
               "max": ordered[-1]}
    return {"count": len(ordered), **{k: round(v, 3) for k, v in figures.items()}}


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The largest `field` (VmHWM: peak resident set; VmRSS: now) among `pid` and its live
    descendants, read from /proc. (A child's ru_maxrss would also count the pages it
    shared with its parent before exec: a parent that imported TensorFlow shows there.)"""
    return max(procs.tree_memory_mb(pid, field))


def pod_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """`field` added up over `pid` and its live descendants: what a pod running them holds
    (an upper bound: pages a worker shares with its master count twice)."""
    return sum(procs.tree_memory_mb(pid, field))
