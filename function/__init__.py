"""Classify bird images with a TensorFlow Hub model: HTTP function, events and CLI."""

from .config import Settings, load_settings
from .errors import ClassifierError

__all__ = ["Classifier", "ClassifierError", "Settings", "load_settings"]


def __getattr__(name: str):
    """`Classifier` on first use: it brings numpy, Pillow, the runtime and prometheus_client,
    which a server's master must not import before it prepares the metrics directory
    (metrics_dir.py), nor the command line before its first downloads are under way."""
    if name == "Classifier":
        from .pipeline import Classifier

        return Classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
