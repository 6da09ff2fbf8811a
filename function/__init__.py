"""Classify bird images with a TensorFlow Hub model: HTTP function, events and CLI."""

from .config import Settings, load_settings
from .errors import ClassifierError

__all__ = ["Classifier", "ClassifierError", "Settings", "load_settings"]


def __getattr__(name: str):
    """`Classifier` on first use: importing the package (a server's master preparing the
    metrics directory, see metrics_dir.py) must not import the pipeline, and with it
    prometheus_client, before it is time."""
    if name == "Classifier":
        from .pipeline import Classifier

        return Classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
