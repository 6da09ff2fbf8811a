"""`scripts/bench [--quick] [--no-latency]`: every scenario in one run, a table of ratios
on stdout and the full results as JSON (see docs/performance.md)."""

from __future__ import annotations

import argparse
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
    warm_repeats: int
    concurrencies: tuple[int, ...]
    inference_repeats: int
    batches: tuple[int, ...]
    # full: the tensorflow reference gets every scenario and the thread levers run;
    # quick: tensorflow gets what the default-runtime decision needs (agreement, cold
    # start, warm latency), not the cold CLI runs or throughput.
    full: bool


QUICK = Plan("quick", cli_rounds=2, warm_repeats=3, concurrencies=(1, 4), inference_repeats=5,
             batches=(1, 5), full=False)
FULL = Plan("full", cli_rounds=5, warm_repeats=10, concurrencies=(1, 2, 4, 8, 32), inference_repeats=20,
            batches=(1, 5, 10, 20), full=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no thread levers (< 2 min)")
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
    results = {"meta": _meta(plan, profile, fixtures)}
    with network.serve(fixtures, profile) as site:
        bench = Bench(site, args.out / "cache", work, log)
        results["first_conversion"] = bench.first_conversion()
        results["cold_cli"] = bench.cold_cli(plan.cli_rounds, RUNTIMES if plan.full else RUNTIMES[:1])
        log("floor: the slowest image fetched alone ...")
        results["fetch_floor_s"] = bench.fetch_floor(plan.warm_repeats)
        results["runtimes"] = {}
        for runtime in RUNTIMES:
            log(f"{runtime}: batched inference alone ...")
            inference = bench.inference(runtime, plan.batches, plan.inference_repeats)
            log(f"{runtime}: functions-framework instance: cold start, warm requests, throughput ...")
            concurrencies = plan.concurrencies if plan.full or runtime == RUNTIMES[0] else ()
            results["runtimes"][runtime] = {"inference": inference, **bench.instance(
                runtime, plan.warm_repeats, concurrencies)}
        log("decode levers ...")
        results["levers"] = {"decode": bench.probe("decode", "litert", "--repeat", str(plan.warm_repeats))}
        if plan.full:
            results["levers"].update(_thread_levers(bench, plan, log))
    results["agreement"] = score_agreement(
        {runtime: results["runtimes"][runtime]["inference"].pop("scores_path") for runtime in RUNTIMES})
    results["meta"]["load_after"] = os.getloadavg()
    results["meta"]["bench_seconds"] = time.perf_counter() - started
    results["goals"] = report.goals(results)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(report.render(results))
    print(f"\nJSON: {work / 'results.json'}")
    return 0


def _thread_levers(bench: Bench, plan: Plan, log) -> dict:
    """LiteRT num_threads, TensorFlow's intra/inter-op pools, and gunicorn THREADS under
    internet latency: each against the default, in this run."""
    levers = {}
    log("lever: LiteRT num_threads=1 ...")
    levers["litert_threads_1"] = bench.inference("litert", (5,), plan.inference_repeats, litert_threads=1)
    log("lever: TensorFlow intra/inter-op threads = 1/1 ...")
    levers["tf_threads_1_1"] = bench.inference(
        "tensorflow", (5,), plan.inference_repeats, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    for threads in ("4", "16"):
        log(f"lever: gunicorn THREADS={threads}, 16 clients, images behind the profile ...")
        levers[f"server_threads_{threads}"] = bench.instance(
            "litert", 1, (16,), lan=False, THREADS=threads)["throughput"][0]
    for name in ("litert_threads_1", "tf_threads_1_1"):
        levers[name].pop("scores_path")
    return levers


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
