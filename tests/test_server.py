"""The real `functions-framework` process on a free loopback port, as the README runs it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT, python_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


@contextlib.contextmanager
def functions_framework(env: dict[str, str]):
    """`functions-framework --target classify` with `env`, healthy: yields (base URL, process)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--source", "function/main.py",
         "--target", "classify", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=python_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        yield base, process
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def server(stand_in):
    with functions_framework(stand_in.env()) as running:
        yield running


def test_functions_framework_serves_health_and_classification(server, stand_in):
    base, _ = server
    url = stand_in.image_url("server-red.png", (250, 5, 5))
    response = requests.post(base + "/", json={"urls": [url]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] == "Erithacus rubecula"
    response = requests.get(base + "/", params={"url": url, "top_k": 1}, timeout=60)
    assert len(response.json()["results"][0]["predictions"]) == 1


def test_healthz_does_not_import_tensorflow(stand_in):
    """In a fresh process: serving /healthz must not import TensorFlow or load a model."""
    code = (
        "import sys; from functions_framework import create_app; "
        "c = create_app(target='classify', source='function/main.py').test_client(); "
        "r = c.get('/healthz'); assert r.status_code == 200, r.status_code; "
        "heavy = [m for m in ('tensorflow', 'tensorflow_hub', 'ai_edge_litert') if m in sys.modules]; "
        "assert not heavy, heavy; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=python_env(stand_in.env()),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
