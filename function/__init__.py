"""Classify bird images with a TensorFlow Hub model: HTTP function, events and CLI."""

from .config import Settings, load_settings
from .errors import ClassifierError
from .pipeline import Classifier

__all__ = ["Classifier", "ClassifierError", "Settings", "load_settings"]
