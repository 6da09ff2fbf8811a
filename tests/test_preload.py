"""Baking the model into the image: the Dockerfile's preload step with the app's own code."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, python_env

PRELOAD = ROOT / "scripts" / "image" / "preload"


def test_preload_step_bakes_a_model_that_later_runs_without_tensorflow(stand_in, tmp_path):
    cache = tmp_path / "models"
    env = python_env(stand_in.env(TFHUB_CACHE_DIR=str(cache)))
    baked = subprocess.run([PRELOAD, sys.prefix, "1"], env=env, capture_output=True, text=True, timeout=180)
    assert baked.returncode == 0, baked.stderr
    assert len(list(cache.glob("*.tflite"))) == 1
    assert any(p.is_dir() for p in cache.iterdir()), "the TF Hub download itself is cached too"

    # A cold process on the baked cache: classifies, and never imports TensorFlow.
    url = stand_in.image_url("baked.png", (240, 10, 10))
    code = (
        "import json, sys; from function.cli import main; rc = main(['-q', '--json', sys.argv[1]]); "
        "print(json.dumps({'rc': rc, 'tf': 'tensorflow' in sys.modules}), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"rc": 0, "tf": False}, done.stderr
    assert json.loads(done.stdout)["predictions"][0]["label"] == "Erithacus rubecula"
