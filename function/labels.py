"""Class names by id, read once from an `id,name` CSV whose rows are in any order."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import requests

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


def load_labels(source: str) -> Mapping[int, str]:
    return parse_labels(read_source(source))
