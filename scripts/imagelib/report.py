"""`scripts/image-report IMAGE`: what a built image weighs, how fast it starts and how much
memory it holds under load, measured from the image itself (docs/deploy.md, docs/scaling.md).

Sizes come from buildah's store: unpacked (the layers as uncompressed tars) and compressed
(gzip, as pushed: what a node pulls), and the largest packages in the image (Python
distributions of its venvs, Debian packages of its base). Then the image's own CMD starts
from its root filesystem as its user (`container`), several times: start to `/healthz`,
start to the first answer (one small JPEG, served from loopback). The last start also runs
the concurrency sweep of `scripts/loadtest --sweep` (the same levels, bounds and bench
JPEGs) against it; the peak memory is the sum of the peak resident sets (VmHWM) of the
image's processes, an upper bound of what the pod's cgroup sees.

The model is the one baked in the image; its labels are read from the image's
CLASSIFIER_LABELS_URL at start, so that URL must answer here (`--env` overrides it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchlib import corpus, network, procs
from loadlib import sweep

from . import container, store

SITE_PACKAGES = ("opt/*/lib/python3*/site-packages", "usr/local/lib/python3*/site-packages")
TENSORFLOW_MODULES = ("tensorflow", "tensorflow_hub", "tf_keras")
MB = 1e6


def packages(rootfs: Path) -> list[dict]:
    """Every Python distribution in the image's venvs and every Debian package, by size."""
    found = []
    for pattern in SITE_PACKAGES:
        for site in rootfs.glob(pattern):
            for dist in importlib.metadata.distributions(path=[str(site)]):
                files = (Path(dist.locate_file(f)) for f in dist.files or [])
                size = sum(f.stat().st_size for f in files if f.is_file())
                found.append({"kind": "pip", "name": dist.metadata["Name"], "version": dist.version, "bytes": size})
    status = rootfs / "var" / "lib" / "dpkg" / "status"
    if status.exists():
        for stanza in status.read_text().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
            if fields.get("Status", "").endswith(" installed"):
                found.append({"kind": "deb", "name": fields["Package"], "version": fields.get("Version", ""),
                              "bytes": int(fields.get("Installed-Size", "0")) * 1024})
    return sorted(found, key=lambda p: -p["bytes"])


def tensorflow_importable(image: container.Container) -> dict[str, bool]:
    """Which TensorFlow modules the image's Python can import, run as its user."""
    code = ("import importlib.util, json; "
            f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {TENSORFLOW_MODULES!r}}}))")
    ran = image.run(["python", "-c", code])
    if ran.returncode != 0:
        raise container.ContainerError(f"python in the image failed: {ran.stderr[-2000:]}")
    return json.loads(ran.stdout)


def first_answer(server: container.Server, url: str) -> float:
    """Seconds from the server's start to a 200 with predictions for `url`."""
    response = requests.post(server.base + "/", json={"urls": [url]}, timeout=sweep.REQUEST_TIMEOUT)
    result = response.json()["results"][0] if response.status_code == 200 else response.text[:300]
    if "predictions" not in result:
        raise container.ContainerError(f"the first request did not classify {url}: {result} (the labels are read "
                                       "from the image's CLASSIFIER_LABELS_URL: does it answer here? --env changes it)")
    return time.perf_counter() - server.started


def measure(image: str, env: dict[str, str], plan: sweep.Plan, starts: int, latency: bool,
            corpus_cache: Path, log=print) -> dict:
    config = store.inspect(image)
    log(f"{image}: compressing its layers as a push would ...")
    compressed = store.compressed_layer_bytes(image)
    fixtures = corpus.load(corpus_cache, log=log)
    profile = network.INTERNET if latency else network.NO_LATENCY
    load_before = os.getloadavg()[0]
    with store.mounted(image) as rootfs, tempfile.TemporaryDirectory(prefix="image-report-") as tmp, \
            network.serve(fixtures, profile) as site:
        image_run = container.Container(rootfs, config, {"CLASSIFIER_ALLOW_PRIVATE_URLS": "1", **env})
        found = packages(rootfs)
        tensorflow = tensorflow_importable(image_run)
        urls = [site.images[i % len(site.images)] for i in range(plan.images_per_request)]
        runs = []
        for index in range(starts):
            log(f"start {index + 1} of {starts} ...")
            with image_run.serve(Path(tmp, f"server-{index}.log")) as server:
                runs.append({"healthz_s": round(server.healthz_seconds, 3),
                             "first_answer_s": round(first_answer(server, site.lan_images[0]), 3)})
                if index < starts - 1:
                    continue
                warm_rss = server.memory_mb("VmRSS")
                expected = sweep.reference(server.base, urls)
                levels = []
                for concurrency in plan.concurrencies:
                    log(f"{concurrency} concurrent clients ...")
                    levels.append(sweep.level(server, sweep.request(expected), concurrency, plan))
                uids = sorted(server.uids())
    threads, workers = (int(image_run.env.get(name) or config.env.get(name, "0")) for name in ("THREADS", "WORKERS"))
    return {
        "image": image, "user": config.user, "uids": uids, "cmd": list(config.entrypoint + config.cmd),
        "unpacked_bytes": sum(config.layer_bytes), "compressed_bytes": sum(compressed),
        "layers": [{"unpacked": u, "compressed": c} for u, c in zip(config.layer_bytes, compressed)],
        "tensorflow": tensorflow, "packages": found, "starts": runs,
        "sweep": {"plan": dataclasses.asdict(plan), "latency": profile.name, "cpus": os.cpu_count(),
                  "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                  "images_per_request": plan.images_per_request,
                  "images": ", ".join(f"{u.rsplit('/', 1)[-1]}" for u in urls),
                  "instances": [{"threads": threads, "workers": workers, "images_per_request": plan.images_per_request,
                                 "first_request_s": runs[-1]["first_answer_s"], "rss_after_warmup_mb": round(warm_rss, 1),
                                 "peak_rss_mb": max(lvl["rss_mb"]["VmHWM"] for lvl in levels),
                                 "pod_peak_rss_mb": max(lvl["rss_mb"]["pod_VmHWM"] for lvl in levels),
                                 "levels": levels}],
                  "passed": sweep.passed([{"levels": levels}])},
        "image_peak_mb": max(lvl["rss_mb"]["pod_VmHWM"] for lvl in levels),  # the sweep's sum over the tree
    }


def table(result: dict, top: int = 10) -> str:
    starts = result["starts"]

    def spread(key: str) -> str:
        values = [run[key] for run in starts]
        return f"{statistics.median(values):.2f} s (median of {len(values)}: {', '.join(f'{v:.2f}' for v in values)})"

    lines = [
        f"image {result['image']}: USER {result['user']} (processes ran as uid {', '.join(map(str, result['uids']))}), "
        f"CMD {' '.join(result['cmd'])}",
        f"size: {result['unpacked_bytes'] / MB:.0f} MB unpacked, {result['compressed_bytes'] / MB:.0f} MB compressed "
        f"(gzip, what a node pulls), {len(result['layers'])} layers",
        "tensorflow importable: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in result["tensorflow"].items()),
        f"start to /healthz: {spread('healthz_s')}",
        f"start to first answer (one 0.15 MB JPEG, model baked): {spread('first_answer_s')}",
        f"peak RSS under the sweep: {result['image_peak_mb']:.0f} MB (the image's processes' VmHWM, summed)",
        "",
        f"largest packages (of {len(result['packages'])}):",
    ]
    lines += [f"  {p['kind']:<4} {p['name'] + ' ' + p['version']:<44} {p['bytes'] / MB:8.1f} MB"
              for p in result["packages"][:top]]
    lines += ["", sweep.table(result["sweep"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/image-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="an image in buildah's store (docker's: `buildah pull docker-daemon:IMAGE`)")
    parser.add_argument("--quick", action="store_true",
                        help=f"one start and the sweep's quick levels ({','.join(map(str, sweep.QUICK.concurrencies))} "
                             f"clients, <= {sweep.QUICK.seconds:g} s each)")
    parser.add_argument("--starts", type=int, help="how many times to start the image (default 3, quick 1)")
    parser.add_argument("--concurrency", type=lambda text: tuple(map(int, text.split(","))),
                        help="the sweep's client levels, comma-separated")
    parser.add_argument("--latency", action="store_true", help="images behind internet-like latency (default: none)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="run the image with this ENV entry changed (repeatable)")
    parser.add_argument("--corpus-cache", type=Path, default=procs.ROOT / "bench-results" / "cache",
                        help="where scripts/bench caches its JPEGs (default: %(default)s)")
    parser.add_argument("--json-out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: it mounts the image and runs it in namespaces of its own")
    if any("=" not in item for item in args.env):
        parser.error("--env takes KEY=VALUE")
    plan = sweep.QUICK if args.quick else sweep.FULL
    if args.concurrency:
        plan = dataclasses.replace(plan, concurrencies=args.concurrency)
    starts = args.starts or (1 if args.quick else 3)
    env = dict(item.split("=", 1) for item in args.env)
    try:
        result = measure(args.image, env, plan, starts, args.latency, args.corpus_cache,
                         log=lambda message: print(message, file=sys.stderr, flush=True))
    except RuntimeError as exc:  # buildah failed, or the image did not start or answer
        print(f"image-report: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["sweep"]["passed"] else 1
