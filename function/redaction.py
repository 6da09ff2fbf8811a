"""Keep secrets out of logs, answers and error messages: URLs shown as scheme, host and path."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def redact(url: str) -> str:
    """scheme://host/path only: query strings and credentials can carry secrets."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if not parts.scheme:  # a local path
        return parts.path
    return f"{parts.scheme}://{host}{port}{parts.path}"


_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def scrub(text: str) -> str:
    """`text` with every URL in it redacted: libraries quote whole URLs in their errors."""
    return _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)
