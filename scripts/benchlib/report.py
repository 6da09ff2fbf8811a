"""The goals as ratios, the runtime decision and the table printed by `scripts/bench`."""

from __future__ import annotations

AGREEMENT_TOLERANCE = 1e-3
REQUEST_BATCH = "5"  # the warm request's batch: the floor's and the bound's model call


def _median(sample: dict) -> float:
    return sample["median"]


def inference_s(results: dict, runtime: str) -> float:
    return _median(results["runtimes"][runtime]["inference"]["inference_s"][REQUEST_BATCH])


def floor_s(results: dict, runtime: str) -> float:
    """Slowest single fetch alone + one batched inference of 5 alone (medians)."""
    return _median(results["fetch_floor_s"]) + inference_s(results, runtime)


def bound_images_per_s(results: dict, runtime: str) -> float:
    """The inference-only bound: the fastest batched model call of 5 alone in this run, in
    images per second (the least time, so other processes cannot lower the bar)."""
    return int(REQUEST_BATCH) / results["runtimes"][runtime]["inference"]["inference_s"][REQUEST_BATCH]["min"]


def best_throughput(results: dict, runtime: str) -> dict | None:
    return max(results["runtimes"][runtime]["throughput"], key=lambda row: row["images_per_s"], default=None)


def model_cpu_share(results: dict, runtime: str) -> float:
    """The model call's CPU per image (alone) over the instance's CPU per image at the best
    concurrency: with every CPU busy, throughput / bound cannot exceed it."""
    alone = results["runtimes"][runtime]["inference"]["cpu_ms_per_image"][REQUEST_BATCH]
    return alone / best_throughput(results, runtime)["cpu_ms_per_image"]["server"]


def ideal_cold_start_s(results: dict, runtime: str) -> float:
    """Process start to /healthz, then the model load (runtime import included) overlapped
    with the slowest fetch alone, then one inference: the first answer's own parts."""
    cold = results["runtimes"][runtime]["cold_start"]
    load = cold["first_timings_ms"]["model_load"] / 1000
    return cold["healthz_s"] + max(load, _median(results["fetch_floor_s"])) + inference_s(results, runtime)


def ratios(results: dict, runtime: str) -> dict:
    """Each goal's ratio; None where this run did not measure it (quick, tensorflow)."""
    entry = results["runtimes"][runtime]
    cli = results["cold_cli"]
    best = best_throughput(results, runtime)
    return {
        "cold_cli_speedup": (_median(cli["baseline"]["seconds"]) / _median(cli[runtime]["seconds"])
                             if runtime in cli else None),
        "warm_over_floor": _median(entry["warm_s"]) / floor_s(results, runtime),
        "throughput_fraction": best and best["images_per_s"] / bound_images_per_s(results, runtime),
        "best_concurrency": best and best["concurrency"],
        "model_cpu_share": best and model_cpu_share(results, runtime),
        "cold_start_over_ideal": entry["cold_start"]["first_answer_s"] / ideal_cold_start_s(results, runtime),
    }


GOALS = {  # ratio -> (met?, target as printed)
    "cold_cli_speedup": (lambda v: v >= 4.0, ">= 4x"),
    "warm_over_floor": (lambda v: v <= 1.2, "<= 1.2x"),
    "throughput_fraction": (lambda v: v >= 0.8, ">= 80%"),
}


def goals(results: dict) -> dict:
    """Each goal judged on the default runtime (litert); the ratios of both runtimes; and
    whether litert earns its place as the default."""
    by_runtime = {runtime: ratios(results, runtime) for runtime in results["runtimes"]}
    return {
        "ratios": by_runtime,
        "met": {name: check(by_runtime["litert"][name]) for name, (check, _) in GOALS.items()},
        "default_runtime": runtime_decision(results),
    }


def runtime_decision(results: dict) -> dict:
    """litert stays the default only if it agrees with tensorflow and wins on cold start
    and warm latency, all measured in this run."""
    agreement = results["agreement"]
    lite, tf = results["runtimes"]["litert"], results["runtimes"]["tensorflow"]
    reasons = {
        "top3_identical": agreement["top3_identical"] == agreement["images"],
        "scores_within_1e-3": agreement["max_score_diff"] < AGREEMENT_TOLERANCE,
        "faster_cold_start": lite["cold_start"]["first_answer_s"] < tf["cold_start"]["first_answer_s"],
        "faster_warm": _median(lite["warm_s"]) < _median(tf["warm_s"]),
    }
    return {"keep_litert": all(reasons.values()), **reasons}


# --- the table -------------------------------------------------------------------------


def render(results: dict) -> str:
    meta = results["meta"]
    profile = meta["profile"]
    network = ("no added latency or bandwidth cap" if profile["rate"] is None else
               f"TTFB {profile['min_latency'] * 1000:.0f}-{profile['max_latency'] * 1000:.0f} ms, "
               f"{profile['rate'] / 1e6:.1f} MB/s per request")
    lines = [
        f"bird-classifier benchmark: {meta['plan']['name']} run, {meta['cpus']} CPUs, "
        f"load average {meta['load_before'][0]:.1f} -> {meta['load_after'][0]:.1f}, {meta['bench_seconds']:.0f} s",
        f"network: {network}; 5 JPEGs "
        + ", ".join(f"{i['width']}x{i['height']}/{i['bytes'] // 1000} KB" for i in meta["images"]),
        "instance (the Dockerfile's): " + " ".join(f"{k}={v}" for k, v in meta["server"].items()),
        "",
        *_ratio_lines(results),
        "",
        _decision_line(results),
        "",
        "SCENARIOS (seconds: min / median of n runs)",
        *_scenario_lines(results),
        "",
        "LEVERS",
        *_lever_lines(results),
    ]
    return "\n".join(lines)


def _ratio_lines(results: dict) -> list[str]:
    goal = results["goals"]
    lines = ["RATIOS                                     litert   tensorflow   goal"]
    rows = (
        ("cold 5-URL CLI: baseline / ours", "cold_cli_speedup", "{:.2f}x"),
        ("warm 5-URL request / its floor", "warm_over_floor", "{:.2f}x"),
        ("best throughput / inference-only bound", "throughput_fraction", "{:.0%}"),
        ("  ceiling: model's share of instance CPU", "model_cpu_share", "{:.0%}"),
        ("cold start to first answer / ideal", "cold_start_over_ideal", "{:.2f}x"),
    )
    for label, key, fmt in rows:
        values = [("-" if goal["ratios"][r][key] is None else fmt.format(goal["ratios"][r][key]))
                  for r in ("litert", "tensorflow")]
        target = GOALS[key][1] if key in GOALS else ("close to 1" if key == "cold_start_over_ideal" else "")
        verdict = "" if key not in GOALS else ("met" if goal["met"][key] else "MISSED")
        lines.append(f"  {label:<40} {values[0]:>7}   {values[1]:>10}   {target:<10} {verdict}")
    return lines


def _decision_line(results: dict) -> str:
    decision, agreement = results["goals"]["default_runtime"], results["agreement"]
    verdict = "keep litert as the default" if decision["keep_litert"] else "litert does NOT earn the default"
    return (f"DEFAULT RUNTIME: litert vs tensorflow on the same pixels: top-3 identical on "
            f"{agreement['top3_identical']}/{agreement['images']} fixtures, max |score diff| "
            f"{agreement['max_score_diff']:.1e}; litert faster cold start: {decision['faster_cold_start']}, "
            f"faster warm: {decision['faster_warm']} -> {verdict}")


def _mm(sample: dict) -> str:
    return f"{sample['min']:6.3f} / {sample['median']:6.3f} (n={len(sample['runs'])})"


def _ms(timings: dict) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in timings.items())


def _scenario_lines(results: dict) -> list[str]:
    cli = results["cold_cli"]
    lines = []
    for name, entry in cli.items():
        lines.append(f"  (1) cold CLI, 5 URLs, {name:<10}   {_mm(entry['seconds'])}   peak RSS {entry['peak_rss_mb']:.0f} MB")
        if "phases_s" in entry:
            lines.append("        phases, s: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["phases_s"].items()))
        else:
            lines.append("        pipeline, ms: " + _ms(entry["timings_ms"]))
    first = results["first_conversion"]
    lines.append(f"      first-ever litert run (download, import TF, convert, classify): {first['seconds']:.2f} s, "
                 f"peak RSS {first['peak_rss_mb']:.0f} MB")
    baseline_top3 = cli["baseline"]["top3"]
    same = sum(baseline_top3[name] == labels for name, labels in cli["litert"]["top3"].items())
    lines.append(f"      top-3 labels, baseline vs ours (litert): same on {same}/{len(baseline_top3)} images")
    lines.append(f"  (3) floor: slowest image fetched alone      {_mm(results['fetch_floor_s'])}")
    for runtime, entry in results["runtimes"].items():
        inference, cold = entry["inference"], entry["cold_start"]
        lines += [
            f"  [{runtime}]",
            f"  (3) floor: one inference of 5 alone       {_mm(inference['inference_s'][REQUEST_BATCH])}"
            f"; floor {floor_s(results, runtime):.3f} (other processes took {inference['others_cpu_share']:.0%}"
            " of the CPUs meanwhile)",
            f"  (2) warm 5-URL request                    {_mm(entry['warm_s'])}",
            "        server, ms: " + _ms(entry["warm_timings_ms"]),
        ]
        if entry["throughput"]:
            lines += _throughput_lines(results, runtime)
        lines += [
            f"  (5) cold start: process -> /healthz {cold['healthz_s']:.3f} s -> first answer "
            f"{cold['first_answer_s']:.3f} s (ideal {ideal_cold_start_s(results, runtime):.3f})",
            "        first answer, ms: " + _ms(cold["first_timings_ms"]),
            f"        in a fresh process: runtime import {inference['import_s']:.3f} s, model load "
            f"{inference['load_s']:.3f} s, first inference {inference['first_inference_s']:.3f} s",
            f"  (6) peak RSS of the instance: {entry['peak_rss_mb']:.0f} MB",
        ]
    return lines


def _throughput_lines(results: dict, runtime: str) -> list[str]:
    entry = results["runtimes"][runtime]
    best = best_throughput(results, runtime)
    cpu = best["cpu_ms_per_image"]
    alone = entry["inference"]["cpu_ms_per_image"][REQUEST_BATCH]
    return [
        f"  (4) throughput, images/s: inference-only bound {bound_images_per_s(results, runtime):.1f}; "
        + ", ".join(f"c={row['concurrency']} {row['images_per_s']:.1f}" for row in entry["throughput"]),
        f"        CPU ms per image at c={best['concurrency']}: instance {cpu['server']:.1f} (the model call alone: "
        f"{alone:.1f}), bench clients + image server {cpu['bench']:.1f}, other processes {cpu['others']:.1f}",
    ]


def _lever_lines(results: dict) -> list[str]:
    levers = results["levers"]
    lines = []
    for runtime, entry in results["runtimes"].items():
        first = entry["cold_start"]["first_timings_ms"]
        lines.append(f"  overlap load/fetch, first request ({runtime}): model load {first['model_load']:.0f} ms, "
                     f"waited {first['model_wait']:.0f} ms after the fetches -> "
                     f"{first['model_load'] - first['model_wait']:.0f} ms hidden")
    lines.append("  decode, least ms per fixture (smallest to largest), top-3 vs shipped, max score change:")
    for name, variant in levers["decode"]["variants"].items():
        times = " ".join(f"{ms:5.1f}" for ms in variant["decode_ms"].values())
        lines.append(f"    {name:<30} {times}  sum {sum(variant['decode_ms'].values()):5.1f}  "
                     f"top-3 {'same' if variant['top3_same'] else 'CHANGED'}, {variant['max_score_change']:.1e}")
    for runtime, entry in results["runtimes"].items():
        per_image = {size: 1000 * s["min"] / int(size) for size, s in entry["inference"]["inference_s"].items()}
        lines.append(f"  micro-batching potential ({runtime}), least ms per image at batch size "
                     + ", ".join(f"{size}: {ms:.1f}" for size, ms in per_image.items()))
    if "litert_threads_1" in levers:
        lines += _thread_lines(results)
    return lines


def _thread_lines(results: dict) -> list[str]:
    levers = results["levers"]
    batch = lambda entry: entry["inference_s"][REQUEST_BATCH]["min"] * 1000  # noqa: E731
    lines = [
        f"  LiteRT num_threads, least ms per batch of 5: {batch(results['runtimes']['litert']['inference']):.1f} "
        f"(os.cpu_count() = {results['meta']['cpus']}) vs {batch(levers['litert_threads_1']):.1f} (1)",
        f"  TensorFlow intra/inter-op threads, least ms per batch of 5: "
        f"{batch(results['runtimes']['tensorflow']['inference']):.1f} (default) vs {batch(levers['tf_threads_1_1']):.1f} (1/1)",
    ]
    for threads in ("4", "16"):
        row = levers[f"server_threads_{threads}"]
        lines.append(f"  gunicorn THREADS={threads + ',':<3} 16 clients, images behind the profile: "
                     f"{row['images_per_s']:.1f} images/s, request latency median {row['latency_s']['median']:.2f} s")
    return lines
