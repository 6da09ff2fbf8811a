"""`scripts/loadtest --faults|--hostile|--sweep [--quick]`: set up the instance and its
loopback internet, run the mode, print the table, write the JSON; exit 1 when an invariant
fails."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from benchlib import procs
from fixtures.hub_module import write_labels
from fixtures.models import COLOUR_LABELS, LABEL_ROW_ORDER, build_hub_archive, colour_model
from fixtures.server import LoopbackServer
from function import runtime
from function.config import ModelSpec, Settings

from . import faults, hostile, sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/loadtest", description=__doc__)
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--faults", action="store_true",
                       help="fault-injection run: good images mixed with slow, hanging, resetting, endless, "
                            "huge and wrong-type hosts; checks the invariants of docs/reliability.md")
    modes.add_argument("--hostile", action="store_true",
                       help="hostile run: 16-URL requests of gzip bombs, 20 MB images, a pixel-bomb GIF and "
                            "endless bodies from many clients, plus 2 x THREADS slow-drip clients; checks that "
                            "nothing is lost, /healthz stays up and memory stays under the pod's limit")
    modes.add_argument("--sweep", action="store_true",
                       help="concurrency sweep: requests for --images photo-sized JPEGs on the MobileNetV2-sized "
                            "stand-in at each --concurrency; throughput, latency, RSS (docs/scaling.md)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI size: --faults {faults.QUICK.seconds:g} s, fetch deadline {faults.QUICK.deadline:g} s "
                             f"(default {faults.FULL.seconds:g} s, {faults.FULL.deadline:g} s); --hostile "
                             f"{hostile.QUICK.seconds:g} s, bombs of {hostile.QUICK.bomb_inflated_mb} MB "
                             f"(default {hostile.FULL.seconds:g} s, {hostile.FULL.bomb_inflated_mb} MB)")
    parser.add_argument("--seconds", type=float, help="how long clients keep sending (--sweep: per level)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default: THREADS of the Dockerfile)")
    parser.add_argument("--max-rss-mb", type=float, help="--faults: the peak RSS the instance may reach")
    parser.add_argument("--json-out", type=Path, help="write the full figures here as JSON")
    parser.add_argument("--model-url", help="a TF Hub model to serve (default: the colour stand-in, built here)")
    parser.add_argument("--labels-url", help="its labels CSV (required with --model-url)")
    parser.add_argument("--cache-dir", type=Path, help="TFHUB_CACHE_DIR (default: a fresh temporary one)")
    sweep.add_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.model_url) != bool(args.labels_url):
        parser.error("--model-url and --labels-url go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sweep:
        return sweep.run_cli(args, prepare_litert)
    mode = hostile if args.hostile else faults
    plan = mode.QUICK if args.quick else mode.FULL
    overrides = {"seconds": args.seconds, "clients": args.clients,
                 **({} if args.hostile else {"max_rss_mb": args.max_rss_mb})}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    server_env = procs.dockerfile_env(procs.Server.SERVER_ENV)
    pod_memory = hostile.pod_memory_limit()
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp, LoopbackServer() as internet:
        work = Path(tmp)
        cache_dir = args.cache_dir or work / "tfhub"
        model_url, labels_url = args.model_url, args.labels_url
        if not model_url:
            model_url, labels_url = serve_stand_in(internet, work)
        prepare_litert(model_url, labels_url, cache_dir)
        env = {**(plan.server_env(pod_memory, server_env) if args.hostile else plan.server_env()),
               "CLASSIFIER_MODEL_URL": model_url, "CLASSIFIER_LABELS_URL": labels_url,
               "TFHUB_CACHE_DIR": str(cache_dir)}
        with procs.Server(env, work / "server.log") as server:
            if args.hostile:
                run = hostile.run(server, internet, plan, int(server_env["THREADS"]), pod_memory,
                                  Settings().max_image_bytes)
            else:
                run = faults.run(server.base, server.pid, internet, plan)
        result = mode.figures(run, plan)
    result["server_env"] = server_env
    print(mode.table(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


def serve_stand_in(internet: LoopbackServer, work: Path) -> tuple[str, str]:
    """The colour stand-in model, exported here (TensorFlow, once) and served by the internet."""
    archive = build_hub_archive(colour_model, work, "colour")
    labels = write_labels(work / "labels.csv", COLOUR_LABELS, LABEL_ROW_ORDER)
    return (internet.add("/models/colour.tar.gz", archive.read_bytes(), content_type="application/x-gzip"),
            internet.add("/labels.csv", labels.read_bytes(), content_type="text/csv"))


def prepare_litert(model_url: str, labels_url: str, cache_dir: Path) -> None:
    """Convert the model to .tflite here, as the image's preload step does, so the instance
    under test starts without TensorFlow (nothing happens when the cache has it)."""
    os.environ["TFHUB_CACHE_DIR"] = str(cache_dir)  # tensorflow_hub reads it
    runtime.tflite_path(ModelSpec("birds", model_url, labels_url), str(cache_dir))


if __name__ == "__main__":
    sys.exit(main())
