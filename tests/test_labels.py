"""function/labels.py: label maps by id, in any row order, cached beside the model."""

from __future__ import annotations

import logging

import pytest

from fixtures.hub_module import write_labels
from function import cache, labels

NAMES = ("robin", "crow", "wren")


@pytest.fixture
def served_labels(stand_in, tmp_path):
    """A fresh route per test, so its hit count is this test's alone."""
    path = write_labels(tmp_path / "labels.csv", NAMES, (2, 0, 1))
    route = f"/labels-{tmp_path.name}.csv"
    return stand_in.server.add(route, path.read_bytes(), content_type="text/csv"), route


def test_rows_are_mapped_by_id_not_by_order():
    assert dict(labels.parse_labels(b"id,name\n2,wren\n0,robin\n1,crow\n")) == {0: "robin", 1: "crow", 2: "wren"}


def test_a_urls_labels_are_downloaded_once_then_read_from_the_cache(stand_in, served_labels, tmp_path):
    url, route = served_labels
    first = labels.load_labels(url, str(tmp_path / "cache"))
    assert dict(first) == dict(enumerate(NAMES))
    assert cache.entry(str(tmp_path / "cache"), url, ".labels.csv").is_file()
    again = labels.load_labels(url, str(tmp_path / "cache"))  # a later process, or a baked image
    assert dict(again) == dict(first)
    assert stand_in.server.hits[route] == 1


def test_an_unwritable_cache_still_gives_the_labels(stand_in, served_labels, tmp_path, caplog):
    url, route = served_labels
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")  # the cache "directory" is a file: nothing can be written under it
    with caplog.at_level(logging.WARNING, logger="function"):
        assert dict(labels.load_labels(url, str(blocked))) == dict(enumerate(NAMES))
    assert "cannot cache the labels" in caplog.text
    labels.load_labels(url, str(blocked))
    assert stand_in.server.hits[route] == 2  # nothing cached: read on every load


def test_bad_labels_are_not_cached(stand_in, tmp_path):
    url = stand_in.server.add(f"/bad-{tmp_path.name}.csv", b"no,header\n1,2\n", content_type="text/csv")
    with pytest.raises(ValueError, match="id,name"):
        labels.load_labels(url, str(tmp_path / "cache"))
    assert not cache.entry(str(tmp_path / "cache"), url, ".labels.csv").exists()


def test_a_local_file_is_read_as_it_is_and_never_copied(tmp_path):
    path = write_labels(tmp_path / "local.csv", NAMES, (1, 2, 0))
    assert dict(labels.load_labels(str(path), str(tmp_path / "cache"))) == dict(enumerate(NAMES))
    assert not (tmp_path / "cache").exists()
