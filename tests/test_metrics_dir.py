"""function/metrics_dir.py: the multiprocess directory a server's master prepares for its workers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import types

import pytest

from conftest import ROOT, python_env
from function import metrics_dir
from function.config import Settings


@pytest.fixture(autouse=True)
def restored(monkeypatch):
    """prepare() sets the variable for this process: put it back as it was."""
    monkeypatch.setenv(metrics_dir.ENV, "before")
    monkeypatch.setattr(metrics_dir, "_directory", "")


def test_a_configured_directory_is_created_private(tmp_path):
    target = tmp_path / "deep" / "metrics"
    assert metrics_dir.prepare(Settings(metrics_dir=str(target))) == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert os.environ[metrics_dir.ENV] == str(target)


def test_the_last_runs_files_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "counter_41.db").write_bytes(b"old counts")
    (tmp_path / "gauge_livesum_41.db").write_bytes(b"old gauge")
    (tmp_path / "notes.txt").write_text("not ours")
    metrics_dir.prepare(Settings(metrics_dir=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_without_a_directory_it_is_too_late_once_prometheus_client_is_imported():
    import prometheus_client  # noqa: F401 - as function.metrics has, in this process

    with pytest.raises(RuntimeError, match="before prometheus_client is imported"):
        metrics_dir.prepare(Settings())


@pytest.mark.slow
def test_without_a_directory_a_fresh_one_puts_the_metrics_in_multiprocess_mode(tmp_path):
    """In a fresh process, as a server's master: prepare, then load the metrics."""
    code = (
        "import os; from function import metrics_dir; from function.config import load_settings; "
        "path = metrics_dir.prepare(load_settings()); "
        "from function import metrics; metrics.REQUESTS.labels('json', '200').inc(); "
        "print(path, oct(os.stat(path).st_mode & 0o777), sorted(os.listdir(path)))"
    )
    env = python_env({"TMPDIR": str(tmp_path)})
    env.pop(metrics_dir.ENV, None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path, mode, files = done.stdout.split(" ", 2)
    assert path.startswith(str(tmp_path / "bird-classifier-metrics-")) and mode == "0o700"
    assert "counter_" in files  # the counter went to a file there, not to memory


def test_child_exit_does_nothing_before_prepare(tmp_path):
    metrics_dir.child_exit(None, types.SimpleNamespace(pid=12345))  # no directory: nothing to mark
