"""Model-side measurements in a fresh process, one JSON object on stdout.

`infer`: import + model load through the function's own LazyModel, then batched
model calls alone (the floor's inference and the inference-only throughput bound),
and the scores of the five fixtures (for the runtime agreement check).
`decode`: the decode levers on the fixtures (JPEG draft mode, resize filter,
simplejpeg when installed), each with its top-3 on the litert model.

`python -m benchlib.probe infer|decode --cache DIR ...` with CLASSIFIER_* set as for the
function (scripts/ and the repository root on sys.path).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterator
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchlib.probe")
    parser.add_argument("mode", choices=("infer", "decode"))
    parser.add_argument("--cache", required=True, type=Path, help="the corpus cache directory")
    parser.add_argument("--batches", default="5", help="comma-separated batch sizes to time")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--litert-threads", type=int, default=None,
                        help="LiteRT num_threads instead of os.cpu_count() (a lever)")
    parser.add_argument("--scores", type=Path, default=None, help="write the fixtures' scores here (.npy)")
    args = parser.parse_args(argv)
    corpus = load_corpus(args.cache)
    if args.mode == "infer":
        result = infer(corpus, [int(b) for b in args.batches.split(",")], args.repeat,
                       args.litert_threads, args.scores)
    else:
        result = decode_levers(corpus, args.repeat)
    print(json.dumps(result))
    return 0


def _load(threads: int | None) -> tuple[model.LoadedModel, dict]:
    settings = load_settings()
    started = time.perf_counter()
    __import__(HEAVY_IMPORTS[settings.runtime])
    imported = time.perf_counter()
    lazy = model.LazyModel(default_model(settings), settings.runtime, settings.cache_dir,
                           settings.model_retry_seconds)
    with _cpu_count(threads):
        loaded = lazy.get()
    loaded_at = time.perf_counter()
    return loaded, {"runtime": settings.runtime, "import_s": imported - started, "load_s": loaded_at - imported}


@contextlib.contextmanager
def _cpu_count(threads: int | None) -> Iterator[None]:
    """The litert runtime sizes its interpreter by os.cpu_count(); pretend another count."""
    if threads is None:
        yield
    else:
        with mock.patch("os.cpu_count", return_value=threads):
            yield


def _fixture_batch(corpus, spec) -> np.ndarray:
    settings = load_settings()
    return np.stack([images.decode(i.data, spec.input_size, settings.max_image_pixels,
                                   settings.allowed_formats) for i in corpus.images])


def infer(corpus, batches: list[int], repeat: int, threads: int | None, scores_path: Path | None) -> dict:
    loaded, result = _load(threads)
    fixtures = _fixture_batch(corpus, loaded.spec)
    started = time.perf_counter()
    scores = loaded.probabilities(fixtures)
    result["first_inference_s"] = time.perf_counter() - started
    if scores_path is not None:
        np.save(scores_path, scores)
    result["litert_threads"] = threads
    result["inference_s"], result["cpu_ms_per_image"] = {}, {}
    for size in batches:
        batch = np.resize(fixtures, (size, *fixtures.shape[1:]))  # the fixtures, repeated
        loaded.probabilities(batch)  # warm: a new batch size re-allocates
        cpu_started = time.process_time()
        result["inference_s"][str(size)] = _times(lambda: loaded.probabilities(batch), repeat)
        result["cpu_ms_per_image"][str(size)] = 1000 * (time.process_time() - cpu_started) / (repeat * size)
    return result


def _times(fn: Callable[[], object], repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


# --- decode levers -----------------------------------------------------------------


def decode_levers(corpus, repeat: int) -> dict:
    """Per variant: decode ms per fixture (the least of `repeat`: CPU cost, not the
    machine's noise) and whether each fixture's
    top-3 (labels, in order) equals the shipped decoder's; also the max score change."""
    loaded, _ = _load(None)
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
            "decode_ms": {},
            "top3_same": bool((top == reference[1]).all()),
            "max_score_change": float(np.abs(scores - reference[0]).max()),
        }
    # Timed round-robin, every variant once per round, so drift in the machine's speed
    # (other processes, frequency) falls on all of them alike.
    seconds = {(name, i.name): [] for name in variants for i in corpus.images}
    for _ in range(repeat):
        for name, decode in variants.items():
            for image in corpus.images:
                seconds[name, image.name] += _times(lambda: decode(image.data), 1)
    for (name, image_name), times in seconds.items():
        report[name]["decode_ms"][image_name] = 1000 * min(times)
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
