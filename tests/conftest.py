"""Shared fixtures: an isolated environment, the stand-in model served from loopback.

The stand-in is a TF1 Hub module in the real model's format (empty tag set, `default`
signature, input `images`, output `default`) packed as .tar.gz and loaded through the
real tensorflow_hub download path. It is built once per session: TensorFlow is
imported in this process once, never in many subprocesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from fixtures import images as test_images
from fixtures.flowers import FLOWER_LABELS, build_tflite, flower_logits
from fixtures.hub_module import write_labels
from fixtures.models import COLOUR_LABELS, LABEL_ROW_ORDER, build_hub_archive, colour_model
from fixtures.server import LoopbackServer

ROOT = pathlib.Path(__file__).resolve().parent.parent

# google-auth and botocore read their credentials from the environment and the home
# directory, and look for metadata servers: no test may use the developer's credentials
# or reach a real metadata server. The variables they read are dropped, and these point
# their searches at nothing (tests that want credentials set their own).
CLOUD_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "CLOUDSDK_")
CLOUD_ISOLATION = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "CLOUDSDK_CONFIG": os.devnull,  # no gcloud application_default_credentials.json
    "NO_GCE_CHECK": "true",  # google-auth does not probe for a metadata server
    "GCE_METADATA_IP": "127.0.0.1:9",  # and would find none if it did (nothing listens there)
}


def isolated_environ(environ) -> dict[str, str]:
    """`environ` without CLASSIFIER_*, tracing or metrics settings or cloud credentials, with CLOUD_ISOLATION."""
    kept = {k: v for k, v in environ.items()
            if not k.startswith(("CLASSIFIER_", "OTEL_", *CLOUD_PREFIXES))
            and k not in ("NO_GCE_CHECK", "PROMETHEUS_MULTIPROC_DIR")}
    return {**kept, **CLOUD_ISOLATION}


@dataclasses.dataclass(frozen=True)
class StandIn:
    server: LoopbackServer
    model_url: str  # loopback URL of the .tar.gz, as TF Hub serves modules
    labels_url: str
    module_dir: pathlib.Path  # the same module, unpacked, for "local path" cases
    labels_path: pathlib.Path
    cache_dir: pathlib.Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a function that uses the stand-in and may fetch from loopback."""
        return {
            "CLASSIFIER_MODEL_URL": self.model_url,
            "CLASSIFIER_LABELS_URL": self.labels_url,
            "CLASSIFIER_ALLOW_PRIVATE_URLS": "1",
            "TFHUB_CACHE_DIR": str(self.cache_dir),
            **extra,
        }

    def image_url(self, name: str, colour=(255, 0, 0), format="PNG", **route) -> str:
        body = test_images.encode(test_images.solid(colour), format)
        return self.server.add(f"/images/{name}", body, content_type=f"image/{format.lower()}", **route)


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory) -> StandIn:
    work = tmp_path_factory.mktemp("standin")
    archive = build_hub_archive(colour_model, work, "colour")
    labels = write_labels(work / "labels.csv", COLOUR_LABELS, LABEL_ROW_ORDER)
    with LoopbackServer() as server:
        server.add("/models/colour.tar.gz", archive.read_bytes(), content_type="application/x-gzip")
        server.add("/labels.csv", labels.read_bytes(), content_type="text/csv")
        yield StandIn(
            server=server,
            model_url=server.url("/models/colour.tar.gz"),
            labels_url=server.url("/labels.csv"),
            module_dir=work / "colour",
            labels_path=labels,
            cache_dir=tmp_path_factory.mktemp("tfhub-cache"),
        )


@dataclasses.dataclass(frozen=True)
class Flowers:
    url: str  # loopback URL of flowers.tflite
    labels_url: str
    path: pathlib.Path  # the same .tflite, local

    def registry(self, **entry) -> str:
        """CLASSIFIER_MODELS with this model as `flowers` (fields overridable)."""
        spec = {"url": self.url, "labels": self.labels_url, "input_size": [180, 180],
                "input_range": [0, 255], "output": "logits", **entry}
        return json.dumps({"flowers": spec})


@pytest.fixture(scope="session")
def flowers(stand_in, tmp_path_factory) -> Flowers:
    """The TFLite flower stand-in (180x180, [0,255], logits), served beside the birds."""
    work = tmp_path_factory.mktemp("flowers")
    model = build_tflite(flower_logits, work / "flowers.tflite")
    labels = write_labels(work / "flowers.csv", FLOWER_LABELS, (4, 2, 0, 3, 1))
    return Flowers(
        url=stand_in.server.add("/models/flowers.tflite", model.read_bytes()),
        labels_url=stand_in.server.add("/flowers.csv", labels.read_bytes(), content_type="text/csv"),
        path=model,
    )


@pytest.fixture(autouse=True)
def isolate_environment(monkeypatch, tmp_path):
    """No test sees the developer's CLASSIFIER_* settings, cloud credentials, tracing,
    metrics or Cloud Logging settings, or shares a model cache by accident."""
    isolated = isolated_environ(os.environ)
    for key in list(os.environ):
        if key not in isolated or key in ("TFHUB_CACHE_DIR", "PORT"):
            monkeypatch.delenv(key)
    for key, value in CLOUD_ISOLATION.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub-cache"))


@pytest.fixture
def use_stand_in(monkeypatch, stand_in) -> StandIn:
    """Point this process's settings at the stand-in (and allow loopback fetches)."""
    for key, value in stand_in.env().items():
        monkeypatch.setenv(key, value)
    return stand_in


def function_client():
    """The real HTTP target through functions-framework's own Flask app, set up from this
    process's environment as it is now (main.py reads it on import)."""
    from functions_framework import create_app

    app = create_app(target="classify", source=str(ROOT / "function" / "main.py"))
    return app.test_client()


@pytest.fixture
def app_client(use_stand_in):
    """The real HTTP target through functions-framework's own Flask app."""
    return function_client()


def run_loadtest(mode: str, stand_in: StandIn, out: pathlib.Path,
                 timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """`scripts/loadtest MODE --quick --json-out OUT` on the stand-in, which must pass: the
    finished process and the results it wrote. The model is converted here first, where
    TensorFlow is loaded already: the script and its instance start without it."""
    from function import runtime
    from function.config import ModelSpec

    runtime.tflite_path(ModelSpec("birds", stand_in.model_url, stand_in.labels_url), str(stand_in.cache_dir))
    done = subprocess.run(
        [sys.executable, "scripts/loadtest", mode, "--quick", "--json-out", str(out), "--model-url",
         stand_in.model_url, "--labels-url", stand_in.labels_url, "--cache-dir", str(stand_in.cache_dir)],
        cwd=ROOT, env=python_env({}), capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done, json.loads(out.read_text())


def python_env(extra: dict[str, str]) -> dict[str, str]:
    """Environment for a subprocess running this venv's Python and the project."""
    env = isolated_environ(os.environ)
    env.update(extra)
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")])
    return env
