"""The production server (`python -m function.server`, as the container runs it) on a free
loopback port: it serves the function, answers oversized request lines and headers at
once, and no client that sends slowly holds a thread or keeps `/healthz` from answering."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

from conftest import ROOT, python_env
from function import runtime
from function import server as server_module
from function.config import ModelSpec, load_settings
from function.receiver import ReceivingWorker

DEADLINE = 2.0  # CLASSIFIER_REQUEST_READ_DEADLINE of the guarded server below
THREADS = 2
SLACK = 2.0  # the loop checks deadlines every second; a busy machine adds to it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, process: subprocess.Popen, log, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server exited: {log.read().decode()[-2000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


@contextlib.contextmanager
def served(env: dict[str, str], log=None):
    """`python -m function.server` with `env` on loopback, healthy: yields (base URL, process).
    Its output goes to `log` (a binary file) when given, else to a temporary file: never a
    pipe, which would stall the server once full."""
    port = free_port()
    with contextlib.nullcontext(log) if log is not None else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "function.server"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=python_env({**env, "HOST": "127.0.0.1", "PORT": str(port)}),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, process, log)
            yield base, process
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="module")
def server(stand_in):
    # Converted here, where TensorFlow is loaded already: the server starts without it.
    runtime.tflite_path(ModelSpec("birds", stand_in.model_url, stand_in.labels_url), str(stand_in.cache_dir))
    env = stand_in.env(THREADS=str(THREADS), CLASSIFIER_REQUEST_READ_DEADLINE=str(DEADLINE))
    with served(env) as (base, _):
        yield base


def raw(base: str, data: bytes) -> socket.socket:
    """A connection to the server with `data` sent on it."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(data)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or 10 s pass)."""
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.slow
def test_the_server_serves_health_and_classification(server, stand_in):
    url = stand_in.image_url("server-red.png", (250, 5, 5))
    response = requests.post(server + "/", json={"urls": [url]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] == "Erithacus rubecula"
    response = requests.get(server + "/", params={"url": url, "top_k": 1}, timeout=60)
    assert len(response.json()["results"][0]["predictions"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"params": {"url": "https://example.com/" + "a" * 20_000}}, 414, "request_line_too_long"),
        ({"headers": {"X-Big": "b" * 9000}}, 431, "headers_too_large"),
        ({"headers": {f"X-Many-{n}": "x" for n in range(150)}}, 431, "headers_too_large"),
    ],
    ids=["request-line", "header-size", "header-count"],
)
def test_oversized_request_lines_and_headers_are_refused_at_once(server, kwargs, status, code):
    started = time.monotonic()
    response = requests.get(server + "/", timeout=10, **kwargs)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert time.monotonic() - started < 1.0


@pytest.mark.slow
def test_dripping_clients_are_cut_at_the_deadline_while_healthz_answers(server):
    """2 x THREADS clients drip: half their body, half their headers, a byte every 0.2 s.
    Each is cut with a 408 within the deadline; none holds a thread meanwhile."""
    heads = [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
             b"POST / HTTP/1.1\r\nHost: x\r\n"]
    ends: dict[int, float] = {}

    def drip(index: int) -> None:
        sock = raw(server, heads[index % 2])
        started = time.monotonic()
        with sock, contextlib.suppress(OSError):  # sending fails once the server closed
            while time.monotonic() - started < DEADLINE + SLACK + 2:
                sock.sendall(b" " if index % 2 == 0 else b"X")
                time.sleep(0.2)
        ends[index] = time.monotonic() - started

    drippers = [threading.Thread(target=drip, args=(i,)) for i in range(2 * THREADS)]
    for thread in drippers:
        thread.start()
    slowest = 0.0
    with requests.Session() as session:
        while any(thread.is_alive() for thread in drippers):
            started = time.monotonic()
            assert session.get(server + "/healthz", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.1)
    assert slowest < 1.0
    assert len(ends) == 2 * THREADS
    assert all(DEADLINE - 0.1 <= seconds <= DEADLINE + SLACK for seconds in ends.values()), ends


@pytest.mark.slow
def test_a_dripped_request_gets_a_json_408(server):
    sock = raw(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
    with sock:
        reply = answer(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.slow
def test_a_request_sent_in_pieces_within_the_deadline_is_served(server):
    body = b'{"urls": []}'
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    sock = raw(server, head[:20])
    with sock:
        for piece in (head[20:], b"Connection: close\r\n\r\n", body[:5], body[5:]):
            time.sleep(0.3)
            sock.sendall(piece)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 400 ")  # the function's own answer: the request arrived whole
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["message"].startswith("'urls' is empty")


@pytest.mark.slow
def test_chunked_bodies_pipelined_requests_and_100_continue(server):
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
               b"\r\n5\r\n{\"url\r\n7\r\ns\": []}\r\n0\r\n\r\n")
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sock = raw(server, chunked + pipelined)
    with sock:
        reply = answer(sock)
    assert reply.count(b"HTTP/1.1 ") == 2
    assert b"'urls' is empty" in reply and reply.endswith(b'{"status": "ok"}')

    expecting = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    sock = raw(server, expecting)
    with sock:
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b'{"urls": []}')
        assert b"'urls' is empty" in answer(sock)


@pytest.mark.slow
def test_bad_chunked_framing_is_a_json_400(server):
    sock = raw(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    with sock:
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "bad_request"


def test_the_server_keeps_functions_frameworks_environment():
    options = server_module.gunicorn_options(load_settings({
        "HOST": "127.0.0.1", "PORT": "9090", "WORKERS": "2", "THREADS": "8", "CLOUD_RUN_TIMEOUT_SECONDS": "300"}))
    assert (options["bind"], options["workers"], options["threads"], options["timeout"]) == ("127.0.0.1:9090", 2, 8, 300)
    assert options["limit_request_line"] == 8190 and options["worker_class"] is ReceivingWorker
    defaults = server_module.gunicorn_options(load_settings({}))
    assert defaults["bind"] == "0.0.0.0:8080" and defaults["timeout"] == 0
    assert defaults["threads"] == 4 * (os.cpu_count() or 1)


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
