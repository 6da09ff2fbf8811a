"""The options a caller sets on a classification, checked alike by every front door."""

from __future__ import annotations

from typing import Any

from .errors import BadRequest

MAX_TOP_K = 20


def check_top_k(value: Any) -> int:
    """`value` if it is an int from 1 to MAX_TOP_K, else BadRequest (a ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return value
