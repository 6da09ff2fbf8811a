"""What the pipeline classifies: a name and a way to get the image's bytes.

Kept apart from the pipeline (numpy, Pillow, the runtime) so that front doors can list
and start fetching their images before any of that is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

Loader = Callable[[], bytes]  # returns an image's bytes or raises ItemError


@dataclasses.dataclass(frozen=True)
class Source:
    """One image to classify: `name` is what the caller called it (URL, path, filename)."""

    name: str
    load: Loader
