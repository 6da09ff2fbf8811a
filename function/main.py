"""functions-framework entry point: `classify` is the HTTP target.

Importing this module is cheap (no TensorFlow, no model): functions-framework and
gunicorn import it before serving, and /healthz must answer at once.
"""

from function import logs, memory, tracing
from function.api import HttpApp
from function.config import load_settings
from function.pipeline import Classifier

_settings = load_settings()
logs.configure(_settings)
tracing.configure(_settings)
memory.tune_malloc()
_app = HttpApp(Classifier(_settings))


def classify(request):
    """HTTP target: classify images, answer health checks (see README for the API)."""
    return _app(request)
