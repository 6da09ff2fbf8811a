"""Run a model: TensorFlow through tensorflow_hub (the reference), or LiteRT (the fast start).

Both load the same TF Hub handle. LiteRT needs a `.tflite` file: it is converted once
from the Hub model (which needs TensorFlow, that one time) and cached beside the TF Hub
cache, so later processes start without importing TensorFlow at all. A model that is a
`.tflite` file already (a path, or a URL downloaded once into the cache) always runs on
LiteRT.

The lean image has no TensorFlow: there, the TensorFlow runtime and a conversion answer
with a clear `ModelUnavailable` that points to the full image or to baking the model.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from . import cache, labels
from .config import ModelSpec
from .errors import BadModel, ModelUnavailable
from .redaction import redact

logger = logging.getLogger(__name__)

# (uint8 pixels [N,H,W,3], factor) -> float32 [N,C]: the model is fed pixels * factor,
# scaled by the runtime itself so that LiteRT gets them without float copies of the batch.
Predict = Callable[[np.ndarray, float], np.ndarray]

# What the `tensorflow` extra installs (requirements/runtime.txt); the lean image has none of it.
TENSORFLOW_MODULES = ("tensorflow", "tensorflow_hub", "tf_keras")


def load(spec: ModelSpec, runtime: str, cache_dir: str, litert_threads: int = 0) -> Predict:
    """A thread-safe predict function for `spec` on `runtime` (`.tflite` files: LiteRT,
    on `litert_threads` threads per call; 0: one per CPU)."""
    if effective(spec, runtime) == "tensorflow":
        return _tensorflow_predict(*_load_hub(spec))
    return _litert_predict(tflite_path(spec, cache_dir), spec, litert_threads or os.cpu_count() or 1)


def effective(spec: ModelSpec, runtime: str) -> str:
    """The runtime `spec` really runs on: the configured one, but `.tflite` files always on LiteRT."""
    return "tensorflow" if runtime == "tensorflow" and not is_tflite(spec.url) else "litert"


def is_tflite(url: str) -> bool:
    """A `.tflite` file (path or URL) rather than a TF Hub handle."""
    return urlsplit(url).path.endswith(".tflite")


def tflite_path(spec: ModelSpec, cache_dir: str) -> Path:
    """The `.tflite` for spec: a local file itself, else a cached download or conversion
    named like TF Hub's cache entries."""
    remote = spec.url.startswith(("http://", "https://"))
    if is_tflite(spec.url) and not remote:
        return Path(spec.url.removeprefix("file://"))
    path = cache.entry(cache_dir, spec.url, ".tflite")
    if not path.exists():
        if is_tflite(spec.url):
            logger.info("downloading %s to %s for the litert runtime", redact(spec.url), path)
            cache.write_atomically(path, labels.read_source(spec.url))
        else:
            _convert_to_tflite(spec, path)
    return path


# --- TensorFlow ---------------------------------------------------------------


def _import_tensorflow(name: str, needed_for: str):
    """`tensorflow` or `tensorflow_hub`, or a ModelUnavailable saying which image has them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO chatter, before import
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in TENSORFLOW_MODULES:
            raise
        raise ModelUnavailable(
            f"{needed_for} needs TensorFlow, which is not installed here (the lean image serves "
            "the .tflite models baked at build time only): use the full image "
            "(scripts/build-image IMAGE --target full), or bake the model into the lean image "
            "with the build args CLASSIFIER_MODEL_URL / CLASSIFIER_MODELS"
        ) from exc


def _load_hub(spec: ModelSpec):
    """A TF1 Hub module and its `default` signature, checked against what we feed it."""
    hub = _import_tensorflow("tensorflow_hub", f"CLASSIFIER_RUNTIME=tensorflow for model {spec.name!r}")
    module = hub.load(spec.url)
    signatures = getattr(module, "signatures", {})
    if "default" not in signatures:
        raise BadModel(f"model has no 'default' signature (has: {', '.join(signatures) or 'none'})")
    signature = signatures["default"]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    images = inputs.get("images")
    width, height = spec.input_size
    if images is None or images.dtype.name != "float32" or list(images.shape)[1:] != [height, width, 3]:
        raise BadModel(
            f"model input must be 'images' float32 [None,{height},{width},3], got {dict(inputs)}"
        )
    if "default" not in outputs or outputs["default"].shape.rank != 2:
        raise BadModel(f"model output must be 'default' [None,classes], got {dict(outputs)}")
    return module, signature


def _tensorflow_predict(module, signature) -> Predict:
    import tensorflow as tf  # present: _load_hub has loaded the module with it

    def predict(pixels: np.ndarray, factor: float) -> np.ndarray:
        return signature(images=tf.constant(pixels.astype(np.float32) * np.float32(factor)))["default"].numpy()

    predict.module = module  # the signature's variables live only as long as the module
    return predict


# --- LiteRT -------------------------------------------------------------------


def _convert_to_tflite(spec: ModelSpec, path: Path) -> None:
    """Convert the Hub model once; written atomically so concurrent processes agree."""
    tf = _import_tensorflow("tensorflow", f"converting model {spec.name!r} ({redact(spec.url)}) to .tflite")
    logger.info("converting %s to %s for the litert runtime", redact(spec.url), path)
    module, signature = _load_hub(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([signature], module)
    cache.write_atomically(path, converter.convert())


def _litert_predict(path: Path, spec: ModelSpec, threads: int) -> Predict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    width, height = spec.input_size
    shape = list(input_detail["shape_signature"])
    if shape[1:] != [height, width, 3] or len(output_detail["shape"]) != 2:
        raise BadModel(
            f"model input must be [N,{height},{width},3] and output [N,classes], "
            f"got {shape} -> {list(output_detail['shape'])}"
        )
    lock = threading.Lock()  # an Interpreter is not thread-safe
    batch_size = [0]
    index = input_detail["index"]

    def predict(pixels: np.ndarray, factor: float) -> np.ndarray:
        with lock:
            if pixels.shape[0] != batch_size[0]:
                interpreter.resize_tensor_input(index, list(pixels.shape))
                interpreter.allocate_tensors()
                batch_size[0] = pixels.shape[0]
            # Scaled straight into the interpreter's input buffer: a float batch is 12 bytes a
            # pixel, and each fresh copy costs page faults as well as the copy itself. The view
            # must be gone before invoke(), which refuses to run while one is alive.
            np.multiply(pixels, np.float32(factor), out=interpreter.tensor(index)(), casting="unsafe")
            interpreter.invoke()
            return interpreter.get_tensor(output_detail["index"]).copy()

    return predict
