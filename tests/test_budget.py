"""Process-wide budgets: the download budget bounds the bytes all downloads hold together,
a download that cannot get its share in time fails `overloaded`, one alone always goes."""

from __future__ import annotations

import concurrent.futures
import gzip
import random
import threading
import time
import tracemalloc

import pytest

from fixtures.server import LoopbackServer
from function import budget, fetch
from function.budget import Budget
from function.config import inflight_bytes, load_settings
from function.errors import ItemError

MB = 1024 * 1024


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def settings(**env: str):
    return load_settings({"CLASSIFIER_ALLOW_PRIVATE_URLS": "1", "CLASSIFIER_FETCH_DEADLINE": "5",
                          "CLASSIFIER_MAX_IMAGE_BYTES": str(4 * MB), **env})


def fetch_within(download: Budget, url: str, config) -> tuple[int, int]:
    """Fetch `url` inside a lease: (body length, bytes the lease held once the body was read)."""
    with download.lease() as lease:
        body = fetch.fetch(fetch.make_session(config), url, config)
        return len(body), lease.held


def test_a_lease_reserves_whole_shrinks_and_gives_everything_back():
    shared = Budget(100)
    with shared.lease() as lease:
        assert budget.current_lease() is lease
        lease.reserve(60, timeout=1)
        assert shared.held == 60
        lease.shrink(10)
        assert shared.held == 10
        lease.reserve(90, timeout=1)  # a second body in the same work replaces the first
        assert shared.held == 90
    assert shared.held == 0 and budget.current_lease() is None


def test_taking_more_than_is_free_waits_then_times_out():
    shared = Budget(100)
    shared.take(80)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        shared.take(30, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0
    threading.Timer(0.1, shared.give, (80,)).start()
    assert shared.take(30, timeout=5) == 30  # free again: it goes


def test_one_taker_alone_may_take_more_than_the_capacity():
    shared = Budget(10)
    assert shared.take(1000, timeout=0) == 10


def test_a_download_holds_its_length_or_the_limit_and_keeps_only_its_size(server):
    config = settings()
    body = random.Random(1).randbytes(300_000)
    declared = server.add("/declared.jpg", body, content_type="image/jpeg")
    endless = server.add("/endless.jpg", b"\xff", fault="endless")
    zipped = server.add("/zipped.jpg", gzip.compress(body), headers={"Content-Encoding": "gzip"})
    shared = Budget(64 * MB)
    taken: list[int] = []
    real_take = shared.take
    shared.take = lambda amount, timeout=None: taken.append(amount) or real_take(amount, timeout)
    assert fetch_within(shared, declared, config) == (len(body), len(body))
    assert fetch_within(shared, zipped, config) == (len(body), len(body))  # reserved the limit, kept its size
    with pytest.raises(ItemError) as caught:
        fetch_within(shared, endless, config)
    assert caught.value.code == "too_large"
    assert taken == [len(body), 4 * MB, 4 * MB]
    assert shared.held == 0


def test_a_download_that_cannot_get_its_share_in_time_is_overloaded(server):
    config = settings(CLASSIFIER_FETCH_DEADLINE="1")
    url = server.add("/a.jpg", b"\xff" * 1000, content_type="image/jpeg")
    shared = Budget(4 * MB)
    shared.take(4 * MB - 10)  # another download holds nearly all of it
    started = time.monotonic()
    with pytest.raises(ItemError) as caught:
        fetch_within(shared, url, config)
    assert caught.value.code == "overloaded" and caught.value.transient
    assert time.monotonic() - started < 2.5  # within the download's deadline
    shared.give(4 * MB - 10)
    assert fetch_within(shared, url, config) == (1000, 1000)


def test_one_download_alone_may_go_up_to_the_image_limit_whatever_the_budget(server):
    config = settings()
    body = random.Random(3).randbytes(3 * MB)
    url = server.add("/alone.jpg", body, content_type="image/jpeg")
    assert fetch_within(Budget(1 * MB), url, config) == (len(body), 1 * MB)  # all of the budget, not more


def test_concurrent_downloads_hold_no_more_than_the_budget_together(server):
    """24 slow 3 MB downloads, 12 at a time, against a 6 MB budget: Python's own peak
    allocation stays near the budget (without it: 12 x 3 MB, and twice that joining)."""
    config = settings()
    body = random.Random(2).randbytes(3 * MB)
    url = server.add("/slow.jpg", body, content_type="image/jpeg", rate=12 * MB)
    shared = Budget(6 * MB)
    tracemalloc.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            sizes = list(pool.map(lambda _: fetch_within(shared, url, config)[0], range(24)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == [len(body)] * 24
    assert peak < 3 * 6 * MB  # the budget, plus the copy that joins a body's chunks, plus slack


@pytest.mark.parametrize(
    "env, limit, expected",
    [
        ({}, None, 256 * MB),
        ({}, 768 * MB, 96 * MB),
        ({"WORKERS": "2"}, 768 * MB, 48 * MB),  # each worker holds its own downloads
        ({}, 40 * MB, 20 * MB),  # never below one image
        ({"CLASSIFIER_MAX_INFLIGHT_BYTES": "1000"}, 1536 * MB, 1000),
    ],
)
def test_the_download_budget_is_a_share_of_the_container_memory(env, limit, expected):
    assert inflight_bytes(load_settings(env), limit) == expected
