"""`scripts/loadtest --faults --quick` against a real server instance: every
request answered, nothing wrong, no fetch past its deadline, memory bounded, /healthz up."""

from __future__ import annotations

import pytest

from conftest import run_loadtest


@pytest.mark.slow
def test_the_quick_fault_injection_run_keeps_every_invariant(stand_in, tmp_path):
    done, result = run_loadtest("--faults", stand_in, tmp_path / "faults.json", timeout=120)
    requests, images, health = result["requests"], result["images"], result["healthz"]
    assert requests["sent"] == requests["answered"] >= 20
    assert requests["server_errors"] == 0 and requests["wrong"] == 0
    assert requests["latency_s"]["max"] <= result["plan"]["latency_bound"]
    assert images["good"] > 0 and all(fault["injected"] > 0 for fault in images["faults"].values())
    assert health["polls"] >= 5 and health["failed"] == 0
    assert 0 < result["rss_mb"]["peak"] <= result["plan"]["max_rss_mb"]
    assert result["passed"] and all(result["invariants"].values())
    assert "PASS  every request answered" in done.stdout
