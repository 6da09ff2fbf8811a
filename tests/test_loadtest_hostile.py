"""`scripts/loadtest --hostile --quick` against a real server instance with the pod's memory:
nothing lost, good images right, /healthz within 1 s while drippers drip, peak RSS under the
limit in knative/service.yaml and RSS back near idle after."""

from __future__ import annotations

import pytest
import yaml

from conftest import run_loadtest
from loadlib import hostile


@pytest.mark.slow
def test_the_quick_hostile_run_keeps_every_invariant(stand_in, tmp_path):
    _, result = run_loadtest("--hostile", stand_in, tmp_path / "hostile.json", timeout=240)
    requests, images, drippers, health, rss = (result[k] for k in ("requests", "images", "drippers", "healthz", "rss_mb"))
    assert requests["sent"] == requests["answered"] >= 8 and requests["wrong"] == 0
    assert images["good"]["classified"] > 0 and images["good-20mb"]["classified"] > 0
    assert set(images["gzip-bomb"]) <= {"too_large", "overloaded"} and images["pixel-bomb-gif"]["image_too_large"]
    assert drippers["clients"] == 16 and drippers["cut"] >= 16
    assert drippers["cut_after_s"]["max"] <= result["plan"]["read_deadline"] + 2
    assert health["polls"] >= 5 and health["failed"] == 0 and health["latency_s"]["max"] <= 1.0
    assert rss["pod_limit"] == hostile.pod_memory_limit() // 2**20
    assert 0 < rss["peak"] <= rss["pod_limit"]
    assert rss["after"] <= rss["idle"] + result["plan"]["rss_margin_mb"]
    assert result["passed"]


@pytest.mark.parametrize("quantity, expected", [("1536Mi", 1536 * 2**20), ("2Gi", 2 * 2**30), ("800M", 800 * 10**6)])
def test_the_pod_memory_limit_is_read_from_the_service(tmp_path, quantity, expected):
    assert hostile.pod_memory_limit() > 0  # the real knative/service.yaml
    service = tmp_path / "service.yaml"
    container = {"name": "classifier", "resources": {"limits": {"cpu": "2", "memory": quantity}}}
    service.write_text(yaml.safe_dump({"spec": {"template": {"spec": {"containers": [container]}}}}))
    assert hostile.pod_memory_limit(service) == expected
