"""The benchmark's inputs, made once and cached: a MobileNetV2 stand-in packed as a TF1
Hub module, its labels CSV and five photo-sized JPEGs."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

from fixtures.hub_module import write_labels
from fixtures.images import encode, photo_like

VERSION = 1  # bump when what `build` makes changes: the cache is keyed by it
NUM_CLASSES = 965
MODEL_NAME = "mobilenet_v2"

# (name, width, height, target bytes): from a phone snapshot to a full-size camera JPEG.
IMAGES = (
    ("small.jpg", 800, 600, 150_000),
    ("portrait.jpg", 1200, 1600, 450_000),
    ("medium.jpg", 2400, 1800, 900_000),
    ("large.jpg", 3200, 2400, 1_800_000),
    ("huge.jpg", 4000, 3000, 3_000_000),
)


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    width: int
    height: int
    quality: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class Corpus:
    model_archive: Path  # .tar.gz in TF Hub's TF1 module format
    labels_csv: Path
    images: tuple[Image, ...]


def load(cache: Path, log=print) -> Corpus:
    """The corpus under `cache`, built first if missing (needs TensorFlow, ~15 s once)."""
    root = Path(cache) / f"corpus-v{VERSION}"
    manifest = root / "manifest.json"
    if not manifest.exists():
        log(f"building benchmark fixtures in {root} (once) ...")
        _build(root)
    entries = json.loads(manifest.read_text())
    images = tuple(
        Image(e["name"], e["width"], e["height"], e["quality"], (root / e["name"]).read_bytes())
        for e in entries["images"]
    )
    return Corpus(root / f"{MODEL_NAME}.tar.gz", root / "labels.csv", images)


def label_names(count: int = NUM_CLASSES) -> list[str]:
    return [f"Species {index:03d}" for index in range(count)]


def _build(root: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO chatter
    from fixtures.models import build_hub_archive, mobilenet_v2

    root.mkdir(parents=True, exist_ok=True)
    build_hub_archive(mobilenet_v2(NUM_CLASSES), root, MODEL_NAME)
    order = list(range(NUM_CLASSES))
    random.Random(0).shuffle(order)  # rows out of id order, like the real CSV
    write_labels(root / "labels.csv", label_names(), order)
    entries = []
    for seed, (name, width, height, target) in enumerate(IMAGES):
        quality, data = _jpeg_near(photo_like(width, height, seed), target)
        (root / name).write_bytes(data)
        entries.append({"name": name, "width": width, "height": height, "quality": quality})
    # written last: its presence means the whole corpus is there
    (root / "manifest.json").write_text(json.dumps({"images": entries}, indent=1))


def _jpeg_near(image, target: int) -> tuple[int, bytes]:
    """The JPEG quality whose size is closest to `target` bytes (bisection on quality)."""
    low, high = 5, 95
    best = None
    while low <= high:
        quality = (low + high) // 2
        data = encode(image, "JPEG", quality=quality)
        if best is None or abs(len(data) - target) < abs(len(best[1]) - target):
            best = (quality, data)
        if len(data) < target:
            low = quality + 1
        else:
            high = quality - 1
    return best
