"""Downloads from a misbehaving loopback "internet": every failure is an ItemError with
its code, bodies never grow past the limit, and no server holds a fetch past the deadline.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from conftest import function_client
from fixtures.server import LoopbackServer
from function import fetch
from function.config import load_settings
from function.errors import ItemError

DEADLINE = 1.5  # seconds; every "slow" case must end within DEADLINE + MARGIN
MARGIN = 1.0
LIMIT = 1_000_000  # CLASSIFIER_MAX_IMAGE_BYTES for these tests


def settings(**env: str):
    """Loopback allowed (these tests are about fetching, not the guard), small limits."""
    return load_settings({
        "CLASSIFIER_ALLOW_PRIVATE_URLS": "1",
        "CLASSIFIER_FETCH_DEADLINE": str(DEADLINE),
        "CLASSIFIER_MAX_IMAGE_BYTES": str(LIMIT),
        **env,
    })


def fetch_error(url: str, **env: str) -> ItemError:
    config = settings(**env)
    with pytest.raises(ItemError) as caught:
        fetch.fetch(fetch.make_session(config), url, config)
    return caught.value


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


@contextlib.contextmanager
def raw_server(reply: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection server whose `reply` reads requests and writes any bytes it likes,
    for what the HTTP server cannot produce (an endless chunked body)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            with contextlib.suppress(OSError):  # the client hung up: that is the point
                reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/image.png?sig=SECRET"
    finally:
        listener.close()
        thread.join(15)


def endless_chunks(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"\xff" * 65536
    for _ in range(64 * LIMIT // len(block)):  # bounded: 64x the limit at most
        conn.sendall(b"%x\r\n%s\r\n" % (len(block), block))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- answers that are not an image --------------------------------------------------


@pytest.mark.parametrize("status, transient", [(404, False), (403, False), (500, True), (429, True)])
def test_non_2xx_is_http_status(server, status, transient):
    url = server.add("/status", b"nope", status=status, content_type="text/plain")
    error = fetch_error(url)
    assert (error.code, error.status_code, error.transient) == ("http_status", status, transient)


def test_connection_refused_is_fetch_failed():
    error = fetch_error(f"http://127.0.0.1:{free_port()}/x.png")
    assert error.code == "fetch_failed" and error.transient


def test_reset_mid_body_is_fetch_failed(server):
    url = server.add("/reset", b"\x89PNG" + b"x" * 200_000, fault="reset")
    assert fetch_error(url).code == "fetch_failed"


def test_body_shorter_than_its_declared_length_is_fetch_failed(server):
    body = b"\x89PNG" + b"x" * 200_000
    url = server.add("/short.png", body, headers={"Content-Length": str(len(body) + 1000), "Connection": "close"})
    error = fetch_error(url)
    assert error.code == "fetch_failed"
    assert f"{len(body)} of {len(body) + 1000} bytes" in error.message


# --- what is sent --------------------------------------------------------------------


def test_credentials_follow_same_origin_redirects_only(server):
    """A bucket's Authorization goes to its URL and same-origin hops; a hop to another
    origin (here another port) gets none, and every hop says who is asking."""
    config = settings()
    session = fetch.make_session(config)
    with LoopbackServer() as other:
        elsewhere = other.add("/there.png", b"\x89PNG there")
        server.add("/here.png", b"\x89PNG here")
        server.add("/same.png", status=302, headers={"Location": "/here.png"})
        server.add("/away.png", status=302, headers={"Location": elsewhere})
        secret = {"Authorization": "Bearer bucket-token"}
        assert fetch.fetch(session, server.url("/same.png"), config, secret) == b"\x89PNG here"
        assert fetch.fetch(session, server.url("/away.png"), config, secret) == b"\x89PNG there"
        assert server.request_headers["/here.png"]["Authorization"] == "Bearer bucket-token"
        assert "Authorization" not in other.request_headers["/there.png"]
        assert other.request_headers["/there.png"]["User-Agent"] == fetch.USER_AGENT
        assert "gzip" in other.request_headers["/there.png"]["Accept-Encoding"]


# --- size ----------------------------------------------------------------------------


def test_declared_length_over_the_limit_is_refused_without_reading_the_body(server):
    # The body never comes (hang): reading it would end in a timeout, not too_large.
    url = server.add("/big", b"x", headers={"Content-Length": str(LIMIT + 1)}, fault="hang")
    assert fetch_error(url, CLASSIFIER_FETCH_DEADLINE="10").code == "too_large"


def test_endless_body_without_length_is_cut_at_the_limit(server):
    url = server.add("/endless", b"\xff", fault="endless")
    assert fetch_error(url, CLASSIFIER_FETCH_DEADLINE="10").code == "too_large"


def test_chunked_body_over_the_limit_is_cut_while_streaming():
    with raw_server(endless_chunks) as url:
        assert fetch_error(url, CLASSIFIER_FETCH_DEADLINE="10").code == "too_large"


def test_gzip_bomb_counts_decoded_bytes_and_memory_stays_bounded(server):
    bomb = gzip.compress(b"\0" * (64 * LIMIT), 9)  # ~64 KB on the wire
    assert len(bomb) < LIMIT
    url = server.add("/bomb.png", bomb, content_type="image/png", headers={"Content-Encoding": "gzip"})
    tracemalloc.start()
    try:
        error = fetch_error(url, CLASSIFIER_FETCH_DEADLINE="10")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "too_large"
    assert peak < 4 * LIMIT  # decoded a read at a time, never the 64 MB at once


def test_body_within_the_limit_is_returned_whole(server):
    body = bytes(range(256)) * 1000
    url = server.add("/ok.bin", body, rate=2_000_000)
    config = settings()
    assert fetch.fetch(fetch.make_session(config), url, config) == body


# --- time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        {"fault": "drip"},  # body a byte a second
        {"fault": "hang"},  # headers, then nothing
        {"latency": 30.0},  # nothing at all
    ],
    ids=["drip", "hang", "silent"],
)
def test_slow_servers_time_out_within_the_deadline(server, route):
    url = server.add("/slow.png", b"\x89PNG" + b"x" * 500, **route)
    started = time.monotonic()
    error = fetch_error(url)
    assert error.code == "timeout" and error.transient
    assert time.monotonic() - started < DEADLINE + MARGIN


def test_headers_dripped_a_byte_at_a_time_time_out_within_the_deadline(server):
    """Every byte comes well within the read timeout, so only the overall deadline,
    enforced on the socket itself, can end this one."""
    url = server.add("/drip-headers.png", b"\x89PNG", fault="drip_headers")
    started = time.monotonic()
    error = fetch_error(url)
    assert error.code == "timeout"
    assert time.monotonic() - started < DEADLINE + MARGIN


def test_a_kept_alive_connection_is_held_to_the_next_fetchs_deadline(server):
    """The second fetch reuses the first one's connection, whose socket was opened under
    the first fetch's deadline; the second fetch's deadline must still cut it."""
    config = settings()
    session = fetch.make_session(config)
    assert fetch.fetch(session, server.add("/quick.png", b"\x89PNG"), config) == b"\x89PNG"
    slow = server.add("/drip-headers.png", b"\x89PNG", fault="drip_headers")
    started = time.monotonic()
    with pytest.raises(ItemError) as caught:
        fetch.fetch(session, slow, config)
    assert caught.value.code == "timeout"
    assert time.monotonic() - started < DEADLINE + MARGIN
    pools = session.pools
    assert [pools[key].num_connections for key in pools.keys()] == [1]  # one connection, reused


# --- secrets stay out of logs ---------------------------------------------------------


def test_logs_never_carry_query_strings_or_credentials(monkeypatch, stand_in, caplog):
    """Every failure path logs its URL; none may log the signature, token or password.
    The function's logs go out at the most verbose level an operator can choose."""
    for key, value in stand_in.env(CLASSIFIER_FETCH_DEADLINE="1", CLASSIFIER_MAX_IMAGE_BYTES=str(LIMIT),
                                   CLASSIFIER_LOG_LEVEL="debug").items():
        monkeypatch.setenv(key, value)
    client = function_client()
    monkeypatch.setattr(logging.getLogger("function"), "propagate", True)  # main.py turned it off
    caplog.set_level(logging.DEBUG, logger="function")
    server = stand_in.server
    signed = "?X-Goog-Signature=SECRET1&token=SECRET2"
    urls = [
        stand_in.image_url("signed-ok.png") + signed,
        server.url("/images/missing.png") + signed,
        f"http://127.0.0.1:{free_port()}/refused.png" + signed,
        server.add("/images/hang.png", b"x", fault="hang") + signed,
        server.add("/images/huge.png", b"x", headers={"Content-Length": str(LIMIT + 1)}) + signed,
        server.add("/images/page.png", b"<html></html>", content_type="image/png") + signed,
        stand_in.image_url("with-creds.png").replace("http://", "http://user:SECRET3@"),
    ]
    response = client.post("/", json={"urls": urls})
    assert response.status_code == 200
    codes = [r.get("error", {}).get("code") for r in response.get_json()["results"]]
    assert codes == [None, "http_status", "fetch_failed", "timeout", "too_large", "not_an_image",
                     "forbidden_url"]
    logged = "\n".join(caplog.text.splitlines() + [str(getattr(r, "fields", "")) for r in caplog.records])
    assert "classified 7 images" in logged and "/images/missing.png" in logged
    assert "SECRET" not in logged
