"""`python -m function` in a subprocess: results on stdout, logs on stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, python_env


def run_cli(stand_in, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=ROOT, env=python_env({**stand_in.env(), **(env or {})}),
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def warm_cache(stand_in):
    """Convert the stand-in once (in a subprocess) so later CLI runs start without TensorFlow."""
    done = run_cli(stand_in, "--preload", "-q")
    assert done.returncode == 0, done.stderr
    assert list(stand_in.cache_dir.glob("*.tflite")), "preload must leave the converted model in the cache"


def test_json_lines_in_order_and_exit_1_on_failure(stand_in, warm_cache):
    red = stand_in.image_url("cli-red.png", (250, 5, 5))
    missing = stand_in.server.url("/images/cli-missing.png")
    done = run_cli(stand_in, "--json", "--top-k", "2", red, missing)
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["url"] for line in lines] == [red, missing]
    assert [p["label"] for p in lines[0]["predictions"]][:1] == ["Erithacus rubecula"]
    assert len(lines[0]["predictions"]) == 2
    assert lines[1]["error"]["code"] == "http_status"
    assert "classified 2 images" in done.stderr  # the per-request log line goes to stderr


def test_human_output_exit_0_and_quiet(stand_in, warm_cache):
    blue = stand_in.image_url("cli-blue.png", (5, 5, 250))
    done = run_cli(stand_in, "-q", blue)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == blue
    assert "1. Cyanistes caeruleus" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith("  ")]) == 3
    assert done.stderr == ""


@pytest.mark.parametrize("args", [[], ["--top-k", "0", "http://a/b.jpg"], ["--top-k", "x", "http://a/b.jpg"], ["--nope"]])
def test_usage_errors_exit_2(stand_in, args):
    done = run_cli(stand_in, *args)
    assert done.returncode == 2
    assert done.stdout == ""


def test_bad_configuration_exits_2(stand_in):
    done = run_cli(stand_in, "http://a/b.jpg", env={"CLASSIFIER_TOP_K": "many"})
    assert done.returncode == 2
    assert "CLASSIFIER_TOP_K" in done.stderr


def test_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["classify"] == "function.cli:main"
