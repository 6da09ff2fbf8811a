"""The goals as ratios, the verdicts and the table printed by `scripts/bench`."""

from __future__ import annotations

import statistics

AGREEMENT_TOLERANCE = 1e-3
REQUEST_BATCH = "5"  # the warm request's batch: the floors' model call
# Above this share of the CPUs taken by other processes, a comparison decides nothing:
# their load lands on one side more than the other however the runs take turns.
BUSY_SHARE = 0.2


def _median(sample: dict) -> float:
    return sample["median"]


# --- floors and bounds ------------------------------------------------------------------


def inference_s(results: dict, runtime: str) -> float:
    """One batched model call of 5 alone (median), on its fastest thread setting."""
    settings = results["runtimes"][runtime]["inference"]["settings"].values()
    return min(statistics.median(s["wall_s"][REQUEST_BATCH]) for s in settings)


def floor_s(results: dict, runtime: str) -> float:
    """A warm request's floor: slowest single fetch alone + one batched inference of 5 alone."""
    return _median(results["fetch_floor_s"]) + inference_s(results, runtime)


def cli_floor_s(results: dict, runtime: str) -> float:
    """A cold CLI run's floor: a bare interpreter's start and exit, then a warm request's floor."""
    return _median(results["cold_cli"]["bare_python"]["seconds"]) + floor_s(results, runtime)


def decode_cpu_ms(results: dict) -> float:
    """CPU per image of the fastest decode that keeps every top-3 (the least of n per
    fixture, averaged over the fixtures)."""
    variants = results["decode"]["variants"].values()
    return min(statistics.fmean(v["cpu_ms"].values()) for v in variants if v["top3_same"])


def inference_cpu_ms(results: dict, runtime: str) -> float:
    """CPU per image of the cheapest batched model call: any batch size, any thread setting."""
    settings = results["runtimes"][runtime]["inference"]["settings"].values()
    return min(1000 * min(calls) / int(size) for s in settings for size, calls in s["cpu_s"].items())


def cpu_bound_images_per_s(results: dict, runtime: str) -> float:
    """What the CPUs allow: every core decoding and inferring, at their cheapest, nothing else."""
    return 1000 * results["meta"]["cpus"] / (decode_cpu_ms(results) + inference_cpu_ms(results, runtime))


def best_throughput(results: dict, runtime: str) -> dict | None:
    """The best level of the instance with the Dockerfile's settings: the concurrency scan's,
    and for litert in a full run also the shipped instance's rounds of the settings levers."""
    rows = list(results["runtimes"][runtime].get("throughput", []))
    if runtime == "litert" and "settings" in results:
        rows += results["settings"]["variants"]["shipped"]["runs"]
    return max(rows, key=lambda row: row["images_per_s"], default=None)


def ideal_cold_start_s(results: dict, runtime: str) -> float:
    """Process start to /healthz, then the model load (runtime import included) overlapped
    with the slowest fetch alone, then one inference: the first answer's own parts."""
    cold = results["cold_start"][runtime]
    load = cold["first_timings_ms"]["model_load"] / 1000
    return (_median(cold["healthz_s"]) + max(load, _median(results["fetch_floor_s"]))
            + inference_s(results, runtime))


def ratios(results: dict, runtime: str) -> dict:
    """Each goal's ratio; None where this run did not measure it (quick, tensorflow)."""
    cli = results["cold_cli"]
    best = best_throughput(results, runtime)
    ours = _median(cli[runtime]["seconds"]) if runtime in cli else None
    return {
        "cold_cli_over_floor": ours and ours / cli_floor_s(results, runtime),
        "warm_over_floor": _median(results["warm"][runtime]["warm_s"]) / floor_s(results, runtime),
        "throughput_fraction": best and best["images_per_s"] / cpu_bound_images_per_s(results, runtime),
        "cold_cli_speedup": ours and _median(cli["baseline"]["seconds"]) / ours,
        "cold_start_over_ideal": _median(results["cold_start"][runtime]["first_answer_s"])
        / ideal_cold_start_s(results, runtime),
    }


GOALS = {  # ratio -> (met?, target as printed)
    "cold_cli_over_floor": (lambda v: v <= 1.15, "<= 1.15x"),
    "warm_over_floor": (lambda v: v <= 1.05, "<= 1.05x"),
    "throughput_fraction": (lambda v: v >= 0.8, ">= 80%"),
    "cold_cli_speedup": (lambda v: v >= 4.0, ">= 4x"),
}


def goals(results: dict) -> dict:
    """Each goal judged on the default runtime (litert); the ratios of both runtimes; the
    verdicts on the default runtime and on the server settings."""
    by_runtime = {runtime: ratios(results, runtime) for runtime in results["runtimes"]}
    return {
        "ratios": by_runtime,
        "met": {name: by_runtime["litert"][name] is not None and check(by_runtime["litert"][name])
                for name, (check, _) in GOALS.items()},
        "default_runtime": runtime_decision(results),
        "settings": settings_verdict(results) if "settings" in results else None,
    }


# --- verdicts --------------------------------------------------------------------------


def runtime_decision(results: dict) -> dict:
    """litert stays the default only if it agrees with tensorflow and wins on cold start
    and warm latency, the least of interleaved runs against the least; on a machine too
    busy to compare, it stays the default undecided."""
    agreement = results["agreement"]
    cold, warm = results["cold_start"], results["warm"]
    busy = max(cold["others_cpu_share"], warm["others_cpu_share"])
    reasons = {
        "top3_identical": agreement["top3_identical"] == agreement["images"],
        "scores_within_1e-3": agreement["max_score_diff"] < AGREEMENT_TOLERANCE,
        "faster_cold_start": cold["litert"]["first_answer_s"]["min"] < cold["tensorflow"]["first_answer_s"]["min"],
        "faster_warm": warm["litert"]["warm_s"]["min"] < warm["tensorflow"]["warm_s"]["min"],
    }
    return {"keep_litert": all(reasons.values()), "too_busy": busy > BUSY_SHARE, "others_cpu_share": busy,
            **reasons}


def settings_verdict(results: dict) -> dict:
    """Each settings variant's best round (images/s), and whether the shipped ones did best:
    a lead smaller than the largest spread between one variant's own rounds is no lead."""
    settings = results["settings"]
    rates = {name: [row["images_per_s"] for row in v["runs"]] for name, v in settings["variants"].items()}
    best = {name: max(v["runs"], key=lambda row: row["images_per_s"]) for name, v in settings["variants"].items()}
    winner = max(best, key=lambda name: best[name]["images_per_s"])
    lead = 1 - max(rates["shipped"]) / max(rates[winner])
    spread = max(1 - min(r) / max(r) for r in rates.values())
    return {"best": best, "winner": winner, "shipped_best": winner == "shipped", "lead": lead, "spread": spread,
            "too_busy": settings["others_cpu_share"] > BUSY_SHARE, "others_cpu_share": settings["others_cpu_share"]}


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
        *_settings_lines(results),
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
        ("cold 5-URL CLI / its floor", "cold_cli_over_floor", "{:.2f}x"),
        ("warm 5-URL request / its floor", "warm_over_floor", "{:.2f}x"),
        ("best throughput / CPU bound", "throughput_fraction", "{:.0%}"),
        ("cold 5-URL CLI: baseline / ours", "cold_cli_speedup", "{:.2f}x"),
        ("cold start to first answer / ideal", "cold_start_over_ideal", "{:.2f}x"),
    )
    for label, key, fmt in rows:
        values = [("-" if goal["ratios"][r][key] is None else fmt.format(goal["ratios"][r][key]))
                  for r in ("litert", "tensorflow")]
        target = GOALS[key][1] if key in GOALS else "close to 1"
        verdict = "" if key not in GOALS else ("met" if goal["met"][key] else "MISSED")
        lines.append(f"  {label:<40} {values[0]:>7}   {values[1]:>10}   {target:<10} {verdict}")
    return lines


def _busy(share: float) -> str:
    return f"other processes took {share:.0%} of the CPUs"


def _decision_line(results: dict) -> str:
    decision, agreement = results["goals"]["default_runtime"], results["agreement"]
    if decision["too_busy"]:
        verdict = f"machine too busy to decide ({_busy(decision['others_cpu_share'])}): litert stays the default"
    else:
        verdict = "keep litert as the default" if decision["keep_litert"] else "litert does NOT earn the default"
    return (f"DEFAULT RUNTIME: litert vs tensorflow on the same pixels: top-3 identical on "
            f"{agreement['top3_identical']}/{agreement['images']} fixtures, max |score diff| "
            f"{agreement['max_score_diff']:.1e}; least of interleaved runs: litert faster cold start: "
            f"{decision['faster_cold_start']}, faster warm: {decision['faster_warm']} -> {verdict}")


def _settings_lines(results: dict) -> list[str]:
    verdict = results["goals"]["settings"]
    if verdict is None:
        return []
    settings = results["settings"]
    if verdict["too_busy"]:
        conclusion = f"machine too busy to decide ({_busy(verdict['others_cpu_share'])})"
    elif verdict["shipped_best"]:
        conclusion = "the shipped settings did best"
    elif verdict["lead"] < verdict["spread"]:
        conclusion = (f"'{verdict['winner']}' led the shipped settings by {verdict['lead']:.1%}, within one variant's "
                      f"own spread between rounds ({verdict['spread']:.1%}): no clear winner")
    else:
        conclusion = f"'{verdict['winner']}' beat the shipped settings by {verdict['lead']:.1%}"
    lines = [f"SETTINGS: best of {len(next(iter(settings['variants'].values()))['runs'])} interleaved rounds "
             f"at {settings['concurrency']} clients -> {conclusion}"]
    for name, row in verdict["best"].items():
        env = " ".join(f"{k}={v}" for k, v in settings["variants"][name]["settings"].items()
                       if k != "CLOUD_RUN_TIMEOUT_SECONDS")
        lines.append(f"  {name:<58} {row['images_per_s']:6.1f} images/s, instance CPU "
                     f"{row['cpu_ms_per_image']['server']:.1f} ms/image  ({env})")
    return lines


def _mm(sample: dict) -> str:
    return f"{sample['min']:6.3f} / {sample['median']:6.3f} (n={len(sample['runs'])})"


def _ms(timings: dict) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in timings.items())


def _memory(memory: dict) -> str:
    """Peak (VmHWM) of each process; the sum counts shared pages once per process."""
    workers = [w["VmHWM"] for w in memory["workers"]]
    return (f"master {memory['master']['VmHWM']:.0f} MB, worker{'s' if len(workers) > 1 else ''} "
            + ", ".join(f"{w:.0f}" for w in workers)
            + f" MB (sum {memory['master']['VmHWM'] + sum(workers):.0f} MB)")


def _scenario_lines(results: dict) -> list[str]:
    cli = results["cold_cli"]
    lines = []
    for name in ("baseline", *[r for r in results["runtimes"] if r in cli]):
        entry = cli[name]
        lines.append(f"  (1) cold CLI, 5 URLs, {name:<10}   {_mm(entry['seconds'])}   peak RSS {entry['peak_rss_mb']:.0f} MB")
        if "phases_s" in entry:
            lines.append("        phases, s: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["phases_s"].items()))
        else:
            lines.append("        pipeline, ms: " + _ms(entry["timings_ms"]))
    bare = cli["bare_python"]
    lines.append(f"  (1) python -c pass                    {_mm(bare['seconds'])}   peak RSS {bare['peak_rss_mb']:.0f} MB"
                 f"; {_busy(cli['others_cpu_share'])} during the cold CLI runs")
    first = results["first_conversion"]
    lines.append(f"      first-ever litert run (download, import TF, convert, classify): {first['seconds']:.2f} s, "
                 f"peak RSS {first['peak_rss_mb']:.0f} MB")
    baseline_top3 = cli["baseline"]["top3"]
    same = sum(baseline_top3[name] == labels for name, labels in cli["litert"]["top3"].items())
    lines.append(f"      top-3 labels, baseline vs ours (litert): same on {same}/{len(baseline_top3)} images")
    lines.append(f"  (3) floor: slowest image fetched alone      {_mm(results['fetch_floor_s'])}")
    for runtime, entry in results["runtimes"].items():
        inference, cold, warm = entry["inference"], results["cold_start"][runtime], results["warm"][runtime]
        fastest = min(inference["settings"], key=lambda s: statistics.median(
            inference["settings"][s]["wall_s"][REQUEST_BATCH]))
        lines += [
            f"  [{runtime}]",
            f"  (3) floor: one inference of 5 alone       {_mm(_summary(inference['settings'][fastest]['wall_s'][REQUEST_BATCH]))}"
            f" ({_threads(fastest)}); warm floor {floor_s(results, runtime):.3f}"
            + (f", CLI floor {cli_floor_s(results, runtime):.3f}" if runtime in cli else "")
            + f" ({_busy(inference['others_cpu_share'])} meanwhile)",
            f"  (2) warm 5-URL request                    {_mm(warm['warm_s'])}",
            "        server, ms: " + _ms(warm["warm_timings_ms"]),
            f"        workers' VmRSS after the first warm request {_rss(warm['memory_after_first'])} MB, after the "
            f"last {_rss(warm['memory_after_last'])} MB",
        ]
        if entry.get("throughput"):
            lines += _throughput_lines(results, runtime)
        lines += [
            f"  (5) cold start: process -> /healthz {_median(cold['healthz_s']):.3f} s -> first answer "
            f"{_median(cold['first_answer_s']):.3f} s (ideal {ideal_cold_start_s(results, runtime):.3f}; "
            f"n={len(cold['first_answer_s']['runs'])})",
            "        first answer, ms: " + _ms(cold["first_timings_ms"]),
            f"        in a fresh process: runtime import {inference['import_s']:.3f} s, model load "
            f"{inference['load_s']:.3f} s, first inference {inference['first_inference_s']:.3f} s",
            f"  (6) peak RSS per process of the instance: {_memory(entry['memory'])}",
        ]
    return lines


def _summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "runs": values}


def _threads(setting: str) -> str:
    return "TensorFlow's own threads" if setting == "default" else f"LiteRT threads {setting}"


def _rss(memory: dict) -> str:
    return ", ".join(f"{w['VmRSS']:.0f}" for w in memory["workers"])


def _throughput_lines(results: dict, runtime: str) -> list[str]:
    entry = results["runtimes"][runtime]
    best = best_throughput(results, runtime)
    cpu, phases = best["cpu_ms_per_image"], best["server_phases_cpu_ms_per_image"]
    rest = cpu["server"] - sum(phases.values())
    budget = sum(cpu.values())
    # A phase's CPU is its own thread's: the model's other threads (LiteRT's beyond the first,
    # TensorFlow's pools) land in the rest.
    one_thread = runtime == "litert" and results["meta"]["server"].get("CLASSIFIER_LITERT_THREADS") == "1"
    helpers = "" if one_thread else "the model's other threads, "
    where = "" if best in entry["throughput"] else " in the settings rounds"
    return [
        f"  (4) throughput, images/s: CPU bound {cpu_bound_images_per_s(results, runtime):.1f} "
        f"({results['meta']['cpus']} CPUs / (decode {decode_cpu_ms(results):.1f} + inference "
        f"{inference_cpu_ms(results, runtime):.1f} ms of CPU per image)); "
        + ", ".join(f"c={row['concurrency']} {row['images_per_s']:.1f}" for row in entry["throughput"]),
        f"        CPU per image at the best level, c={best['concurrency']}{where}, {best['images_per_s']:.1f} images/s "
        f"({results['meta']['cpus']} CPUs x wall time = {budget:.1f} ms): instance {cpu['server']:.1f} = fetch/read {phases['fetch']:.1f} + decode "
        f"{phases['decode']:.1f} + inference {phases['inference']:.1f} + HTTP, JSON, {helpers}and the rest {rest:.1f}; "
        f"bench clients + image server {cpu['bench']:.1f}; other processes {cpu['others']:.1f}; "
        f"idle (locks and waiting) {cpu['idle']:.1f}",
    ]


def _lever_lines(results: dict) -> list[str]:
    lines = []
    for runtime in results["runtimes"]:
        first = results["cold_start"][runtime]["first_timings_ms"]
        lines.append(f"  overlap load/fetch, first request ({runtime}): model load {first['model_load']:.0f} ms, "
                     f"waited {first['model_wait']:.0f} ms after the fetches -> "
                     f"{first['model_load'] - first['model_wait']:.0f} ms hidden")
    lines.append("  decode, least CPU ms per fixture (smallest to largest), top-3 vs shipped, max score change:")
    for name, variant in results["decode"]["variants"].items():
        times = " ".join(f"{ms:5.1f}" for ms in variant["cpu_ms"].values())
        lines.append(f"    {name:<30} {times}  mean {statistics.fmean(variant['cpu_ms'].values()):5.1f}  "
                     f"top-3 {'same' if variant['top3_same'] else 'CHANGED'}, {variant['max_score_change']:.1e}")
    for runtime, entry in results["runtimes"].items():
        for setting, timed in entry["inference"]["settings"].items():
            per_image = ", ".join(f"{size}: {1000 * min(timed['wall_s'][size]) / int(size):.1f} wall / "
                                  f"{1000 * min(calls) / int(size):.1f} CPU" for size, calls in timed["cpu_s"].items())
            lines.append(f"  batched inference ({runtime}, {_threads(setting)}), least ms per image at batch {per_image}")
    return lines
