"""The lean image, built for real and run as its own user from its own config (slow).

`scripts/image/debian-base` makes the base (Debian's Python 3.11, kept in buildah's store
across runs), `scripts/build-image` builds the default target with the stand-in models,
served from loopback, baked in (the birds as CLASSIFIER_MODEL_URL, the flowers .tflite in
CLASSIFIER_MODELS); then the image's root filesystem runs its own CMD as its
own USER with its own ENV and WORKDIR (`imagelib.container`: read-only root, a tmpfs at
/tmp, as knative/service.yaml runs it). Needs root, buildah and debootstrap (README).
The first build on a machine downloads the locks' wheels (a few minutes); later ones reuse
buildah's layers and redo only the model and the final stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from benchlib import corpus
from conftest import ROOT
from fixtures import images as test_images
from imagelib import container, report, store

pytestmark = pytest.mark.slow

BASE = ROOT / "scripts" / "image" / "debian-base"
BUILD = ROOT / "scripts" / "build-image"
TENSORFLOW = ("tensorflow", "tensorflow_hub", "tf_keras")
# Debian's bundle of this machine's trusted CAs: pip in the build trusts it (PIP_CERT) when
# the environment names no other, so a TLS-inspecting proxy in front of PyPI is no obstacle.
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.fixture(scope="module")
def lean(stand_in, flowers, tmp_path_factory):
    """The built lean image: (name, config, mounted root filesystem); removed afterwards."""
    base = subprocess.run([BASE], capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr
    image = f"localhost/bird-classifier-test:{uuid.uuid4().hex[:12]}"
    env = dict(os.environ)
    if "PIP_CERT" not in env and SYSTEM_CA_BUNDLE.is_file():
        env["PIP_CERT"] = str(SYSTEM_CA_BUNDLE)
    build = subprocess.run(
        [BUILD, image, "--build-arg", f"PYTHON_IMAGE={base.stdout.strip()}",
         "--build-arg", f"CLASSIFIER_MODEL_URL={stand_in.model_url}",
         "--build-arg", f"CLASSIFIER_LABELS_URL={stand_in.labels_url}",
         "--build-arg", f"CLASSIFIER_MODELS={flowers.registry()}"],
        env=env, capture_output=True, text=True, timeout=1800)
    (tmp_path_factory.mktemp("build") / "build.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    try:
        with store.mounted(image) as rootfs:
            yield image, store.inspect(image), rootfs
    finally:
        subprocess.run(["buildah", "rmi", image], capture_output=True)


def test_the_build_args_are_the_images_defaults_and_cmd_is_the_entry(lean, stand_in, flowers):
    _, config, _ = lean
    assert config.env["CLASSIFIER_MODEL_URL"] == stand_in.model_url
    assert config.env["CLASSIFIER_LABELS_URL"] == stand_in.labels_url
    assert config.env["CLASSIFIER_MODELS"] == flowers.registry()
    assert config.entrypoint == () and config.cmd, "CMD, not ENTRYPOINT: `docker run IMAGE classify ...` works"


def test_every_model_is_baked_as_tflite_with_its_labels_and_nothing_else(lean):
    _, config, rootfs = lean
    cache = rootfs / config.env["TFHUB_CACHE_DIR"].lstrip("/")
    kinds = sorted(p.name.split(".", 1)[1] for p in cache.iterdir())
    assert kinds == ["labels.csv"] * 2 + ["tflite"] * 2, "birds and flowers, each with its labels; no TF Hub download"


def test_no_tensorflow_is_importable_in_the_lean_image(lean):
    _, config, rootfs = lean
    modules = (*TENSORFLOW, "ai_edge_litert", "function")  # the last two must be there: a working probe
    probe = f"import importlib.util as u; print(*[u.find_spec(m) is not None for m in {modules!r}])"
    ran = container.Container(rootfs, config).run(["python", "-c", probe])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["False"] * len(TENSORFLOW) + ["True", "True"]


def test_the_image_serves_as_its_non_root_user_and_classifies_with_the_baked_models(lean, stand_in, tmp_path):
    _, config, rootfs = lean
    image = container.Container(rootfs, config, {"CLASSIFIER_ALLOW_PRIVATE_URLS": "1"})
    uid, _ = image.ids
    assert uid != 0
    models = ("/models/colour.tar.gz", "/models/flowers.tflite", "/labels.csv", "/flowers.csv")
    downloads = [stand_in.server.hits.get(path, 0) for path in models]
    red, blue = stand_in.image_url("image-red.png", (240, 10, 10)), stand_in.image_url("image-blue.png", (10, 20, 240))
    with image.serve(tmp_path / "server.log") as server:
        assert requests.get(server.base + "/healthz", timeout=5).json() == {"status": "ok"}
        answer = requests.post(server.base + "/", json={"urls": [red]}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["predictions"][0]["label"] == "Erithacus rubecula"
        flower = requests.post(server.base + "/", json={"urls": [red], "model": "flowers"}, timeout=60)
        assert flower.json()["results"][0]["predictions"][0]["label"] == "roses"

        def blue_top() -> str:
            response = requests.post(server.base + "/", json={"urls": [blue, red]}, timeout=60)
            return response.json()["results"][0]["predictions"][0]["label"]

        with ThreadPoolExecutor(8) as pool:  # a small burst at containerConcurrency
            assert set(pool.map(lambda _: blue_top(), range(16))) == {"Cyanistes caeruleus"}
        assert server.uids() == {uid}, "every uid of every process is the image's user"
        peak_mb = server.memory_mb()
    assert [stand_in.server.hits.get(path, 0) for path in models] == downloads, "models and labels are baked"
    service = yaml.safe_load((ROOT / "knative" / "service.yaml").read_text())
    request = service["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    assert 0 < peak_mb < _mebibytes(request), f"peak {peak_mb:.0f} MB against the pod's request {request}"


def test_the_lean_image_answers_the_tensorflow_runtime_with_a_clear_error(lean, stand_in, tmp_path):
    _, config, rootfs = lean
    image = container.Container(rootfs, config, {"CLASSIFIER_ALLOW_PRIVATE_URLS": "1",
                                                  "CLASSIFIER_RUNTIME": "tensorflow"})
    with image.serve(tmp_path / "server.log") as server:
        answer = requests.post(server.base + "/", json={"urls": [stand_in.image_url("image-tf.png")]}, timeout=60)
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "model_unavailable" and "use the full image" in error["message"]
        assert requests.get(server.base + "/healthz", timeout=5).status_code == 200, "still serving"


def test_image_report_measures_the_built_image(lean, tmp_path, capsys):
    """`scripts/image-report IMAGE --quick`, in this process (its sweep's JPEGs come from a small
    corpus written here, so nothing imports TensorFlow to build the bench's)."""
    image, config, _ = lean
    cache = tmp_path / "corpus" / f"corpus-v{corpus.VERSION}"
    cache.mkdir(parents=True)
    entries = []
    for index, colour in enumerate(((230, 20, 30), (20, 40, 220), (20, 200, 40))):
        data = test_images.encode(test_images.solid(colour).resize((640, 480)), "JPEG")
        (cache / f"{index}.jpg").write_bytes(data)
        entries.append({"name": f"{index}.jpg", "width": 640, "height": 480, "quality": 75})
    (cache / f"{corpus.MODEL_NAME}.tar.gz").write_bytes(b"unused: the image has its model baked")
    (cache / "labels.csv").write_text("id,name\n")
    (cache / "manifest.json").write_text(json.dumps({"images": entries}))
    out = tmp_path / "report.json"
    assert report.main([image, "--quick", "--corpus-cache", str(tmp_path / "corpus"), "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert 0 < result["compressed_bytes"] < result["unpacked_bytes"] == sum(config.layer_bytes)
    assert result["tensorflow"] == dict.fromkeys(TENSORFLOW, False)
    names = {p["name"].lower().replace("_", "-") for p in result["packages"] if p["kind"] == "pip"}
    assert "ai-edge-litert" in names and not names & {"tensorflow-cpu", "tf-keras", "tensorflow-hub"}
    (start,) = result["starts"]
    assert 0 < start["healthz_s"] < start["first_answer_s"]
    assert result["sweep"]["passed"] and result["image_peak_mb"] > 0
    assert result["uids"] == [container.Container(lean[2], config).ids[0]]
    assert f"{result['compressed_bytes'] / 1e6:.0f} MB compressed" in printed and "largest packages" in printed
