"""`scripts/loadtest --faults --quick` against a real functions-framework instance: every
request answered, nothing wrong, no fetch past its deadline, memory bounded, /healthz up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, python_env
from function import runtime
from function.config import ModelSpec


@pytest.mark.slow
def test_the_quick_fault_injection_run_keeps_every_invariant(use_stand_in, stand_in, tmp_path):
    # Converted here, where TensorFlow is loaded already: the script and the instance start without it.
    runtime.tflite_path(ModelSpec("birds", stand_in.model_url, stand_in.labels_url), str(stand_in.cache_dir))
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, "scripts/loadtest", "--faults", "--quick", "--json-out", str(out),
         "--model-url", stand_in.model_url, "--labels-url", stand_in.labels_url, "--cache-dir", str(stand_in.cache_dir)],
        cwd=ROOT, env=python_env({}), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads(out.read_text())
    requests, images, health = result["requests"], result["images"], result["healthz"]
    assert requests["sent"] == requests["answered"] >= 20
    assert requests["server_errors"] == 0 and requests["wrong"] == 0
    assert requests["latency_s"]["max"] <= result["plan"]["latency_bound"]
    assert images["good"] > 0 and all(fault["injected"] > 0 for fault in images["faults"].values())
    assert health["polls"] >= 5 and health["failed"] == 0
    assert 0 < result["rss_mb"]["peak"] <= result["plan"]["max_rss_mb"]
    assert result["passed"] and all(result["invariants"].values())
    assert "PASS  every request answered" in done.stdout
