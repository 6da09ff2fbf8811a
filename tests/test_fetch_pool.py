"""More concurrent downloads than the session's connection pool holds: urllib3 closes
the surplus connections as their bodies end, and no download may fail for it."""

from __future__ import annotations

import concurrent.futures

from fixtures.server import LoopbackServer
from function import fetch
from function.config import load_settings


def test_downloads_beyond_the_pool_size_all_succeed():
    settings = load_settings({"CLASSIFIER_ALLOW_PRIVATE_URLS": "1", "CLASSIFIER_FETCH_WORKERS": "1"})
    session = fetch.make_session(settings)  # pools fetch_workers * 4 = 4 connections per host
    body = b"x" * 300_000
    with LoopbackServer() as server:
        url = server.add("/a.bin", body, latency=0.2)  # all twelve are open at once
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda _: fetch.fetch(session, url, settings), range(12)))
    assert got == [body] * 12
