"""Class names by id, read once from an `id,name` CSV whose rows are in any order.

A label map named by URL is kept in the model cache like the model itself: an image that
baked its model (`classify --preload`) then starts without the internet too.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import requests

from . import cache

logger = logging.getLogger(__name__)

LABELS_TIMEOUT = (5.0, 30.0)  # connect, read: an operator's URL, not a stranger's


def read_source(source: str) -> bytes:
    """Bytes of a URL (http/https) or of a local path."""
    if source.startswith(("http://", "https://")):
        response = requests.get(source, timeout=LABELS_TIMEOUT)
        response.raise_for_status()
        return response.content
    return Path(source.removeprefix("file://")).read_bytes()


def parse_labels(data: bytes) -> Mapping[int, str]:
    """id -> name; the real bird CSV starts with `964,background`, so never trust row order."""
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    if reader.fieldnames is None or not {"id", "name"} <= {f.strip() for f in reader.fieldnames}:
        raise ValueError("labels CSV must have an 'id,name' header")
    labels: dict[int, str] = {}
    for line, row in enumerate(reader, start=2):
        try:
            key = int(row["id"])
        except (TypeError, ValueError):
            raise ValueError(f"labels CSV line {line}: id {row['id']!r} is not an integer") from None
        if key in labels:
            raise ValueError(f"labels CSV line {line}: id {key} appears twice")
        labels[key] = (row["name"] or "").strip()
    if not labels:
        raise ValueError("labels CSV has no rows")
    return MappingProxyType(labels)


def load_labels(source: str, cache_dir: str) -> Mapping[int, str]:
    """The label map of `source`: a local file as it is; a URL's from the cache, else
    downloaded, checked and cached (where the cache is writable: a read-only image that
    did not bake it reads it on every start instead)."""
    if not source.startswith(("http://", "https://")):
        return parse_labels(read_source(source))
    path = cache.entry(cache_dir, source, ".labels.csv")
    if path.exists():
        return parse_labels(path.read_bytes())
    data = read_source(source)
    labels = parse_labels(data)
    try:
        cache.write_atomically(path, data)
    except OSError as exc:
        logger.warning("cannot cache the labels in %s: %s", path.parent, exc.strerror or exc)
    return labels
