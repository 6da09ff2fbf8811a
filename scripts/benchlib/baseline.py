"""The original script, the baseline to beat: every URL in turn pays for everything again.

For each URL: load the TF Hub model (`hub.KerasLayer`), download and parse the labels
CSV, download the image with urllib, decode it (Pillow here instead of OpenCV: RGB,
224x224, /255), run the model on a batch of one, sort all scores, print the top 3.
Only the output format differs (one JSON line per image, so the benchmark can compare
labels) and each phase is timed (a last `{"phases": ...}` line) for the bottleneck
analysis; neither changes what the original did.

`python -m benchlib.baseline MODEL_URL LABELS_URL IMAGE_URL...` (scripts/ on sys.path).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import csv  # noqa: E402 - the imports are a timed phase of the original
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402
from collections import defaultdict  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow_hub as hub  # noqa: E402 - imports TensorFlow
from PIL import Image  # noqa: E402

PHASES: dict[str, float] = defaultdict(float)
PHASES["import"] = time.perf_counter() - _STARTED


class _Phase:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        PHASES[self.name] += time.perf_counter() - self.started


def classify(url: str, model_url: str, labels_url: str) -> dict:
    with _Phase("model_load"):
        model = hub.KerasLayer(model_url, signature="default", signature_outputs_as_dict=True)
    with _Phase("labels"):
        with urllib.request.urlopen(labels_url) as response:
            rows = csv.DictReader(io.StringIO(response.read().decode("utf-8")))
            labels = {int(row["id"]): row["name"] for row in rows}
    with _Phase("download"):
        with urllib.request.urlopen(url) as response:
            data = response.read()
    with _Phase("decode"):
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        batch = np.asarray(image, dtype=np.float32)[np.newaxis] / 255.0
    with _Phase("inference"):
        scores = model(batch)["default"].numpy()[0]
    with _Phase("sort"):
        order = np.argsort(scores)[::-1]
    return {"url": url, "predictions": [{"label": labels[int(i)], "score": round(float(scores[i]), 4)}
                                        for i in order[:3]]}


def main(argv: list[str]) -> int:
    model_url, labels_url, *urls = argv
    for url in urls:
        print(json.dumps(classify(url, model_url, labels_url)), flush=True)
    PHASES["total"] = time.perf_counter() - _STARTED
    print(json.dumps({"phases": dict(PHASES)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
