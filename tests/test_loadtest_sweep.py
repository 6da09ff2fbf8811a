"""The concurrency sweep of `scripts/loadtest --sweep`, tiny: the colour stand-in behind a
real functions-framework instance, 1 and 2 clients for a moment each. No assertion here
is about how fast anything is."""

from __future__ import annotations

import json

import pytest
import requests

from fixtures import images as test_images
from function import runtime
from function.config import ModelSpec
from loadlib import faults, sweep

PLAN = sweep.Plan(concurrencies=(1, 2), seconds=1.5, max_requests=12, images_per_request=2)


def _answer(status: int, body: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    return response


def test_a_request_is_wrong_unless_every_top1_matches():
    call = sweep.request([sweep.Target("http://a/red", "red"), sweep.Target("http://a/blue", "blue")])
    right = {"results": [{"predictions": [{"label": "red"}]}, {"predictions": [{"label": "blue"}]}]}
    swapped = {"results": [{"predictions": [{"label": "red"}]}, {"predictions": [{"label": "green"}]}]}
    failed = {"results": [{"predictions": [{"label": "red"}]}, {"error": {"code": "timeout"}}]}
    assert call.json == {"urls": ["http://a/red", "http://a/blue"]}
    assert call.check(_answer(200, right)) == []
    assert call.check(_answer(200, swapped)) == ["http://a/blue: got green, expected blue"]
    assert len(call.check(_answer(200, failed))) == 1
    assert len(call.check(_answer(200, {"results": right["results"][:1]}))) == 1
    assert call.check(_answer(503, {"error": {"code": "model_unavailable"}}))[0].startswith("status 503")


@pytest.mark.slow
def test_the_tiny_sweep_answers_every_request_right_and_reports_each_level(stand_in, tmp_path):
    # Converted here, where TensorFlow is loaded already: the instance starts without it.
    runtime.tflite_path(ModelSpec("birds", stand_in.model_url, stand_in.labels_url), str(stand_in.cache_dir))
    targets = []
    for name, colour, format in (("red", (230, 20, 30), "PNG"), ("blue", (20, 40, 220), "JPEG")):
        body = test_images.encode(test_images.solid(colour), format)
        url = stand_in.server.add(f"/sweep/{name}.{format.lower()}", body, content_type=f"image/{format.lower()}")
        targets.append(sweep.Target(url, faults.expected_top(body)[0]))
    assert targets[0].label != targets[1].label  # a swapped or repeated answer shows

    result = sweep.instance(stand_in.env(CLASSIFIER_LOG_LEVEL="warning", THREADS="2"), [t.url for t in targets],
                            PLAN, tmp_path / "server.log", targets=targets, log=lambda _: None)

    assert result["threads"] == 2 and result["images_per_request"] == 2
    assert [lvl["concurrency"] for lvl in result["levels"]] == [1, 2]
    for lvl in result["levels"]:
        assert 0 < lvl["requests"] <= PLAN.max_requests
        assert lvl["errors"] == 0 and lvl["problems"] == [], lvl["problems"]
        lat = lvl["latency_s"]
        assert lat["count"] == lvl["requests"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lvl["requests_per_s"] > 0 and lvl["images_per_s"] == pytest.approx(2 * lvl["requests_per_s"], abs=0.01)
        assert lvl["server_cpu_s_per_request"] > 0
        assert 0 < lvl["rss_mb"]["VmRSS"] <= lvl["rss_mb"]["VmHWM"] < lvl["rss_mb"]["pod_VmHWM"]
    assert result["peak_rss_mb"] >= result["rss_after_warmup_mb"] > 0
    assert sweep.passed([result])
    text = sweep.table({"images_per_request": 2, "images": "red.png, blue.jpeg", "latency": "none",
                        "plan": {"seconds": PLAN.seconds, "max_requests": PLAN.max_requests}, "cpus": 2, "load_average": [0, 0],
                        "instances": [result]})
    assert "THREADS=2" in text and len([line for line in text.splitlines() if line.startswith("      ")]) == 2
