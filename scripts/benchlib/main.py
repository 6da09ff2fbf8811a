"""`scripts/bench [--quick] [--no-latency]`: every scenario in one run, a table of ratios
on stdout and the full results as JSON (see docs/performance.md)."""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import corpus, network, report
from .procs import ROOT, Server, dockerfile_env
from .scenarios import RUNTIMES, Bench, score_agreement


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything, and how often."""

    name: str
    cli_rounds: int
    cold_start_rounds: int
    warm_repeats: int
    concurrencies: tuple[int, ...]
    inference_repeats: int
    batches: tuple[int, ...]
    # full: tensorflow gets every scenario, and other server settings are measured against
    # the shipped ones; quick: tensorflow gets what the default-runtime decision needs
    # (agreement, cold start, warm latency), not the cold CLI runs or throughput.
    full: bool


QUICK = Plan("quick", cli_rounds=3, cold_start_rounds=2, warm_repeats=5, concurrencies=(2, 8),
             inference_repeats=10, batches=(1, 5), full=False)
FULL = Plan("full", cli_rounds=5, cold_start_rounds=3, warm_repeats=10, concurrencies=(1, 2, 4, 8, 16, 32),
            inference_repeats=20, batches=(1, 5, 10), full=True)

# Server settings measured against the Dockerfile's in a full run (at the concurrency where
# the shipped instance did best): the first round's (on 2 CPUs the same as the shipped ones
# but for how the thread count is found: a gauge of the rounds' noise), one LiteRT thread,
# and two workers with one LiteRT thread each (two model calls at once, twice the memory).
SETTINGS = {
    "1 worker x 8 threads, LiteRT 1 thread per CPU (first round)":
        {"WORKERS": "1", "THREADS": "8", "CLASSIFIER_LITERT_THREADS": "0"},
    "1 worker x 8 threads, LiteRT 1 thread": {"WORKERS": "1", "THREADS": "8", "CLASSIFIER_LITERT_THREADS": "1"},
    "2 workers x 4 threads, LiteRT 1 thread each": {"WORKERS": "2", "THREADS": "4", "CLASSIFIER_LITERT_THREADS": "1"},
}
SETTINGS_ROUNDS = 3


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no settings levers (< 2 min)")
    parser.add_argument("--no-latency", action="store_true",
                        help="serve images without added latency or bandwidth caps")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results",
                        help="results directory; the fixtures are cached under it (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    profile = network.NO_LATENCY if args.no_latency else network.INTERNET
    started = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / f"run-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    fixtures = corpus.load(args.out / "cache", log)
    # As an installed package would be: the function's modules byte-compiled, so that cold
    # processes time what they run, not the compiler (PYTHONDONTWRITEBYTECODE stops the
    # interpreter from caching them itself).
    compileall.compile_dir(ROOT / "function", quiet=1)
    results = {"meta": _meta(plan, profile, fixtures)}
    shipped = dockerfile_env(Server.SERVER_ENV)
    with network.serve(fixtures, profile) as site:
        bench = Bench(site, args.out / "cache", work, log)
        results["first_conversion"] = bench.first_conversion()
        results["cold_cli"] = bench.cold_cli(plan.cli_rounds, RUNTIMES if plan.full else RUNTIMES[:1])
        log("floor: the slowest image fetched alone ...")
        results["fetch_floor_s"] = bench.fetch_floor(plan.warm_repeats)
        results["runtimes"] = {}
        for runtime in RUNTIMES:
            log(f"{runtime}: batched inference alone ...")
            threads = (0, 1) if runtime == "litert" else (0,)
            results["runtimes"][runtime] = {"inference": bench.inference(
                runtime, plan.batches, plan.inference_repeats, threads)}
        results["cold_start"] = bench.cold_starts(RUNTIMES, plan.cold_start_rounds)
        log("warm requests and throughput (the Dockerfile's server settings) ...")
        with bench.instances({r: {"CLASSIFIER_RUNTIME": r} for r in RUNTIMES}) as servers:
            results["warm"] = bench.warm(servers, plan.warm_repeats)
            for runtime in RUNTIMES if plan.full else RUNTIMES[:1]:
                log(f"{runtime}: throughput at {', '.join(map(str, plan.concurrencies))} clients ...")
                results["runtimes"][runtime]["throughput"] = bench.throughput(servers[runtime], plan.concurrencies)
        for runtime, server in servers.items():
            results["runtimes"][runtime]["memory"] = server.final_memory
        log("decode levers ...")
        results["decode"] = bench.probe("decode", "litert", "--repeat", str(plan.warm_repeats))
        if plan.full:
            best = report.best_throughput(results, "litert")["concurrency"]
            variants = {"shipped": shipped, **{name: env for name, env in SETTINGS.items()
                                               if env != {k: shipped.get(k) for k in env}}}
            results["settings"] = bench.settings(variants, best, SETTINGS_ROUNDS)
    results["agreement"] = score_agreement(
        {runtime: results["runtimes"][runtime]["inference"].pop("scores_path") for runtime in RUNTIMES})
    results["meta"]["load_after"] = os.getloadavg()
    results["meta"]["bench_seconds"] = time.perf_counter() - started
    results["goals"] = report.goals(results)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(report.render(results))
    print(f"\nJSON: {work / 'results.json'}")
    return 0


def _meta(plan: Plan, profile: network.Profile, fixtures: corpus.Corpus) -> dict:
    return {
        "plan": dataclasses.asdict(plan),
        "profile": dataclasses.asdict(profile),
        "cpus": os.cpu_count(),
        "server": dockerfile_env(Server.SERVER_ENV),
        "load_before": os.getloadavg(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "images": [{"name": i.name, "width": i.width, "height": i.height, "bytes": len(i.data)}
                   for i in fixtures.images],
    }
