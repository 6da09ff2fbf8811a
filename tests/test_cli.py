"""`python -m function` in a subprocess: results on stdout, logs on stderr, exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from conftest import ROOT, python_env
from fixtures import images as test_images
from function import files


def run_cli(stand_in, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=ROOT, env=python_env({**stand_in.env(), **(env or {})}),
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def warm_cache(stand_in):
    """Convert the stand-in once (in a subprocess) so later CLI runs start without TensorFlow."""
    done = run_cli(stand_in, "--preload", "-q")
    assert done.returncode == 0, done.stderr
    assert list(stand_in.cache_dir.glob("*.tflite")), "preload must leave the converted model in the cache"


def test_json_lines_in_order_and_exit_1_on_failure(stand_in, warm_cache):
    red = stand_in.image_url("cli-red.png", (250, 5, 5))
    missing = stand_in.server.url("/images/cli-missing.png")
    done = run_cli(stand_in, "--json", "--top-k", "2", red, missing)
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["url"] for line in lines] == [red, missing]
    assert [p["label"] for p in lines[0]["predictions"]][:1] == ["Erithacus rubecula"]
    assert len(lines[0]["predictions"]) == 2
    assert lines[1]["error"]["code"] == "http_status"
    assert "classified 2 images" in done.stderr  # the per-request log line goes to stderr


def test_human_output_exit_0_and_quiet(stand_in, warm_cache):
    blue = stand_in.image_url("cli-blue.png", (5, 5, 250))
    done = run_cli(stand_in, "-q", blue)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == blue
    assert "1. Cyanistes caeruleus" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith("  ")]) == 3
    assert done.stderr == ""


@pytest.mark.parametrize("args", [[], ["--top-k", "0", "http://a/b.jpg"], ["--top-k", "x", "http://a/b.jpg"], ["--nope"]])
def test_usage_errors_exit_2(stand_in, args):
    done = run_cli(stand_in, *args)
    assert done.returncode == 2
    assert done.stdout == ""


def test_an_unknown_model_is_a_usage_error(stand_in):
    for args in (["--model", "nope", "http://a/b.jpg"], ["--preload", "--model", "nope"]):
        done = run_cli(stand_in, *args)
        assert done.returncode == 2, done.stderr
        assert "unknown_model" in done.stderr and "birds" in done.stderr  # names what is configured
        assert done.stdout == ""


def test_match_errors_quote_the_pattern_as_typed(stand_in, tmp_path):
    done = run_cli(stand_in, "--json", "-q", str(tmp_path), "--match", r"IMG_\d+\.jpg$")
    assert json.loads(done.stdout)["error"]["message"] == r"no files here match 'IMG_\d+\.jpg$'"


def test_quiet_silences_python_warnings_too(stand_in, tmp_path):
    """-q: not even the pkg_resources deprecation warning tensorflow_hub triggers."""
    done = run_cli(stand_in, "--preload", "-q", env={"TFHUB_CACHE_DIR": str(tmp_path), "PYTHONWARNINGS": "always"})
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_bad_configuration_exits_2(stand_in):
    done = run_cli(stand_in, "http://a/b.jpg", env={"CLASSIFIER_TOP_K": "many"})
    assert done.returncode == 2
    assert "CLASSIFIER_TOP_K" in done.stderr


# Run as the CLI, reporting which download threads are running when each heavy module's
# import begins (the "import" audit event fires before the module's code runs).
IMPORT_ORDER = """
import sys, threading
HEAVY = {"numpy", "PIL", "ai_edge_litert", "tqdm", "flask"}
def hook(event, args):
    if event == "import" and args[0] in HEAVY:
        early = [t.name for t in threading.enumerate() if t.name.startswith("early")]
        sys.__stderr__.write(f"HEAVY {args[0]} {len(early)}\\n")
sys.addaudithook(hook)
from function.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_downloads_are_under_way_before_numpy_pillow_or_the_runtime_is_imported(stand_in, warm_cache):
    urls = [stand_in.image_url(f"cli-early-{i}.png", (250, 5, 5), latency=0.3) for i in range(2)]
    done = subprocess.run([sys.executable, "-c", IMPORT_ORDER, "--json", *urls], cwd=ROOT,
                          env=python_env(stand_in.env()), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy = dict(line.split()[1:] for line in done.stderr.splitlines() if line.startswith("HEAVY "))
    assert {"numpy", "PIL", "ai_edge_litert", "tqdm"} <= set(heavy) and "flask" not in heavy
    assert all(int(downloading) == len(urls) for downloading in heavy.values()), heavy
    assert all(stand_in.server.hits[url.split(str(stand_in.server.port))[1]] == 1 for url in urls)
    assert [json.loads(line)["predictions"][0]["label"] for line in done.stdout.splitlines()] == \
        ["Erithacus rubecula"] * 2


def test_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["classify"] == "function.cli:run"


# --- local files, directories and globs ------------------------------------------


@pytest.fixture
def photos(tmp_path):
    """photos/red.png, photos/notes.txt, photos/sub/blue.jpg, photos/sub/deeper/green.PNG."""
    tree = {"red.png": ((250, 5, 5), "PNG"), "sub/blue.jpg": ((5, 5, 250), "JPEG"),
            "sub/deeper/green.PNG": ((5, 250, 5), "PNG")}
    for name, (colour, format) in tree.items():
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(test_images.encode(test_images.solid(colour), format))
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return tmp_path


def run_in(cwd, stand_in, *args, env=None, stderr=subprocess.PIPE):
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=cwd, env=python_env({**stand_in.env(), "PYTHONPATH": str(ROOT), **(env or {})}),
        stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120,
    )


def test_folders_globs_files_and_urls_mixed_in_order(stand_in, warm_cache, photos):
    url = stand_in.image_url("cli-mixed.png", (5, 250, 5))
    done = run_in(photos, stand_in, "--json", "-q", "photos", url, "photos/**/*.jpg", "missing.png",
                  "photos/*.gif")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["url"] for line in lines] == [
        "photos/red.png",  # not photos/notes.txt (not an image name) nor sub/ (no -r)
        url, "photos/sub/blue.jpg", "missing.png", "photos/*.gif"]
    assert [line.get("predictions", [{}])[0].get("label") for line in lines[:3]] == [
        "Erithacus rubecula", "Picus viridis", "Cyanistes caeruleus"]
    assert lines[3]["error"] == {"code": "file_unreadable", "message": "cannot read file: No such file or directory"}
    assert lines[4]["error"] == {"code": "file_unreadable", "message": f"no files here match '{files.IMAGE_FILES}'"}
    assert done.returncode == 1


def test_recursive_match_and_size_limit(stand_in, warm_cache, photos):
    big = test_images.encode(test_images.photo_like(200, 200), "PNG")
    (photos / "photos" / "sub" / "big.png").write_bytes(big)
    done = run_in(photos, stand_in, "--json", "-q", "-r", "photos", "--match", r"sub/",
                  env={"CLASSIFIER_MAX_IMAGE_BYTES": str(len(big) - 1)})
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["url"] for line in lines] == ["photos/sub/big.png", "photos/sub/blue.jpg",
                                               "photos/sub/deeper/green.PNG"]
    assert lines[0]["error"]["code"] == "too_large"
    assert [line["predictions"][0]["label"] for line in lines[1:]] == ["Cyanistes caeruleus", "Picus viridis"]


def test_progress_bar_only_on_a_terminal(stand_in, warm_cache, photos):
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a sized terminal
    try:
        done = run_in(photos, stand_in, "-r", "photos", stderr=terminal)
        os.close(terminal)
        terminal = None
        shown = _read_all(main)
    finally:
        os.close(main)
        if terminal is not None:
            os.close(terminal)
    assert done.returncode == 0
    assert "3img" in shown.replace(" ", "")  # tqdm's counter, on stderr only
    assert "img" not in done.stdout and done.stdout.count("\n  1. ") == 3
    quiet = run_in(photos, stand_in, "-r", "-q", "photos")
    assert quiet.returncode == 0 and quiet.stderr == ""
    piped = run_in(photos, stand_in, "-r", "photos")
    assert "img/s" not in piped.stderr and "it/s" not in piped.stderr


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_sources_are_listed_lazily_in_bounded_batches(use_stand_in, monkeypatch, photos, capsys):
    """In-process: each batch is at most CLASSIFIER_MAX_URLS, and is classified before
    the next one's files are even found (so 100 000 files never sit in memory)."""
    from function import cli, logs
    from function.pipeline import Classifier

    for i in range(3):
        (photos / "photos" / f"extra{i}.png").write_bytes(test_images.encode(test_images.solid((9, 9, 9 * i))))
    monkeypatch.setenv("CLASSIFIER_MAX_URLS", "2")
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)  # keep pytest's logging
    found, batches = [], []
    real_file, real_classify = files._file, Classifier.classify
    monkeypatch.setattr(files, "_file", lambda path, limit: found.append(path) or real_file(path, limit))
    monkeypatch.setattr(Classifier, "classify", lambda self, sources, *rest: (
        batches.append(([s.name for s in sources], len(found))) or real_classify(self, sources, *rest)))
    assert cli.main(["--json", "-r", str(photos / "photos")]) == 0
    sizes_and_found = [(len(names), seen) for names, seen in batches]
    assert sizes_and_found == [(2, 2), (2, 4), (2, 6)]
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_preload_loads_every_configured_model(use_stand_in, flowers, monkeypatch, tmp_path):
    """What the image bakes: the registry's models too, not only the default."""
    from function import cli

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "bake"))
    monkeypatch.setenv("CLASSIFIER_MODELS", json.dumps(
        {"flowers": {"url": flowers.url, "labels": flowers.labels_url, "input_size": 180,
                     "input_range": [0, 255], "output": "logits"}}))
    assert cli.main(["--preload"]) == 0
    baked = sorted(p.name for p in (tmp_path / "bake").glob("*.tflite"))
    assert len(baked) == 2, baked  # the birds conversion and the downloaded flowers file
