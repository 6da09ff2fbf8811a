"""The image build outside a container engine: Dockerfile shape, .dockerignore, scripts/image/ steps.

The build steps run in a temporary directory instead, on tiny offline stand-ins (a pinned
wheel, a PEP 517 project), never on TensorFlow. The real `classify --preload` against the
app is covered by tests/test_preload.py, the whole lean build by tests/test_image_build.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from function.config import DEFAULT_LABELS_URL, DEFAULT_MODEL_URL
from imagelib import dockerfile

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "image" / "install"
PRELOAD = ROOT / "scripts" / "image" / "preload"
LEAN_MODELS = ROOT / "scripts" / "image" / "lean-models"
DEBIAN_BASE = ROOT / "scripts" / "image" / "debian-base"
SERVER_COMMAND = ["python", "-m", "function.server"]
TENSORFLOW_PINS = ("tensorflow", "tensorflow-cpu", "tensorflow-hub", "tf-keras")

DOCKERFILE = dockerfile.parse()


def installs(target: str, path: str) -> list[str]:
    """What `scripts/image/install` puts into the venv at `path` that `target` copies in."""
    (source,) = [args.split()[0].removeprefix("--from=") for args in DOCKERFILE.stages[target].args("COPY")
                 if args.endswith(f" {path} {path}")]
    return [re.sub(r"^.*scripts/image/install \S+ ", "", run)
            for stage in DOCKERFILE.chain(source) for run in stage.args("RUN") if "scripts/image/install" in run]


def pins(lock: str) -> set[str]:
    """Distribution names pinned by a lock, following its `-r` includes."""
    names = set()
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if line.startswith("-r "):
            names |= pins(line[3:].strip())
        elif "==" in line:
            names.add(line.split("==")[0].lower().replace("_", "-"))
    return names


def test_stages_lean_last_so_it_is_the_default_target():
    assert list(DOCKERFILE.stages) == ["serving-deps", "tensorflow-deps", "serving", "tensorflow", "models",
                                       "app", "full", "lean"]
    assert DOCKERFILE.global_args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert {name for name, stage in DOCKERFILE.stages.items() if stage.base == "${PYTHON_IMAGE}"} == {
        "serving-deps", "app"}


def test_the_lean_venv_holds_the_serving_lock_and_no_tensorflow():
    assert installs("lean", "/opt/venv") == ["-r requirements/serving.txt", "."]
    assert not pins("serving.txt") & set(TENSORFLOW_PINS)


def test_the_full_venv_adds_tensorflow():
    assert installs("full", "/opt/venv") == ["-r requirements/serving.txt", "-r requirements/runtime.txt", "."]
    assert {"tensorflow-cpu", "tensorflow-hub", "tf-keras"} <= pins("runtime.txt")


def test_the_models_are_baked_by_the_apps_preload_and_the_lean_image_gets_only_tflite():
    models = DOCKERFILE.stages["models"]
    assert models.base == "tensorflow", "the conversion needs TensorFlow"
    assert "PRELOAD_MODEL=1" in models.args("ARG"), "baked unless asked otherwise"
    preload, lean_models = models.args("RUN")
    assert preload.endswith('scripts/image/preload /opt/venv "$PRELOAD_MODEL"')
    assert "TFHUB_CACHE_DIR=/models/tfhub" in preload
    assert lean_models == "scripts/image/lean-models /models/tfhub /lean-models/tfhub"
    assert DOCKERFILE.stages["lean"].args("COPY")[-1] == "--from=models --chown=10001:10001 /lean-models /models"
    assert DOCKERFILE.stages["full"].args("COPY")[-1] == "--from=models --chown=10001:10001 /models /models"


def test_the_model_build_args_default_to_the_birds_and_become_the_images_env():
    assert DOCKERFILE.global_args["CLASSIFIER_MODEL_URL"] == DEFAULT_MODEL_URL
    assert DOCKERFILE.global_args["CLASSIFIER_LABELS_URL"] == DEFAULT_LABELS_URL
    assert DOCKERFILE.global_args["CLASSIFIER_MODELS"] == ""
    names = ("CLASSIFIER_MODEL_URL", "CLASSIFIER_LABELS_URL", "CLASSIFIER_MODELS")
    for stage in ("models", "app"):  # each stage that uses them declares them (ARG scope)
        assert set(names) <= set(DOCKERFILE.stages[stage].args("ARG"))
    for target in ("lean", "full"):
        env = DOCKERFILE.env(target)
        assert {name: env[name] for name in names} == {name: f"${{{name}}}" for name in names}
    app = [name for name, _ in DOCKERFILE.stages["app"].instructions]
    assert "RUN" in app[app.index("ENV", app.index("ARG")):], (
        "a RUN must follow the ENV of the build args, or buildah's cache ships a stale value")


def test_both_targets_run_functions_framework_as_cmd_and_non_root():
    for target in ("lean", "full"):
        chain = DOCKERFILE.chain(target)
        instructions = {name for stage in chain for name, _ in stage.instructions}
        assert "ENTRYPOINT" not in instructions, "CMD only, so `docker run IMAGE classify ...` works"
        assert json.loads(chain[-2].args("CMD")[-1]) == SERVER_COMMAND
        assert chain[-2].args("USER")[-1] not in ("0", "root")
        assert chain[-2].args("WORKDIR")[-1] == "/app"


def test_both_targets_copy_only_a_venv_the_models_and_the_app():
    assert DOCKERFILE.stages["app"].args("COPY") == ["function/ function/"]
    assert DOCKERFILE.stages["lean"].args("COPY")[0] == "--from=serving /opt/venv /opt/venv"
    assert DOCKERFILE.stages["full"].args("COPY")[0] == "--from=tensorflow /opt/venv /opt/venv"
    assert len(DOCKERFILE.stages["lean"].args("COPY")) == len(DOCKERFILE.stages["full"].args("COPY")) == 2


def test_final_env_sets_the_server_contract():
    env = DOCKERFILE.env("lean")
    assert env == DOCKERFILE.env("full")
    assert env["WORKERS"] == "1"
    assert env["TFHUB_CACHE_DIR"] == "/models/tfhub"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["XDG_RUNTIME_DIR"] == "/tmp", "gunicorn's control socket on the emptyDir, not the read-only root"
    assert int(env["PORT"]) > 0 and int(env["THREADS"]) > 0 and int(env["CLOUD_RUN_TIMEOUT_SECONDS"]) > 0
    assert int(env["CLASSIFIER_LITERT_THREADS"]) > 0


def test_build_steps_are_the_tested_scripts():
    runs = [run for stage in DOCKERFILE.stages.values() for run in stage.args("RUN")]
    scripts = {re.search(r"scripts/image/[\w-]+", run).group(0) for run in runs if "scripts/image/" in run}
    assert scripts == {"scripts/image/install", "scripts/image/preload", "scripts/image/lean-models"}
    for script in scripts:
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"


def test_downloads_may_trust_a_ca_bundle_given_as_a_secret_never_stored():
    runs = [run for stage in DOCKERFILE.stages.values() for run in stage.args("RUN")]
    for run in runs:
        if "scripts/image/install" in run or "scripts/image/preload" in run:
            assert run.startswith("--mount=type=secret,id=ca-bundle "), run
    for script in (INSTALL, PRELOAD):
        assert "/run/secrets/ca-bundle" in script.read_text()
    copied = [args for stage in DOCKERFILE.stages.values() for args in stage.args("COPY")]
    assert not [args for args in copied if "cert" in args or "secret" in args]


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    lines = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allowlist: exclude everything, then re-include"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        source.rstrip("/")
        for stage in DOCKERFILE.stages.values()
        for args in stage.args("COPY") if "--from=" not in args
        for source in args.split()[:-1]
    }
    assert sources == allowed


# --- scripts/image/install -----------------------------------------------------------

BACKEND = '''\
"""A minimal PEP 517 backend, so pip can build this project without any download."""
import base64, hashlib, pathlib, zipfile

NAME, VERSION, REQUIRES, SCRIPT = {name!r}, {version!r}, {requires!r}, {script!r}


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{{path}},sha256={{digest}},{{len(data)}}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    root = pathlib.Path(__file__).parent
    info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{f"{{NAME}}/__init__.py": (root / NAME / "__init__.py").read_bytes()}}
    metadata = f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
    files[f"{{info}}/METADATA"] = (metadata + "".join(f"Requires-Dist: {{r}}\\n" for r in REQUIRES)).encode()
    files[f"{{info}}/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    if SCRIPT:
        files[f"{{info}}/entry_points.txt"] = f"[console_scripts]\\n{{NAME}} = {{NAME}}:main\\n".encode()
    record = [_record_line(path, data) for path, data in files.items()] + [f"{{info}}/RECORD,,"]
    files[f"{{info}}/RECORD"] = "\\n".join(record).encode() + b"\\n"
    wheel = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel
'''

MISSING = "no-such-dependency-anywhere"


def make_project(directory: Path, name: str, *, script: bool) -> Path:
    """A project that depends on a package nobody has: installable only with --no-deps."""
    (directory / name).mkdir(parents=True)
    (directory / name / "__init__.py").write_text(
        f"def main():\n    print('{name} ran')\n"
    )
    (directory / "backend.py").write_text(
        BACKEND.format(name=name, version="1.0", requires=[MISSING], script=script)
    )
    (directory / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = []
        build-backend = "backend"
        backend-path = ["."]
    """))
    return directory


def offline_env(find_links: Path) -> dict[str, str]:
    """pip may only use find_links: a dependency it tried to resolve would fail the install."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(find_links), PYTHON=sys.executable)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv made by scripts/image/install the way the Dockerfile does: lock, then project."""
    work = tmp_path_factory.mktemp("install")
    wheels = work / "wheels"
    wheels.mkdir()
    library = make_project(work / "lib-src", "tinylib", script=False)
    subprocess.run([sys.executable, "-c", "import backend, sys; backend.build_wheel(sys.argv[1])", str(wheels)],
                   cwd=library, check=True)
    lock = work / "runtime.txt"
    lock.write_text("# a pinned lock, as scripts/lock writes it\ntinylib==1.0\n")
    project = make_project(work / "app-src", "tinyapp", script=True)
    venv = work / "venv"
    env = offline_env(wheels)
    steps = [
        subprocess.run([INSTALL, venv, "-r", lock], env=env, capture_output=True, text=True),
        subprocess.run([INSTALL, venv, project], env=env, capture_output=True, text=True),
    ]
    return venv, steps


def test_install_succeeds_offline_without_resolving_dependencies(installed):
    venv, steps = installed
    for step in steps:
        assert step.returncode == 0, step.stdout + step.stderr
    listing = subprocess.run([venv / "bin" / "python", "-c",
                              "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))"],
                             cwd=venv, capture_output=True, text=True, check=True).stdout  # not the repo: its egg-info
    assert listing.strip() == "['tinyapp', 'tinylib']", "no pip, no dependency: only what was asked"


def test_install_puts_the_project_console_script_on_the_venv_path(installed):
    venv, _ = installed
    ran = subprocess.run([venv / "bin" / "tinyapp"], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout == "tinyapp ran\n"


def test_install_requires_a_venv_and_something_to_install():
    ran = subprocess.run([INSTALL, "/tmp/unused-venv"], capture_output=True, text=True)
    assert ran.returncode == 2 and "usage:" in ran.stderr


# --- scripts/image/preload -----------------------------------------------------------

@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose `classify` records how it was called and writes `creates` into the cache."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    classify = bin_dir / "classify"

    def make(*, creates: str | None = "model.tflite", status: int = 0) -> Path:
        write = f'touch "$TFHUB_CACHE_DIR/{creates}"' if creates else ":"
        classify.write_text(textwrap.dedent(f"""\
            #!/usr/bin/env bash
            echo "$* cache=$TFHUB_CACHE_DIR" >> "{tmp_path}/calls"
            {write}
            exit {status}
        """))
        classify.chmod(0o755)
        return tmp_path / "venv"

    return make


def preload(venv: Path, flag: str, cache: Path | None):
    env = {k: v for k, v in os.environ.items() if k != "TFHUB_CACHE_DIR"}
    if cache is not None:
        env["TFHUB_CACHE_DIR"] = str(cache)
    return subprocess.run([PRELOAD, venv, flag], env=env, capture_output=True, text=True)


def test_preload_runs_the_apps_own_preload_into_the_cache(fake_venv, tmp_path):
    cache = tmp_path / "models" / "tfhub"
    ran = preload(fake_venv(), "1", cache)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "calls").read_text() == f"--preload cache={cache}\n"
    assert (cache / "model.tflite").exists()


def test_preload_off_only_creates_the_cache_for_run_time_downloads(fake_venv, tmp_path):
    cache = tmp_path / "models" / "tfhub"
    ran = preload(fake_venv(), "0", cache)
    assert ran.returncode == 0 and "skipped" in ran.stdout
    assert cache.is_dir() and not any(cache.iterdir())
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize(
    ("flag", "creates", "status", "cache", "code", "message"),
    [
        ("yes", "m", 0, True, 2, "PRELOAD_MODEL must be 0 or 1, got 'yes'"),
        ("1", None, 0, True, 1, "left"),
        ("1", "m", 3, True, 3, ""),
        ("1", "m", 0, False, 1, "TFHUB_CACHE_DIR must name the model cache"),
    ],
    ids=["bad-flag", "empty-cache", "classify-fails", "no-cache-dir"],
)
def test_preload_failures_stop_the_build(fake_venv, tmp_path, flag, creates, status, cache, code, message):
    ran = preload(fake_venv(creates=creates, status=status), flag, tmp_path / "cache" if cache else None)
    assert ran.returncode == code
    assert message in ran.stderr


# --- scripts/image/lean-models ---------------------------------------------------------

def test_lean_models_copies_the_top_level_tflite_files_and_label_maps_alone(tmp_path):
    cache = tmp_path / "tfhub"
    (cache / "0123abcd").mkdir(parents=True)  # a TF Hub download, as the conversion leaves it
    (cache / "0123abcd" / "saved_model.pb").write_bytes(b"module")
    (cache / "0123abcd.descriptor.txt").write_text("Module: http://127.0.0.1/m.tar.gz\n")
    (cache / "7c78.tflite").write_bytes(b"birds")
    (cache / "9f00.tflite").write_bytes(b"flowers")
    (cache / "5e5e.labels.csv").write_bytes(b"id,name\n0,robin\n")
    (cache / "5e5e.csv").write_bytes(b"not a label map the app cached")
    (cache / "0123abcd" / "nested.tflite").write_bytes(b"not the app's")
    ran = subprocess.run([LEAN_MODELS, cache, tmp_path / "lean" / "tfhub"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    copied = {p.name: p.read_bytes() for p in (tmp_path / "lean" / "tfhub").iterdir()}
    assert copied == {"7c78.tflite": b"birds", "9f00.tflite": b"flowers", "5e5e.labels.csv": b"id,name\n0,robin\n"}
    assert "2 .tflite file(s), 1 label map(s)" in ran.stdout


def test_lean_models_makes_an_empty_model_dir_when_nothing_was_baked(tmp_path):
    (tmp_path / "tfhub").mkdir()
    ran = subprocess.run([LEAN_MODELS, tmp_path / "tfhub", tmp_path / "out"], capture_output=True, text=True)
    assert ran.returncode == 0 and (tmp_path / "out").is_dir() and not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("args", "code", "message"), [
    (["only-one"], 2, "usage:"),
    (["/nonexistent/cache", "/tmp/unused"], 1, "/nonexistent/cache is not a directory"),
])
def test_lean_models_usage_and_missing_cache(args, code, message):
    ran = subprocess.run([LEAN_MODELS, *args], capture_output=True, text=True)
    assert ran.returncode == code and message in ran.stderr


# --- scripts/image/debian-base ---------------------------------------------------------

def test_debian_base_names_the_missing_tool(tmp_path):
    """The base itself is made by tests/test_image_build.py; here, a machine without the tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sha256sum", "cut", "printf"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found.startswith("/"):
            (bin_dir / tool).symlink_to(found)
    ran = subprocess.run([DEBIAN_BASE], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert ran.returncode == 1
    assert "debootstrap not found; on Debian: apt-get install -y debootstrap buildah" in ran.stderr
