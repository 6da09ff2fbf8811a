"""The image build outside Docker: Dockerfile shape, .dockerignore, scripts/image/ steps.

No Docker engine here, so the build steps run in a temporary directory instead, on tiny
offline stand-ins (a pinned wheel, a PEP 517 project), never on TensorFlow. The real
`classify --preload` against the app is covered by the app's own tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "image" / "install"
PRELOAD = ROOT / "scripts" / "image" / "preload"
SERVER_COMMAND = ["functions-framework", "--target", "classify", "--source", "function/main.py"]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def test_two_stages_on_python_311_slim():
    stages = dockerfile_stages()
    assert len(stages) == 2
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert [args for instruction, args in (s[0] for s in stages)] == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]


def test_final_stage_runs_functions_framework_as_cmd_and_non_root():
    instructions = dict(final_stage())
    assert "ENTRYPOINT" not in instructions, "CMD only, so `docker run IMAGE classify ...` works"
    assert json.loads(instructions["CMD"]) == SERVER_COMMAND
    assert instructions["USER"] not in ("0", "root")
    assert instructions["WORKDIR"] == "/app"


def test_final_stage_copies_only_venv_models_and_app():
    copies = [args for instruction, args in final_stage() if instruction == "COPY"]
    assert copies == [
        "--from=builder /opt/venv /opt/venv",
        "--from=builder --chown=10001:10001 /models /models",
        "function/ function/",
    ]


def test_final_env_sets_the_server_contract():
    env = dict(
        word.split("=", 1)
        for instruction, args in final_stage() if instruction == "ENV"
        for word in shlex.split(args)
    )
    assert env["TFHUB_CACHE_DIR"] == "/models/tfhub"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert int(env["PORT"]) > 0 and int(env["WORKERS"]) > 0 and int(env["THREADS"]) > 0
    assert int(env["CLOUD_RUN_TIMEOUT_SECONDS"]) > 0 and int(env["CLASSIFIER_LITERT_THREADS"]) > 0


def test_build_steps_are_the_tested_scripts():
    runs = [args for stage in dockerfile_stages() for instruction, args in stage if instruction == "RUN"]
    scripts = {re.search(r"scripts/image/\w+", run).group(0) for run in runs if "scripts/image/" in run}
    assert scripts == {"scripts/image/install", "scripts/image/preload"}
    for script in scripts:
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    lines = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allowlist: exclude everything, then re-include"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        source.rstrip("/")
        for stage in dockerfile_stages()
        for instruction, args in stage if instruction == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    } | {"pyproject.toml"}  # read by `install /opt/venv .`
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
