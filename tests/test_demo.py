"""scripts/demo: the README's offline try-it command prints real classifications."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, python_env


def test_demo_classifies_its_pictures_offline(tmp_path):
    done = subprocess.run([sys.executable, ROOT / "scripts" / "demo", "--json", "--top-k", "1"],
                          env=python_env({"TMPDIR": str(tmp_path)}), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    top = {line["url"].rsplit("/", 1)[1]: line["predictions"][0]["label"] for line in lines}
    assert top == {"red-bird.png": "Erithacus rubecula", "green-bird.jpg": "Picus viridis",
                   "blue-bird.webp": "Cyanistes caeruleus", "dark-bird.gif": "Corvus corax"}
    assert "not a bird model" in done.stderr  # it says plainly what the stand-in is
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself
