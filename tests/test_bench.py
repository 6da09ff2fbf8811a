"""The benchmark's pieces, cheaply: the baseline is faithful, the stand-in internet
throttles, processes are measured, goals are computed from the right numbers.
No assertion here is about how fast anything is."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from benchlib import corpus, network, procs, report
from fixtures import images as test_images
from function.config import load_settings
from function.pipeline import Classifier

COLOURS = {"red": (230, 20, 30), "green": (10, 200, 40), "blue": (20, 40, 220)}


def test_baseline_gives_the_pipelines_top3(use_stand_in, stand_in, capsys):
    from benchlib import baseline  # imports tensorflow_hub, as the original script did

    urls = [stand_in.image_url(f"bench-{name}.png", colour) for name, colour in COLOURS.items()]
    assert baseline.main([stand_in.model_url, stand_in.labels_url, *urls]) == 0
    *rows, last = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours = Classifier(load_settings()).classify_urls(urls, top_k=3)["results"]
    assert [r["url"] for r in rows] == urls
    assert [[p["label"] for p in r["predictions"]] for r in rows] == \
        [[p["label"] for p in r["predictions"]] for r in ours]
    assert rows[0]["predictions"][0]["label"] == "Erithacus rubecula"
    assert set(last["phases"]) == {"import", "model_load", "labels", "download", "decode", "inference",
                                   "sort", "total"}


def tiny_corpus(tmp_path, sizes=((320, 240), (640, 480))) -> corpus.Corpus:
    images = []
    for index, (width, height) in enumerate(sizes):
        data = test_images.encode(test_images.photo_like(width, height, index), "JPEG", quality=80)
        images.append(corpus.Image(f"{index}.jpg", width, height, 80, data))
    (tmp_path / "model.tar.gz").write_bytes(b"model")
    (tmp_path / "labels.csv").write_text("id,name\n0,a\n")
    return corpus.Corpus(tmp_path / "model.tar.gz", tmp_path / "labels.csv", tuple(images))


def test_profile_spreads_latency_over_its_range():
    profile = network.Profile("test", 0.1, 0.4, 1e6)
    assert profile.latencies(4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert profile.latencies(1) == [0.4]


def test_served_images_wait_for_their_latency_and_rate_but_lan_copies_do_not(tmp_path):
    fixtures = tiny_corpus(tmp_path)
    profile = network.Profile("test", min_latency=0.2, max_latency=0.3, rate=100_000)
    with network.serve(fixtures, profile) as site:
        by_size = sorted(fixtures.images, key=lambda image: len(image.data))
        for url, latency, image in zip(site.images, profile.latencies(2), by_size):
            started = time.perf_counter()
            body = requests.get(url, timeout=30).content
            assert body == image.data
            # the server paces by writing a 16 KiB chunk, then waiting its share of the rate
            assert time.perf_counter() - started >= 0.9 * (latency + (len(body) - 16384) / profile.rate)
        routes = site.server._server.routes
        assert [routes[u.split(str(site.server.port))[1]].latency for u in site.lan_images] == [0.0, 0.0]
        assert requests.get(site.lan_images[-1], timeout=30).content == by_size[-1].data
        assert site.largest() == site.images[-1]
        assert requests.get(site.labels_url, timeout=30).text == "id,name\n0,a\n"
    with pytest.raises(requests.ConnectionError):
        requests.get(site.images[0], timeout=5)  # stopped with its block


def test_corpus_is_read_from_its_cache_without_rebuilding(tmp_path, monkeypatch):
    root = tmp_path / f"corpus-v{corpus.VERSION}"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"jpeg")
    (root / "manifest.json").write_text(json.dumps(
        {"images": [{"name": "a.jpg", "width": 8, "height": 6, "quality": 70}]}))
    monkeypatch.setattr(corpus, "_build", lambda root: pytest.fail("rebuilt a cached corpus"))
    loaded = corpus.load(tmp_path, log=lambda message: None)
    assert loaded.images == (corpus.Image("a.jpg", 8, 6, 70, b"jpeg"),)
    assert loaded.model_archive == root / "mobilenet_v2.tar.gz"


def test_jpeg_quality_is_chosen_to_hit_a_size():
    image = test_images.photo_like(400, 300)
    quality, data = corpus._jpeg_near(image, 40_000)
    assert abs(len(data) - 40_000) < 0.2 * 40_000
    assert data == test_images.encode(image, "JPEG", quality=quality)


def test_measured_process_reports_exit_output_and_peak_rss():
    done = procs.run(["-c", "import sys; b = bytearray(150 * 2**20); print('ok'); sys.exit(3)"],
                     procs.python_env({}), timeout=60)
    assert (done.returncode, done.stdout) == (3, "ok\n")
    assert done.peak_rss_mb >= 150 and done.cpu_seconds > 0
    with pytest.raises(RuntimeError, match="exited with 3"):
        procs.checked(done, "the child")


def test_a_small_childs_peak_is_its_own_after_the_bench_grew_large():
    """Linux carries the peak RSS of the memory a child is forked from across exec: a bench
    that built its fixtures with TensorFlow once reported 2.7 GB for every child."""
    grown = bytearray(600 * 2**20)
    grown[::4096] = b"x" * len(grown[::4096])  # touched: resident, and this process's peak
    done = procs.run(["-c", "pass"], procs.python_env({}), timeout=60)
    del grown
    assert done.peak_rss_mb < 100, done.peak_rss_mb


def test_server_settings_come_from_the_dockerfile():
    env = procs.dockerfile_env(procs.Server.SERVER_ENV)
    assert int(env["WORKERS"]) >= 1 and int(env["THREADS"]) >= 1 and int(env["CLASSIFIER_LITERT_THREADS"]) >= 0


def test_probe_samples_are_per_call_means_of_several_calls(monkeypatch, tmp_path):
    """A sample times CALLS_PER_SAMPLE calls in a row and reports per call: a helper
    thread's CPU spilling past one call's end is spread over several calls."""
    import types

    from benchlib import probe

    calls = {"2": 0, "1": 0}

    def fake(name):
        def probabilities(batch):
            calls[name] += 1
            time.sleep(0.002)
            return np.full((len(batch), 4), 0.25, dtype=np.float32)
        return types.SimpleNamespace(spec=types.SimpleNamespace(input_size=(8, 8)), probabilities=probabilities)

    monkeypatch.setattr(probe, "_load", lambda threads: ({name: fake(name) for name in calls}, {"runtime": "litert"}))
    monkeypatch.setattr(probe, "_fixture_batch", lambda corpus, spec: np.zeros((2, 8, 8, 3), np.float32))
    result = probe.infer(None, [1, 5], repeat=3, threads=[2, 1], scores_path=None)
    first = 1  # the first-inference call, on the first setting only
    assert calls == {"2": first + 2 * (1 + 3 * probe.CALLS_PER_SAMPLE), "1": 2 * (1 + 3 * probe.CALLS_PER_SAMPLE)}
    for timed in result["settings"].values():
        for size in ("1", "5"):
            assert len(timed["wall_s"][size]) == 3
            assert all(0.002 <= wall < 0.006 for wall in timed["wall_s"][size]), timed["wall_s"][size]


def test_probe_infers_and_measures_decode_levers_on_the_stand_in(use_stand_in, tmp_path):
    from benchlib import probe

    fixtures = tiny_corpus(tmp_path, sizes=((320, 240), (1600, 1200)))
    scores_path = tmp_path / "scores.npy"
    result = probe.infer(fixtures, [1, 2], repeat=2, threads=[0, 1], scores_path=scores_path)
    assert result["runtime"] == "litert"
    assert set(result["settings"]) == {str(os.cpu_count()), "1"}  # the threads each interpreter really has
    for timed in result["settings"].values():
        for kind in ("wall_s", "cpu_s"):
            assert sorted(timed[kind]) == ["1", "2"] and all(len(v) == 2 and min(v) > 0 for v in timed[kind].values())
    scores = np.load(scores_path)
    assert scores.shape == (2, 4)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)

    levers = probe.decode_levers(fixtures, repeat=1)["variants"]
    shipped = levers["shipped (draft, BILINEAR)"]
    assert shipped["top3_same"] and shipped["max_score_change"] == 0.0
    assert {"no draft, BILINEAR", "draft, NEAREST", "draft, BICUBIC"} <= set(levers)
    assert all(set(v["cpu_ms"]) == {"0.jpg", "1.jpg"} for v in levers.values())
    # CPU time, per fixture: the bigger JPEG costs more to decode
    assert levers["no draft, BILINEAR"]["cpu_ms"]["1.jpg"] > levers["no draft, BILINEAR"]["cpu_ms"]["0.jpg"] > 0


def test_decode_variants_really_change_the_decoder():
    from benchlib import probe
    from function import images

    data = test_images.encode(test_images.photo_like(1600, 1200), "JPEG", quality=80)
    settings = load_settings()

    def shipped(body):
        return images.decode(body, (224, 224), settings.max_image_pixels, settings.allowed_formats)

    no_draft = probe._patched(shipped, "PIL.JpegImagePlugin.JpegImageFile.draft", lambda self, mode, size: None)
    nearest = probe._with_filter(shipped, "NEAREST")
    reference = shipped(data)
    assert not np.array_equal(no_draft(data), reference)
    assert not np.array_equal(nearest(data), reference)
    assert np.array_equal(shipped(data), reference)  # the patches are gone afterwards


# --- goals and the table ------------------------------------------------------------------


def sample(median: float) -> dict:
    return {"min": median * 0.9, "median": median, "runs": [median * 0.9, median, median * 1.1]}


def memory(*workers: float) -> dict:
    return {"master": {"VmRSS": 50.0, "VmHWM": 60.0}, "workers": [{"VmRSS": w, "VmHWM": w + 20} for w in workers]}


def results() -> dict:
    """A full run's results, with round numbers."""
    def inference(wall5: float, cpu_per_image: float) -> dict:
        return {"import_s": 0.1, "load_s": 0.2, "first_inference_s": 0.2, "others_cpu_share": 0.01,
                "settings": {"2": {"wall_s": {"1": [wall5 / 3] * 3, "5": [wall5 * 0.9, wall5, wall5 * 1.2]},
                                   "cpu_s": {"1": [0.008] * 3, "5": [5 * cpu_per_image / 1000] * 3}},
                             "1": {"wall_s": {"1": [wall5 / 3] * 3, "5": [wall5 * 2] * 3},
                                   "cpu_s": {"1": [0.0045] * 3, "5": [0.025] * 3}}}}

    def throughput(rates: list[float]) -> list[dict]:
        return [{"concurrency": c, "requests": 4, "images_per_s": rate, "latency_s": sample(0.2),
                 "others_cpu_share": 0.01,
                 "cpu_ms_per_image": {"server": 20.0, "bench": 1.0, "others": 0.5, "idle": 2.0},
                 "server_phases_cpu_ms_per_image": {"fetch": 1.5, "decode": 12.5, "inference": 5.0}}
                for c, rate in zip((1, 4), rates)]

    def warm(seconds: float) -> dict:
        return {"warm_s": sample(seconds), "warm_timings_ms": {"fetch": 900.0, "total": 1000.0},
                "memory_after_first": memory(120.0), "memory_after_last": memory(121.0)}

    def cold(first_answer: float) -> dict:
        return {"healthz_s": sample(0.5), "first_answer_s": sample(first_answer),
                "first_timings_ms": {"fetch": 900.0, "decode": 50.0, "model_load": 300.0,
                                     "model_wait": 0.0, "inference": 100.0, "total": 1050.0}}

    return {
        "meta": {"plan": {"name": "full"}, "profile": {"min_latency": 0.15, "max_latency": 0.4, "rate": 3e6},
                 "cpus": 2, "server": {"WORKERS": "2", "THREADS": "4", "CLASSIFIER_LITERT_THREADS": "1"},
                 "load_before": [0.5, 0, 0], "load_after": [0.6, 0, 0], "bench_seconds": 60.0,
                 "images": [{"name": "a.jpg", "width": 800, "height": 600, "bytes": 150_000}]},
        "first_conversion": {"seconds": 9.0, "peak_rss_mb": 1100.0},
        "cold_cli": {
            "others_cpu_share": 0.02,
            "bare_python": {"seconds": sample(0.02), "peak_rss_mb": 11.0},
            "baseline": {"seconds": sample(10.0), "peak_rss_mb": 900.0, "top3": {"a.jpg": ["x", "y", "z"]},
                         "phases_s": {"import": 4.0, "total": 10.0}},
            "litert": {"seconds": sample(1.1), "peak_rss_mb": 150.0, "top3": {"a.jpg": ["x", "y", "z"]},
                       "timings_ms": {"fetch": 900.0, "total": 1000.0}},
        },
        "fetch_floor_s": sample(0.9),
        "cold_start": {"others_cpu_share": 0.05, "litert": cold(1.5), "tensorflow": cold(7.0)},
        "warm": {"others_cpu_share": 0.05, "litert": warm(1.0), "tensorflow": warm(1.3)},
        "runtimes": {"litert": {"inference": inference(0.1, 6.0), "throughput": throughput([30.0, 95.0]),
                                "memory": memory(180.0, 175.0)},
                     "tensorflow": {"inference": inference(0.2, 10.0), "memory": memory(900.0)}},
        "decode": {"others_cpu_share": 0.0, "variants": {
            "shipped (draft, BILINEAR)": {"cpu_ms": {"a.jpg": 12.0, "b.jpg": 14.0}, "top3_same": True,
                                          "max_score_change": 0.0},
            "draft, NEAREST": {"cpu_ms": {"a.jpg": 1.0, "b.jpg": 1.0}, "top3_same": False, "max_score_change": 3e-3},
            "no draft, BILINEAR": {"cpu_ms": {"a.jpg": 40.0, "b.jpg": 50.0}, "top3_same": True,
                                   "max_score_change": 1e-3}}},
        "agreement": {"top3_identical": 5, "images": 5, "max_score_diff": 1e-6},
    }


def test_ratios_come_from_the_same_runs_floors_and_cpu_bound():
    ratios = report.ratios(results(), "litert")
    # floors: medians; the inference of 5 on its fastest thread setting (median 0.1 s on 2 threads)
    assert report.floor_s(results(), "litert") == pytest.approx(0.9 + 0.1)
    assert ratios["warm_over_floor"] == pytest.approx(1.0 / (0.9 + 0.1))
    assert ratios["cold_cli_over_floor"] == pytest.approx(1.1 / (0.02 + 0.9 + 0.1))
    assert ratios["cold_cli_speedup"] == pytest.approx(10.0 / 1.1)
    # the bound: fastest decode that keeps the top-3 (13 ms, not NEAREST's 1) + cheapest
    # inference per image over batch sizes and threads (1 thread, batch 1: 4.5 ms)
    assert report.decode_cpu_ms(results()) == pytest.approx(13.0)
    assert report.inference_cpu_ms(results(), "litert") == pytest.approx(4.5)
    assert report.cpu_bound_images_per_s(results(), "litert") == pytest.approx(2000 / 17.5)
    assert ratios["throughput_fraction"] == pytest.approx(95.0 / (2000 / 17.5))
    # healthz + max(model load 0.3, fetch 0.9) + inference 0.1
    assert ratios["cold_start_over_ideal"] == pytest.approx(1.5 / (0.5 + 0.9 + 0.1))
    tensorflow = report.ratios(results(), "tensorflow")  # not measured in a quick run
    assert tensorflow["cold_cli_over_floor"] is None and tensorflow["throughput_fraction"] is None


def test_goals_are_judged_on_litert():
    goals = report.goals(results())
    assert goals["met"] == {"cold_cli_over_floor": True, "warm_over_floor": True, "throughput_fraction": True,
                            "cold_cli_speedup": True}
    slow = results()
    slow["runtimes"]["litert"]["throughput"][1]["images_per_s"] = 80.0
    slow["cold_cli"]["litert"]["seconds"] = sample(1.2)
    met = report.goals(slow)["met"]
    assert met["throughput_fraction"] is False and met["cold_cli_over_floor"] is False


@pytest.mark.parametrize("change, reason", [
    (lambda r: r["agreement"].update(top3_identical=4), "top3_identical"),
    (lambda r: r["agreement"].update(max_score_diff=2e-3), "scores_within_1e-3"),
    (lambda r: r["cold_start"]["litert"].update(first_answer_s=sample(8.0)), "faster_cold_start"),
    (lambda r: r["warm"]["litert"].update(warm_s=sample(1.4)), "faster_warm"),
])
def test_litert_keeps_the_default_only_if_it_agrees_and_wins(change, reason):
    assert report.runtime_decision(results())["keep_litert"] is True
    changed = copy.deepcopy(results())
    change(changed)
    decision = report.runtime_decision(changed)
    assert decision["keep_litert"] is False and decision[reason] is False


def test_verdicts_compare_the_least_of_interleaved_runs_and_say_when_too_busy():
    close = results()
    # litert's median is the slower, its least the faster: the least decides
    close["warm"]["litert"]["warm_s"] = {"min": 1.0, "median": 1.5, "runs": [1.0, 1.5, 1.6]}
    close["warm"]["tensorflow"]["warm_s"] = {"min": 1.1, "median": 1.2, "runs": [1.1, 1.2, 1.3]}
    assert report.runtime_decision(close)["faster_warm"] is True
    close["warm"]["others_cpu_share"] = 0.35
    decision = report.runtime_decision(close)
    assert decision["too_busy"] is True
    close["goals"] = report.goals(close)
    assert "machine too busy to decide (other processes took 35% of the CPUs)" in report.render(close)


def test_settings_verdict_names_the_best_round_of_each():
    full = results()
    row = lambda rate: {"images_per_s": rate, "cpu_ms_per_image": {"server": 20.0}}  # noqa: E731
    full["settings"] = {"concurrency": 8, "others_cpu_share": 0.05, "variants": {
        "shipped": {"settings": {"WORKERS": "2"}, "runs": [row(80.0), row(95.0)]},
        "1 worker": {"settings": {"WORKERS": "1"}, "runs": [row(90.0), row(70.0)]}}}
    verdict = report.settings_verdict(full)
    assert verdict["shipped_best"] and verdict["best"]["1 worker"]["images_per_s"] == 90.0
    full["settings"]["variants"]["1 worker"]["runs"].append(row(97.0))
    verdict = report.settings_verdict(full)
    assert verdict["winner"] == "1 worker" and verdict["lead"] == pytest.approx(1 - 95 / 97)
    full["goals"] = report.goals(full)
    # 2 % ahead, while the shipped settings' own rounds ranged from 80 to 95: no winner
    assert "led the shipped settings by 2.1%, within one variant's own spread between rounds (27.8%)" \
        in report.render(full)
    full["settings"]["variants"]["1 worker"]["runs"] = [row(120.0), row(118.0)]
    full["settings"]["variants"]["shipped"]["runs"] = [row(94.0), row(95.0)]
    full["goals"] = report.goals(full)
    assert "'1 worker' beat the shipped settings by 20.8%" in report.render(full)
    # the shipped instance's rounds count towards its best throughput too
    full["settings"]["variants"]["shipped"]["runs"].append({**full["runtimes"]["litert"]["throughput"][1],
                                                            "concurrency": 8, "images_per_s": 100.0})
    assert report.best_throughput(full, "litert")["images_per_s"] == 100.0


def test_table_leads_with_the_ratios_and_splits_the_instances_cpu():
    full = results()
    full["goals"] = report.goals(full)
    table = report.render(full)
    ratio_lines = table.split("RATIOS", 1)[1].splitlines()
    assert "1.08x" in ratio_lines[1] and "<= 1.15x" in ratio_lines[1] and "met" in ratio_lines[1]
    assert "83%" in ratio_lines[3] and "met" in ratio_lines[3]
    assert table.index("RATIOS") < table.index("SCENARIOS") < table.index("LEVERS")
    assert "keep litert as the default" in table
    assert "instance (the Dockerfile's): WORKERS=2 THREADS=4 CLASSIFIER_LITERT_THREADS=1" in table
    assert ("instance 20.0 = fetch/read 1.5 + decode 12.5 + inference 5.0 + HTTP, JSON, and the rest 1.0; "
            "bench clients + image server 1.0; other processes 0.5; idle (locks and waiting) 2.0") in table
    assert "master 60 MB, workers 200, 195 MB (sum 455 MB)" in table
    full["meta"]["server"]["CLASSIFIER_LITERT_THREADS"] = "2"  # the caller's thread is the phase's
    assert "+ HTTP, JSON, the model's other threads, and the rest 1.0" in report.render(full)
    assert "after the first warm request 120 MB, after the last 121 MB" in table
    assert re.search(r"no draft, BILINEAR +40\.0 +50\.0 +mean +45\.0 +top-3 same", table)


def test_others_share_counts_what_neither_this_process_nor_the_measured_ones_used():
    from benchlib import scenarios

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    with scenarios.Others() as unmeasured:
        subprocess.run([sys.executable, "-c", burn], check=True)
    with scenarios.Others() as measured:
        done = procs.run(["-c", burn], procs.python_env({}), timeout=60)
        measured.ended = done.cpu_seconds
    assert unmeasured.share > measured.share
    assert unmeasured.share * 2 * (os.cpu_count() or 1) > 0.3  # the burnt 0.4 s (of ~0.5 s, 1 CPU busy)


def test_bench_command_is_an_executable_script():
    """`scripts/bench` itself, as the README runs it from an activated venv."""
    script = procs.ROOT / "scripts" / "bench"
    env = procs.python_env({"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])})
    done = subprocess.run([str(script), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--no-latency" in done.stdout


def test_cpu_time_of_a_process_tree_counts_live_children():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(1, flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"1\n"  # it has burnt its 0.3 s
        own = procs.tree_cpu_seconds(child.pid)
        assert own >= 0.25
        assert procs.tree_cpu_seconds(os.getpid()) >= own + time.process_time() - 0.1
    finally:
        child.kill()
        child.wait()
    assert procs.machine_busy_seconds() >= own


def test_log_events_between_offsets_keep_whole_lines_only(tmp_path):
    """A throughput window reads the log lines written between two offsets taken while the
    server writes: a line either offset cuts counts on neither side, never as broken JSON."""
    from benchlib import scenarios

    lines = [b'{"n": 1}\n', b'{"n": 2}\n', b'{"n": 3}\n', b'{"n": 4}']  # the last one still being written
    log = tmp_path / "server.log"
    log.write_bytes(b"".join(lines))
    first, second = len(lines[0]), len(lines[0]) + len(lines[1])
    assert [e["n"] for e in scenarios._log_events(log, 0, second)] == [1, 2]
    assert [e["n"] for e in scenarios._log_events(log, first, second)] == [2]
    assert [e["n"] for e in scenarios._log_events(log, first + 3, second + 4)] == []  # both ends cut a line
    assert [e["n"] for e in scenarios._log_events(log, first + 3, len(b"".join(lines)))] == [3]
    assert [e["n"] for e in scenarios._log_events(log, second)] == [3, 4]


@pytest.mark.slow
def test_throughput_splits_the_instances_cpu_by_its_log_lines(stand_in, tmp_path):
    """One real instance, 2 clients for a few requests: the phases' CPU comes from the
    instance's own log lines and fits inside the instance's CPU."""
    from benchlib import scenarios
    from function import runtime
    from function.config import ModelSpec

    runtime.tflite_path(ModelSpec("birds", stand_in.model_url, stand_in.labels_url), str(stand_in.cache_dir))
    urls = [stand_in.image_url(f"bench-tp-{name}.jpg", colour, "JPEG") for name, colour in COLOURS.items()]
    env = procs.python_env({**stand_in.env(CLASSIFIER_LOG_FORMAT="json"), "WORKERS": "1", "THREADS": "2"})
    with procs.Server(env, tmp_path / "server.log") as server:
        scenarios._warm_up(server, urls)
        row = scenarios._throughput(server, urls, 2, seconds=1.0, ramp=0.3)
        memory = server.memory()
    assert row["requests"] >= 2 and row["images_per_s"] == pytest.approx(row["requests"] * len(urls) / 1.0, rel=0.1)
    cpu, phases = row["cpu_ms_per_image"], row["server_phases_cpu_ms_per_image"]
    assert all(phases[p] > 0 for p in ("fetch", "decode", "inference"))
    assert sum(phases.values()) < cpu["server"]
    assert len(memory["workers"]) == 1 and 0 < memory["workers"][0]["VmRSS"] <= memory["workers"][0]["VmHWM"]
    assert server.final_memory["workers"][0]["VmHWM"] >= memory["workers"][0]["VmHWM"]
