"""knative/*.yaml and func.yaml: upstream schemas, Knative's rules, agreement with the image.

The schemas are the project's own copy of the upstream files, knative/schemas/ (see its
README); its absence fails the tests: without it nothing here would be checked.
"""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from function.config import load_settings
from imagelib import dockerfile

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "knative" / "schemas"
VALIDATE = ROOT / "scripts" / "validate-manifests"
AUTOSCALING = "autoscaling.knative.dev/"

# Every manifest and the objects it declares, in order.
MANIFESTS = {
    "service.yaml": [("serving.knative.dev/v1", "Service", "bird-classifier")],
    "broker.yaml": [("eventing.knative.dev/v1", "Broker", "default")],
    "trigger-storage.yaml": [
        ("eventing.knative.dev/v1", "Trigger", "bird-classifier-gcs-finalized"),
        ("eventing.knative.dev/v1", "Trigger", "bird-classifier-s3-put"),
        ("eventing.knative.dev/v1", "Trigger", "bird-classifier-s3-post"),
        ("eventing.knative.dev/v1", "Trigger", "bird-classifier-s3-copy"),
        ("eventing.knative.dev/v1", "Trigger", "bird-classifier-s3-multipart"),
    ],
    "source-minio.yaml": [
        ("serving.knative.dev/v1", "Service", "minio-s3-adapter"),
        ("sources.knative.dev/v1", "SinkBinding", "minio-s3-adapter"),
    ],
    "trigger-classified.yaml": [
        ("eventing.knative.dev/v1", "Trigger", "bird-classifier-classified"),
        ("serving.knative.dev/v1", "Service", "event-display"),
    ],
}


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / "knative" / name).read_text()) if doc]


def image_env() -> dict[str, str]:
    """ENV of the image's default target: the server settings the manifests must match."""
    return dockerfile.parse().env("lean")


@pytest.fixture(scope="module")
def service() -> dict:
    return load("service.yaml")[0]


@pytest.fixture(scope="module")
def revision(service) -> dict:
    return service["spec"]["template"]


@pytest.fixture(scope="module")
def container(revision) -> dict:
    return revision["spec"]["containers"][0]


def validate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, VALIDATE, CRDS, *map(str, args)], capture_output=True, text=True)


def test_schema_folder_is_present():
    assert (CRDS / "serving-service.yaml").is_file(), (
        f"Knative schemas not found at {CRDS}: see knative/schemas/README.md")


def test_knative_folder_holds_exactly_the_known_manifests():
    assert sorted(p.name for p in (ROOT / "knative").glob("*") if p.is_file()) == sorted(MANIFESTS)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_declares_expected_objects(name):
    declared = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in load(name)]
    assert declared == MANIFESTS[name]


def test_validator_passes_on_the_repository_with_its_own_schema_copy():
    ran = subprocess.run([sys.executable, VALIDATE], capture_output=True, text=True)  # default: knative/schemas
    assert ran.returncode == 0, ran.stdout + ran.stderr
    documents = sum(len(objects) for objects in MANIFESTS.values()) + 1  # + func.yaml
    assert ran.stdout.count("\nok   ") + ran.stdout.startswith("ok   ") == documents
    assert ran.stdout.endswith(f"{documents} of {documents} documents valid\n")


def test_schema_copy_is_exactly_what_its_readme_lists():
    """Every schema file has its upstream source and commit in the README, and the
    refresh script reads the same table."""
    refresh = runpy.run_path(str(ROOT / "scripts" / "refresh-knative-schemas"))
    listed = [row[0] for row in refresh["table"]((CRDS / "README.md").read_text())]
    assert sorted(listed) == sorted(p.name for p in CRDS.iterdir() if p.name not in ("README.md", "LICENSE"))
    assert "Apache License" in (CRDS / "LICENSE").read_text()


def test_validator_needs_the_schema_folder(tmp_path):
    ran = subprocess.run([sys.executable, VALIDATE, tmp_path], capture_output=True, text=True)
    assert ran.returncode == 2 and "not a schema folder" in ran.stderr


def _container(docs):
    return docs[0]["spec"]["template"]["spec"]["containers"][0]


def _annotations(docs):
    return docs[0]["spec"]["template"]["metadata"]["annotations"]


def _move_concurrency_into_container(docs):
    _container(docs)["containerConcurrency"] = docs[0]["spec"]["template"]["spec"].pop("containerConcurrency")


def _drop_readiness_probe(docs):
    del _container(docs)["readinessProbe"]


def _misspell_annotation(docs):
    _annotations(docs)[AUTOSCALING + "minScale"] = _annotations(docs).pop(AUTOSCALING + "min-scale")


def _unquote_annotation(docs):
    _annotations(docs)[AUTOSCALING + "max-scale"] = 10


def _target_above_concurrency(docs):
    docs[0]["spec"]["template"]["spec"]["containerConcurrency"] = 4  # whatever the measured value is
    _annotations(docs)[AUTOSCALING + "target"] = "8"


def _min_above_max(docs):
    _annotations(docs)[AUTOSCALING + "min-scale"] = "20"


def _spell_out_duration(docs):
    _annotations(docs)[AUTOSCALING + "scale-to-zero-pod-retention-period"] = "5 minutes"


def _overshoot_utilization(docs):
    _annotations(docs)[AUTOSCALING + "target-utilization-percentage"] = "150"


def _probe_other_port(docs):
    _container(docs)["startupProbe"]["httpGet"]["port"] = 9090


def _set_port_env(docs):
    _container(docs)["env"].append({"name": "PORT", "value": "9090"})


def _annotate_service_not_revision(docs):
    docs[0]["metadata"]["annotations"] = {AUTOSCALING + "min-scale": "1"}


def _pin_namespace(docs):
    docs[0]["metadata"]["namespace"] = "prod"


def _add_configmap(docs):
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra"}, "data": {}})


def _old_api_version(docs):
    docs[0]["apiVersion"] = "serving.knative.dev/v1beta1"


def _pod_level_only_security_field(docs):
    _container(docs)["securityContext"]["fsGroup"] = 10001  # a PodSecurityContext field


def _mount_on_dev(docs):
    _container(docs)["volumeMounts"][0]["mountPath"] = "/dev"


def _unmounted_volume(docs):
    docs[0]["spec"]["template"]["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}})


def _drop_run_as_non_root(docs):
    del _container(docs)["securityContext"]["runAsNonRoot"]


def _misspell_trigger_subscriber(docs):
    docs[0]["spec"]["subscriber"]["refs"] = docs[0]["spec"]["subscriber"].pop("ref")


BREAKAGES = [
    ("service.yaml", _move_concurrency_into_container,
     "spec.template.spec.containers[0].containerConcurrency: unknown field"),
    ("service.yaml", _move_concurrency_into_container,
     "spec.template.spec.containerConcurrency: required for bird-classifier"),
    ("service.yaml", _drop_readiness_probe, "readinessProbe.httpGet.path: required"),
    ("service.yaml", _misspell_annotation, "minScale: not a Knative autoscaling annotation"),
    ("service.yaml", _unquote_annotation, "10 is not of type 'string'"),
    ("service.yaml", _target_above_concurrency, "autoscaling target 8 exceeds containerConcurrency 4"),
    ("service.yaml", _min_above_max, "min-scale 20 is above max-scale 10"),
    ("service.yaml", _spell_out_duration, "must be a Go duration"),
    ("service.yaml", _overshoot_utilization, "'150' must be a number from 1 to 100"),
    ("service.yaml", _probe_other_port, "startupProbe.httpGet.port: 9090 must be the container port 8080"),
    ("service.yaml", _set_port_env, "PORT is reserved"),
    ("service.yaml", _annotate_service_not_revision, "belong on spec.template.metadata"),
    ("service.yaml", _pin_namespace, "metadata.namespace: leave it out"),
    ("service.yaml", _old_api_version, "no CRD for serving.knative.dev/v1beta1 Service"),
    ("service.yaml", _pod_level_only_security_field, "securityContext.fsGroup: unknown field"),
    ("service.yaml", _mount_on_dev, "mountPath '/dev' is reserved by Knative"),
    ("service.yaml", _unmounted_volume, "'scratch' is not mounted by any container"),
    ("service.yaml", _drop_run_as_non_root, "securityContext.runAsNonRoot: required"),
    ("broker.yaml", _add_configmap, "no CRD for v1 ConfigMap"),
    ("trigger-storage.yaml", _misspell_trigger_subscriber, "spec.subscriber.refs: unknown field"),
]


@pytest.mark.parametrize(("name", "breakage", "message"), BREAKAGES,
                         ids=[f"{name}-{breakage.__name__.strip('_')}" for name, breakage, _ in BREAKAGES])
def test_validator_rejects_a_broken_copy(tmp_path, name, breakage, message):
    shutil.copytree(ROOT / "knative", tmp_path / "knative")
    shutil.copy(ROOT / "func.yaml", tmp_path / "func.yaml")
    docs = load(name)
    breakage(docs)
    (tmp_path / "knative" / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    ran = validate("--root", tmp_path)
    assert ran.returncode == 1
    assert f"FAIL knative/{name}" in ran.stdout
    assert message in ran.stdout


@pytest.mark.parametrize(("text", "message"), [
    ("name: bird-classifier\n", "'specVersion' is a required property"),
    ("specVersion: 0.36.0\ncreated: 2025-01-01T00:00:00Z\ndeploy:\n  options:\n    scale:\n      minimum: 0\n",
     "Additional properties are not allowed ('minimum' was unexpected)"),
    ("specVersion: 0.36.0\ncreated: x\ndeploy:\n  annotations:\n    autoscaling.knative.dev/window: soon\n",
     "'soon' must be a Go duration"),
])
def test_validator_rejects_a_broken_func_yaml(tmp_path, text, message):
    shutil.copytree(ROOT / "knative", tmp_path / "knative")
    (tmp_path / "func.yaml").write_text(text)
    ran = validate("--root", tmp_path)
    assert ran.returncode == 1 and "FAIL func.yaml" in ran.stdout and message in ran.stdout


def test_validator_rejects_invalid_yaml(tmp_path):
    shutil.copytree(ROOT / "knative", tmp_path / "knative")
    shutil.copy(ROOT / "func.yaml", tmp_path / "func.yaml")
    (tmp_path / "knative" / "broker.yaml").write_text("kind: [unclosed\n")
    ran = validate("--root", tmp_path)
    assert ran.returncode == 1 and "FAIL knative/broker.yaml: not valid YAML" in ran.stdout


# --- the classifier's Service against the image ----------------------------------------

def test_autoscaling_annotations_scale_to_zero_on_concurrency(revision):
    annotations = revision["metadata"]["annotations"]
    assert all(isinstance(value, str) for value in annotations.values())
    assert {key[len(AUTOSCALING):] for key in annotations if key.startswith(AUTOSCALING)} == {
        "class", "metric", "target", "target-utilization-percentage", "min-scale", "max-scale",
        "initial-scale", "scale-to-zero-pod-retention-period"}
    assert annotations[AUTOSCALING + "class"] == "kpa.autoscaling.knative.dev"
    assert annotations[AUTOSCALING + "metric"] == "concurrency"
    assert annotations[AUTOSCALING + "min-scale"] == "0"
    assert 0 <= int(annotations[AUTOSCALING + "initial-scale"]) <= int(annotations[AUTOSCALING + "max-scale"])
    assert 0 < float(annotations[AUTOSCALING + "target"]) <= revision["spec"]["containerConcurrency"]
    assert 0 < float(annotations[AUTOSCALING + "target-utilization-percentage"]) <= 100
    assert re.fullmatch(r"(\d+[smh])+", annotations[AUTOSCALING + "scale-to-zero-pod-retention-period"])


def test_container_concurrency_is_the_gunicorn_thread_count(revision):
    """Every gunicorn worker serves THREADS requests at once."""
    assert revision["spec"]["containerConcurrency"] == int(image_env()["WORKERS"]) * int(image_env()["THREADS"])


def test_request_timeout_covers_the_worker_timeout(revision):
    assert revision["spec"]["timeoutSeconds"] >= int(image_env()["CLOUD_RUN_TIMEOUT_SECONDS"])


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe"])
def test_probes_ask_healthz_on_the_container_port(container, probe):
    port = container["ports"][0]
    assert port == {"name": "http1", "containerPort": int(image_env()["PORT"])}
    assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["containerPort"]}


def test_startup_budget_fits_in_the_request_timeout(revision, container):
    """The activator holds a cold request for at most timeoutSeconds: the pod must be able to start in that."""
    probe = container["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget < revision["spec"]["timeoutSeconds"]


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi)?", str(value)).groups()
    return float(number) * units.get(unit, 1)


def test_resources_request_and_limit_cpu_and_memory(container):
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert 0 < _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])


def test_security_context_runs_the_images_user_and_nothing_more(container):
    user = dockerfile.parse().stages["app"].args("USER")[-1]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": int(user),
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_the_read_only_root_gets_a_writable_tmp_where_the_image_writes(revision, container):
    (mount,) = container["volumeMounts"]
    (volume,) = revision["spec"]["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/tmp"} and "emptyDir" in volume
    assert image_env()["XDG_RUNTIME_DIR"] == mount["mountPath"], "gunicorn's control socket goes there"


def test_env_names_the_baked_model_explicitly(container):
    env = {item["name"]: item["value"] for item in container["env"]}
    defaults = dockerfile.parse().global_args  # the build args the image is baked with by default
    for name in ("CLASSIFIER_MODEL_URL", "CLASSIFIER_LABELS_URL"):
        assert env[name] == defaults[name]


def test_third_party_images_are_pinned_by_digest_or_say_why():
    for path in sorted((ROOT / "knative").glob("*.yaml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            image = line.strip().removeprefix("image:").strip() if line.strip().startswith("image:") else None
            if image is None or image == "bird-classifier:dev":  # ours: scripts/deploy substitutes it
                continue
            above = number
            while above > 0 and lines[above - 1].strip().startswith("#"):
                above -= 1  # the comment right above the image line
            reason = "Not pinned:" in "\n".join(lines[above:number])
            assert re.search(r"@sha256:[0-9a-f]{64}$", image) or reason, (
                f"{path.name}:{number + 1}: {image} is neither pinned by digest nor says why")


def test_no_private_url_switch_in_any_manifest():
    text = "".join(p.read_text() for p in (ROOT / "knative").glob("*.yaml")) + (ROOT / "func.yaml").read_text()
    assert "CLASSIFIER_ALLOW_PRIVATE_URLS" not in text


# --- eventing wiring and func.yaml -------------------------------------------------------

def test_storage_triggers_send_object_created_events_to_the_classifier():
    triggers = load("trigger-storage.yaml")
    assert [t["spec"]["filter"]["attributes"]["type"] for t in triggers] == [
        "google.cloud.storage.object.v1.finalized",
        *(f"com.amazonaws.s3:ObjectCreated:{action}" for action in ("Put", "Post", "Copy", "CompleteMultipartUpload")),
    ]
    for trigger in triggers:
        assert trigger["spec"]["broker"] == "default"
        assert trigger["spec"]["subscriber"]["ref"] == {
            "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "bird-classifier"}


def test_storage_triggers_route_exactly_the_events_the_classifier_handles():
    from function import events

    s3 = {f"{events.S3_TYPE_PREFIX}s3:{action}" for action in events.S3_UPLOADS}
    routed = {t["spec"]["filter"]["attributes"]["type"] for t in load("trigger-storage.yaml")}
    assert routed == {events.GCS_FINALIZED} | s3
    assert load("trigger-classified.yaml")[0]["spec"]["filter"]["attributes"]["type"] == events.REPLY_TYPE


def test_replies_go_to_event_display():
    trigger, display = load("trigger-classified.yaml")
    assert trigger["spec"]["filter"]["attributes"] == {"type": "io.birdclassifier.classified"}
    assert trigger["spec"]["subscriber"]["ref"]["name"] == display["metadata"]["name"]
    assert _container([display])["image"].startswith("gcr.io/knative-releases/knative.dev/eventing/cmd/event_display@sha256:")


def test_minio_adapter_is_bound_to_the_broker():
    adapter, binding = load("source-minio.yaml")
    assert binding["spec"]["subject"] == {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": adapter["metadata"]["name"]}
    assert binding["spec"]["sink"]["ref"] == {
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": load("broker.yaml")[0]["metadata"]["name"]}


def test_func_yaml_deploys_like_the_manifest(revision, container):
    func = yaml.safe_load((ROOT / "func.yaml").read_text())
    annotations = revision["metadata"]["annotations"]
    scale = func["deploy"]["options"]["scale"]
    assert scale == {
        "min": int(annotations[AUTOSCALING + "min-scale"]),
        "max": int(annotations[AUTOSCALING + "max-scale"]),
        "metric": annotations[AUTOSCALING + "metric"],
        "target": float(annotations[AUTOSCALING + "target"]),
        "utilization": float(annotations[AUTOSCALING + "target-utilization-percentage"]),
    }
    for key, value in func["deploy"]["annotations"].items():
        assert annotations[key] == value
    resources = func["deploy"]["options"]["resources"]
    assert resources["requests"] == container["resources"]["requests"]
    assert {k: v for k, v in resources["limits"].items() if k != "concurrency"} == container["resources"]["limits"]
    assert resources["limits"]["concurrency"] == revision["spec"]["containerConcurrency"]
    assert func["run"]["envs"] == container["env"]
    assert func["run"]["volumes"] == [{"path": m["mountPath"], "emptyDir": {"sizeLimit": v["emptyDir"]["sizeLimit"]}}
                                      for m, v in zip(container["volumeMounts"], revision["spec"]["volumes"])]
    assert set(func["deploy"]["healthEndpoints"].values()) == {container["readinessProbe"]["httpGet"]["path"]}
    assert [s["filters"]["type"] for s in func["deploy"]["subscriptions"]] == [
        t["spec"]["filter"]["attributes"]["type"] for t in load("trigger-storage.yaml")]


def test_storage_events_need_a_token_for_the_triggers_audience(container):
    """The Triggers name the audience the Service requires, and the Service's settings start."""
    env = {item["name"]: item["value"] for item in container["env"]}
    assert {t["spec"]["subscriber"]["audience"] for t in load("trigger-storage.yaml")} == {
        env["CLASSIFIER_EVENT_AUDIENCE"]}
    assert env["CLASSIFIER_EVENT_JWKS_CA_FILE"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    settings = load_settings({**env, "CLASSIFIER_EVENT_JWKS_CA_FILE": __file__})  # the CA is mounted in a pod
    assert settings.event_audience and settings.event_jwks_url.startswith("https://")


def test_prometheus_scrapes_metrics_on_the_container_port(revision, container):
    from function import metrics

    annotations = revision["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    assert annotations["prometheus.io/path"] == metrics.PATH


def test_documented_pod_monitors_select_this_service_and_scrape_both_containers(service):
    """docs/observability.md's PodMonitor (Prometheus Operator) and PodMonitoring (GKE)."""
    text = (ROOT / "docs" / "observability.md").read_text()
    monitors = {doc["kind"]: doc for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
                for doc in yaml.safe_load_all(block) if isinstance(doc, dict) and "kind" in doc}
    for kind, endpoints in (("PodMonitor", "podMetricsEndpoints"), ("PodMonitoring", "endpoints")):
        spec = monitors[kind]["spec"]
        assert spec["selector"]["matchLabels"] == {"serving.knative.dev/service": service["metadata"]["name"]}
        # Knative names the user container's port "user-port" in the pod; queue-proxy's is "http-usermetric".
        assert {"port": "user-port", "path": "/metrics"}.items() <= spec[endpoints][0].items()
    assert [e["port"] for e in monitors["PodMonitor"]["spec"]["podMetricsEndpoints"]] == ["user-port", "http-usermetric"]
