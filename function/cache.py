"""The model cache (TFHUB_CACHE_DIR): what a URL became, stored under a name made from it.

Beside TF Hub's own downloads, a converted or downloaded `.tflite` and a downloaded label
map are kept here, each named like TF Hub's entries (the SHA-1 of its URL), so a later
process (or an image that baked them) finds them without the internet.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def entry(cache_dir: str, url: str, suffix: str) -> Path:
    """Where `url`'s `suffix` entry (".tflite", ".labels.csv") lives in the cache."""
    return Path(cache_dir) / f"{hashlib.sha1(url.encode('utf8')).hexdigest()}{suffix}"


def write_atomically(path: Path, content: bytes) -> None:
    """Write via a temporary file and a rename, so concurrent processes never read half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(tmp, path)
