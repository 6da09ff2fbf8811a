"""Processes under measurement: wall time and peak RSS of one run, and a real server
instance started the way the Dockerfile starts it (`python -m function.server`)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
HEALTH_POLL_SECONDS = 0.01
SERVER_START_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class Finished:
    returncode: int
    seconds: float
    peak_rss_mb: float  # of the process and every descendant it waited for
    cpu_seconds: float  # user + system, likewise
    stdout: str
    stderr: str


def python_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This interpreter's environment without the caller's CLASSIFIER_* settings, plus `extra`;
    scripts/ is importable (for benchlib.baseline and benchlib.probe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIFIER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def run(args: Sequence[str], env: Mapping[str, str], timeout: float) -> Finished:
    """Run `python args...` from the repository root; wall time from spawn to exit."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(env), stdout=out, stderr=err)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            returncode, usage = _wait(process)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Finished(returncode, seconds, _rss_mb(usage), usage.ru_utime + usage.ru_stime,
                        out.read(), err.read())


def checked(finished: Finished, what: str) -> Finished:
    if finished.returncode != 0:
        raise RuntimeError(f"{what} exited with {finished.returncode}:\n{finished.stderr[-3000:]}")
    return finished


def _wait(process: subprocess.Popen):
    """wait4: the exit status and resource usage, which covers the children it reaped."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


def _rss_mb(usage) -> float:
    return usage.ru_maxrss / 1024.0  # KiB on Linux


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:  # exited meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return own + sum(tree_cpu_seconds(int(child)) for child in children)


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot: others' load shows here."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def dockerfile_env(names: Sequence[str]) -> dict[str, str]:
    """Server settings as the Dockerfile's ENV sets them, so the bench serves like production."""
    text = (ROOT / "Dockerfile").read_text()
    found = {}
    for name in names:
        match = re.search(rf"\b{name}=(\S+)", text)
        if match is None:
            raise RuntimeError(f"the Dockerfile sets no {name}")
        found[name] = match.group(1)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m function.server` (the Dockerfile's CMD) on a free loopback port.

    `healthz_seconds` is process start to the first 200 from /healthz; leaving the
    block stops it (SIGTERM, as Knative does) and records the peak RSS.
    """

    SERVER_ENV = ("WORKERS", "THREADS", "CLOUD_RUN_TIMEOUT_SECONDS")

    def __init__(self, env: Mapping[str, str], log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._log_path = log_path
        self.started = 0.0
        self.healthz_seconds = 0.0
        self.peak_rss_mb = 0.0

    def _popen(self, log) -> subprocess.Popen:
        """The server process, writing to `log` (imagelib.container starts an image's instead)."""
        env = {**dockerfile_env(self.SERVER_ENV), **self._env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        return subprocess.Popen([sys.executable, "-m", "function.server"],
                                cwd=ROOT, env=python_env(env), stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        self._log = open(self._log_path, "w")
        self.started = time.perf_counter()
        self._process = self._popen(self._log)
        try:
            self.healthz_seconds = self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def pid(self) -> int:
        """The server process (the gunicorn master; its worker is a child)."""
        return self._process.pid

    def _wait_healthy(self) -> float:
        deadline = self.started + SERVER_START_SECONDS
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"server exited: {self._log_path.read_text()[-3000:]}")
                try:
                    if session.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                        return time.perf_counter() - self.started
                except requests.ConnectionError:
                    pass
                time.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError(f"server not healthy within {SERVER_START_SECONDS:g} s")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its gunicorn worker."""
        return tree_cpu_seconds(self._process.pid)

    def __exit__(self, *exc) -> None:
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            killer = threading.Timer(30, self._process.kill)
            killer.start()
            try:
                self.peak_rss_mb = _rss_mb(_wait(self._process)[1])
            finally:
                killer.cancel()
        self._log.close()
