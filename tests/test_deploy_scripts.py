"""scripts/deploy and scripts/build-image, run with a PATH that holds only what a test puts there.

kn, kubectl, docker and podman are stand-in scripts that log their arguments (and stdin),
so the real command lines are checked without a cluster or a container engine.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "scripts" / "deploy"
BUILD = ROOT / "scripts" / "build-image"
SERVICE = ROOT / "knative" / "service.yaml"
EVENTING = " ".join(f"-f {ROOT}/knative/{name}" for name in
                    ("broker.yaml", "trigger-storage.yaml", "source-minio.yaml", "trigger-classified.yaml"))
PATCH = ("'[{\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/image\", "
         "\"value\": \"reg.example/birds:1\"}]'")
BASE_TOOLS = ("bash", "dirname", "cut", "cat")


class Tools:
    """A bin directory for PATH: base tools linked in, stand-ins written on demand."""

    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        for tool in BASE_TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))

    def stub(self, name: str, body: str = "") -> None:
        """A stand-in `name` that logs its arguments, then runs body (default: exit 0)."""
        script = self.bin / name
        script.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{self.log}"\n{textwrap.dedent(body)}')
        script.chmod(0o755)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def run(self, script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {"PATH": str(self.bin), "HOME": str(self.bin.parent), **(env or {})}
        return subprocess.run([script, *args], env=env, capture_output=True, text=True)


@pytest.fixture
def tools(tmp_path) -> Tools:
    return Tools(tmp_path)


# --- scripts/deploy ----------------------------------------------------------------------

def test_dry_run_with_kn_prints_kn_for_the_service_and_kubectl_for_eventing(tools):
    tools.stub("kn")
    ran = tools.run(DEPLOY, "reg.example/birds:1", "birds", "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"+ kn service apply bird-classifier --filename {SERVICE} --image reg.example/birds:1 --namespace birds",
        f"+ kubectl apply --namespace birds {EVENTING}",
    ]
    assert tools.calls() == [], "a dry run runs nothing"


def test_dry_run_without_kn_renders_with_kubectl_and_needs_no_tools(tools):
    ran = tools.run(DEPLOY, "--dry-run", "reg.example/birds:1")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"+ kubectl patch --local -f {SERVICE} --type json -p {PATCH} -o yaml"
        " | kubectl apply --namespace default -f -",
        f"+ kubectl apply --namespace default {EVENTING}",
    ]


def test_kubectl_path_renders_the_image_and_applies_everything(tools):
    tools.stub("kubectl", f"""\
        if [ "$1" = patch ]; then echo "rendered service"; fi
        if [ "$*" = "apply --namespace birds -f -" ]; then echo "stdin: $(cat)" >> "{tools.log}"; fi
    """)
    ran = tools.run(DEPLOY, "reg.example/birds:1", "birds")
    assert ran.returncode == 0, ran.stderr
    calls = tools.calls()
    assert calls[0] == "kubectl cluster-info"
    # the two ends of the pipe start together: their log lines come in either order
    assert set(calls[1:3]) == {
        f"kubectl patch --local -f {SERVICE} --type json -p {PATCH[1:-1]} -o yaml",
        "kubectl apply --namespace birds -f -",
    }
    assert calls[3:] == ["stdin: rendered service", f"kubectl apply --namespace birds {EVENTING}"]
    assert ran.stdout.count("+ ") == 3, "every command is printed before it runs"


def test_kn_path_applies_the_service_file_with_the_image(tools):
    tools.stub("kn")
    tools.stub("kubectl")
    ran = tools.run(DEPLOY, "reg.example/birds:1")
    assert ran.returncode == 0, ran.stderr
    assert tools.calls() == [
        "kubectl cluster-info",
        f"kn service apply bird-classifier --filename {SERVICE} --image reg.example/birds:1 --namespace default",
        f"kubectl apply --namespace default {EVENTING}",
    ]


def test_kn_without_kubectl_deploys_the_service_then_says_eventing_needs_kubectl(tools):
    tools.stub("kn")
    ran = tools.run(DEPLOY, "reg.example/birds:1")
    assert ran.returncode == 1
    assert tools.calls()[0] == "kn service list --namespace default"
    assert tools.calls()[1].startswith("kn service apply bird-classifier")
    assert "kubectl is needed for the eventing manifests" in ran.stderr


def test_no_kn_and_no_kubectl_fails_clearly(tools):
    ran = tools.run(DEPLOY, "reg.example/birds:1")
    assert ran.returncode == 1
    assert "neither kn nor kubectl is installed" in ran.stderr


@pytest.mark.parametrize("tool", ["kubectl", "kn"])
def test_unreachable_cluster_fails_before_applying_anything(tools, tool):
    tools.stub(tool, "exit 1")
    ran = tools.run(DEPLOY, "reg.example/birds:1")
    assert ran.returncode == 1
    assert f"no cluster reachable with {tool}" in ran.stderr
    assert len(tools.calls()) == 1, "only the reachability check ran"


@pytest.mark.parametrize("args", [[], ["--dry-run"], ["a", "b", "c"], ["img", "--force"]])
def test_deploy_usage_errors(tools, args):
    ran = tools.run(DEPLOY, *args)
    assert ran.returncode == 2 and "usage:" in ran.stderr


def test_kubectl_render_sets_the_image_offline(tmp_path):
    """The exact render command deploy prints, with the real kubectl: no cluster needed."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is a test prerequisite (README); this machine image ships it"
    ran = subprocess.run(
        [kubectl, "patch", "--local", "-f", SERVICE, "--type", "json", "-p", PATCH[1:-1], "-o", "yaml"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                             "KUBECONFIG": str(tmp_path / "none")})
    assert ran.returncode == 0, ran.stderr
    assert "image: reg.example/birds:1" in ran.stdout and "bird-classifier:dev" not in ran.stdout


# --- scripts/build-image -----------------------------------------------------------------

def docker_build(*options: str) -> str:
    return f"docker build {' '.join(options)} --tag reg.example/birds:1 {ROOT}"


@pytest.mark.parametrize(("flags", "options", "pushed"), [
    ([], ["--target lean", "--build-arg PRELOAD_MODEL=1"], False),
    (["--preload"], ["--target lean", "--build-arg PRELOAD_MODEL=1"], False),
    (["--target", "full"], ["--target full", "--build-arg PRELOAD_MODEL=0"], False),
    (["--target=full", "--preload", "--push"], ["--target full", "--build-arg PRELOAD_MODEL=1"], True),
], ids=["lean", "lean-preload", "full", "full-preload-push"])
def test_build_image_builds_the_target_with_docker_and_pushes_on_request(tools, flags, options, pushed):
    tools.stub("docker")
    ran = tools.run(BUILD, "reg.example/birds:1", *flags)
    assert ran.returncode == 0, ran.stderr
    expected = ["docker info", docker_build(*options)]
    assert tools.calls() == expected + (["docker push reg.example/birds:1"] if pushed else [])


def test_build_image_passes_build_args_through_after_its_own(tools):
    tools.stub("docker")
    ran = tools.run(BUILD, "reg.example/birds:1", "--build-arg", "PYTHON_IMAGE=local/py:3.11",
                    "--build-arg=CLASSIFIER_MODELS={\"a\": 1}", "--build-arg", "PRELOAD_MODEL=0")
    assert ran.returncode == 0, ran.stderr
    assert tools.calls()[1] == docker_build(
        "--target lean", "--build-arg PRELOAD_MODEL=1", "--build-arg PYTHON_IMAGE=local/py:3.11",
        '--build-arg CLASSIFIER_MODELS={"a": 1}', "--build-arg PRELOAD_MODEL=0")


def test_build_image_hands_pip_cert_to_the_build_as_a_secret(tools):
    tools.stub("docker")
    bundle = tools.bin.parent / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    ran = tools.run(BUILD, "reg.example/birds:1", env={"PIP_CERT": str(bundle)})
    assert ran.returncode == 0, ran.stderr
    assert tools.calls()[1] == docker_build("--target lean", "--build-arg PRELOAD_MODEL=1",
                                            f"--secret id=ca-bundle,src={bundle}")
    missing = tools.run(BUILD, "reg.example/birds:1", env={"PIP_CERT": "/nonexistent/ca.pem"})
    assert missing.returncode == 1 and "PIP_CERT=/nonexistent/ca.pem is not a file" in missing.stderr


@pytest.mark.parametrize(("installed", "env", "engine", "isolation"), [
    (("docker", "buildah", "podman"), {}, "buildah", "chroot"),  # a docker client without a daemon
    (("buildah",), {"BUILDAH_ISOLATION": "oci"}, "buildah", "oci"),
    (("podman",), {}, "podman", "chroot"),
], ids=["no-daemon-buildah", "buildah-isolation", "podman"])
def test_build_image_without_a_docker_daemon_builds_with_buildah_or_podman(tools, installed, env, engine,
                                                                           isolation):
    for tool in installed:
        tools.stub(tool, "exit 1" if tool == "docker" else "")
    ran = tools.run(BUILD, "reg.example/birds:1", "--push", env=env)
    assert ran.returncode == 0, ran.stderr
    build = (f"{engine} build --layers --isolation {isolation} --target lean --build-arg PRELOAD_MODEL=1 "
             f"--tag reg.example/birds:1 {ROOT}")
    assert tools.calls() == (["docker info"] if "docker" in installed else []) + [
        build, f"{engine} push reg.example/birds:1"]


def test_build_image_engine_forces_one(tools):
    tools.stub("docker")
    tools.stub("podman")
    ran = tools.run(BUILD, "reg.example/birds:1", env={"ENGINE": "podman"})
    assert ran.returncode == 0, ran.stderr
    assert tools.calls()[0].startswith("podman build ")


def test_build_image_without_an_engine_fails_clearly(tools):
    ran = tools.run(BUILD, "reg.example/birds:1")
    assert ran.returncode == 1 and "no container engine: start a docker daemon, or install buildah or podman" in ran.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"ENGINE": "docker"}, "docker is installed but its daemon is not reachable"),
    ({"ENGINE": "nerdctl"}, "ENGINE=nerdctl is not installed"),
])
def test_build_image_forced_engine_that_cannot_build_fails_clearly(tools, env, message):
    tools.stub("docker", "exit 1")
    tools.stub("buildah")
    ran = tools.run(BUILD, "reg.example/birds:1", env=env)
    assert ran.returncode == 1 and message in ran.stderr
    assert not [call for call in tools.calls() if " build " in f" {call} "]


@pytest.mark.parametrize("args", [[], ["--push"], ["a", "b"], ["img", "--force"], ["img", "--target"],
                                  ["img", "--build-arg"]])
def test_build_image_usage_errors(tools, args):
    ran = tools.run(BUILD, *args)
    assert ran.returncode == 2 and "usage:" in ran.stderr


def test_build_image_knows_only_the_dockerfiles_targets(tools):
    ran = tools.run(BUILD, "img", "--target", "slim")
    assert ran.returncode == 2 and "--target must be lean or full, got 'slim'" in ran.stderr
