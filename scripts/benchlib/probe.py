"""Model-side measurements in a fresh process, one JSON object on stdout.

`infer`: import + model load through the function's own LazyModel, then batched
model calls alone, each timed in wall and process CPU time (the floor's inference and
the CPU bound's), and the scores of the five fixtures (for the runtime agreement
check). On litert, every `--threads` value gets its own interpreter and their calls
alternate, so that drift in the machine's speed falls on each alike.
`decode`: the decode levers on the fixtures (JPEG draft mode, resize filter,
simplejpeg when installed), each decode's process CPU time and each variant's top-3
on the litert model.

`python -m benchlib.probe infer|decode --cache DIR ...` with CLASSIFIER_* set as for the
function (scripts/ and the repository root on sys.path).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the function under test

from function import images, model  # noqa: E402
from function.config import default_model, load_settings  # noqa: E402

from .corpus import load as load_corpus  # noqa: E402

HEAVY_IMPORTS = {"tensorflow": "tensorflow_hub", "litert": "ai_edge_litert.interpreter"}
FILTERS = ("NEAREST", "BILINEAR", "BICUBIC", "LANCZOS")
TOP = 3
# Model calls timed together as one sample: a multi-threaded call's helper threads go on
# spinning for a while after it returns, CPU that lands in whatever is timed next; over a
# few calls that share is spread thin instead of deciding which single call looks cheapest.
CALLS_PER_SAMPLE = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchlib.probe")
    parser.add_argument("mode", choices=("infer", "decode"))
    parser.add_argument("--cache", required=True, type=Path, help="the corpus cache directory")
    parser.add_argument("--batches", default="5", help="comma-separated batch sizes to time")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", default="0",
                        help="litert: comma-separated LiteRT threads to compare (0: one per CPU); "
                             "the first gives the scores")
    parser.add_argument("--scores", type=Path, default=None, help="write the fixtures' scores here (.npy)")
    args = parser.parse_args(argv)
    corpus = load_corpus(args.cache)
    if args.mode == "infer":
        result = infer(corpus, [int(b) for b in args.batches.split(",")], args.repeat,
                       [int(t) for t in args.threads.split(",")], args.scores)
    else:
        result = decode_levers(corpus, args.repeat)
    print(json.dumps(result))
    return 0


def _load(threads: list[int]) -> tuple[dict[str, model.LoadedModel], dict]:
    """One loaded model per LiteRT thread count (tensorflow: one, its own threads), keyed
    by the threads it really uses; the import and the first load timed."""
    settings = load_settings()
    started = time.perf_counter()
    __import__(HEAVY_IMPORTS[settings.runtime])
    imported = time.perf_counter()
    loaded, load_s = {}, None
    for count in threads if settings.runtime == "litert" else [None]:
        lazy = model.LazyModel(default_model(settings), settings.runtime, settings.cache_dir,
                               settings.model_retry_seconds, count or 0)
        loaded["default" if count is None else str(count or os.cpu_count())] = lazy.get()
        load_s = load_s or time.perf_counter() - imported
    return loaded, {"runtime": settings.runtime, "import_s": imported - started, "load_s": load_s}


def _fixture_batch(corpus, spec) -> np.ndarray:
    settings = load_settings()
    return np.stack([images.decode(i.data, spec.input_size, settings.max_image_pixels,
                                   settings.allowed_formats) for i in corpus.images])


def infer(corpus, batches: list[int], repeat: int, threads: list[int], scores_path: Path | None) -> dict:
    """Per thread setting and batch size: wall and process CPU seconds per call, each
    sample the mean of CALLS_PER_SAMPLE calls in a row, the settings taking turns."""
    loaded, result = _load(threads)
    first = next(iter(loaded.values()))
    fixtures = _fixture_batch(corpus, first.spec)
    started = time.perf_counter()
    scores = first.probabilities(fixtures)
    result["first_inference_s"] = time.perf_counter() - started
    if scores_path is not None:
        np.save(scores_path, scores)
    result["settings"] = {name: {"wall_s": {}, "cpu_s": {}} for name in loaded}
    for size in batches:
        batch = np.resize(fixtures, (size, *fixtures.shape[1:]))  # the fixtures, repeated
        for one in loaded.values():
            one.probabilities(batch)  # warm: a new batch size re-allocates
        for _ in range(repeat):
            for name, one in loaded.items():
                wall, cpu = _timed(lambda: [one.probabilities(batch) for _ in range(CALLS_PER_SAMPLE)])
                result["settings"][name]["wall_s"].setdefault(str(size), []).append(wall / CALLS_PER_SAMPLE)
                result["settings"][name]["cpu_s"].setdefault(str(size), []).append(cpu / CALLS_PER_SAMPLE)
    return result


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU seconds of `fn` (CPU counts every thread of a model call)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


# --- decode levers -----------------------------------------------------------------


def decode_levers(corpus, repeat: int) -> dict:
    """Per variant: decode CPU ms per fixture (the least of `repeat`: its cost, not the
    machine's noise) and whether each fixture's top-3 (labels, in order) equals the
    shipped decoder's; also the max score change."""
    loaded = next(iter(_load([0])[0].values()))
    settings = load_settings()
    spec = loaded.spec

    def shipped(data: bytes) -> np.ndarray:
        return images.decode(data, spec.input_size, settings.max_image_pixels, settings.allowed_formats)

    variants: dict[str, Callable[[bytes], np.ndarray]] = {"shipped (draft, BILINEAR)": shipped}
    variants["no draft, BILINEAR"] = _patched(shipped, "PIL.JpegImagePlugin.JpegImageFile.draft",
                                              lambda self, mode, size: None)
    for name in FILTERS:
        if name != "BILINEAR":
            variants[f"draft, {name}"] = _with_filter(shipped, name)
    if importlib.util.find_spec("simplejpeg") is not None:
        variants["simplejpeg (scaled), BILINEAR"] = _simplejpeg(spec.input_size)
    reference = None
    report = {}
    for name, decode in variants.items():
        pixels = np.stack([decode(i.data) for i in corpus.images])  # also warms each variant up
        scores = loaded.probabilities(pixels)
        top = np.argsort(-scores, axis=1)[:, :TOP]
        if reference is None:
            reference = (scores, top)
        report[name] = {
            "cpu_ms": {},
            "top3_same": bool((top == reference[1]).all()),
            "max_score_change": float(np.abs(scores - reference[0]).max()),
        }
    # Timed round-robin, every variant once per round, so drift in the machine's speed
    # (other processes, frequency) falls on all of them alike.
    seconds = {(name, i.name): [] for name in variants for i in corpus.images}
    for _ in range(repeat):
        for name, decode in variants.items():
            for image in corpus.images:
                seconds[name, image.name].append(_timed(lambda: decode(image.data))[1])
    for (name, image_name), times in seconds.items():
        report[name]["cpu_ms"][image_name] = 1000 * min(times)
    return {"variants": report}


def _patched(fn: Callable, target: str, replacement: Callable) -> Callable:
    def call(data: bytes):
        with mock.patch(target, replacement):
            return fn(data)

    return call


def _with_filter(fn: Callable, name: str) -> Callable:
    """The shipped decoder with every resize using filter `name` instead."""
    from PIL import Image

    original = Image.Image.resize

    def resize(self, size, resample=None, *args, **kwargs):
        return original(self, size, getattr(Image.Resampling, name), *args, **kwargs)

    return _patched(fn, "PIL.Image.Image.resize", resize)


def _simplejpeg(size: tuple[int, int]) -> Callable:
    """libjpeg-turbo through simplejpeg, scaled at decode like draft mode, then the same resize."""
    import simplejpeg
    from PIL import Image

    def decode(data: bytes) -> np.ndarray:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=size[0], min_height=size[1])
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))

    return decode


if __name__ == "__main__":
    sys.exit(main())
