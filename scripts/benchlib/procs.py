"""Processes under measurement: wall time and peak RSS of one run, and a real server
instance started the way the Dockerfile starts it (`python -m function.server`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
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
    peak_rss_mb: float  # of the process and every descendant it waited for, never its parent's
    cpu_seconds: float  # user + system, likewise
    stdout: str
    stderr: str


def python_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This interpreter's environment without the caller's CLASSIFIER_* settings, plus `extra`;
    scripts/ is importable (for benchlib.baseline, benchlib.probe and benchlib.measure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIFIER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def run(args: Sequence[str], env: Mapping[str, str], timeout: float) -> Finished:
    """Run `python args...` from the repository root through benchlib.measure (which says
    why): wall time from spawn to exit, peak RSS and CPU time of that process alone."""
    with tempfile.TemporaryDirectory() as tmp, \
            tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        result = Path(tmp) / "measured.json"
        subprocess.run([sys.executable, "-m", "benchlib.measure", str(result), str(timeout), sys.executable, *args],
                       cwd=ROOT, env=dict(env), stdout=out, stderr=err, check=True, timeout=timeout + 60)
        measured = json.loads(result.read_text())
        out.seek(0)
        err.seek(0)
        return Finished(measured["returncode"], measured["seconds"], measured["peak_rss_mb"],
                        measured["cpu_seconds"], out.read(), err.read())


def checked(finished: Finished, what: str) -> Finished:
    if finished.returncode != 0:
        raise RuntimeError(f"{what} exited with {finished.returncode}:\n{finished.stderr[-3000:]}")
    return finished


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of one live process, from /proc: its own peak since its
    exec, whatever its parent had (unlike a child's ru_maxrss)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def tree_memory_mb(pid: int, field: str = "VmHWM") -> list[float]:
    """`field` (VmRSS or VmHWM) of `pid` and of each live descendant; a process gone
    meanwhile counts 0."""
    try:
        own, below = memory_mb(pid)[field], children(pid)
    except FileNotFoundError:
        return [0.0]
    return [own, *(mb for child in below for mb in tree_memory_mb(child, field))]


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
    block stops it (SIGTERM, as Knative does), first recording each process's memory.
    """

    SERVER_ENV = ("WORKERS", "THREADS", "CLASSIFIER_LITERT_THREADS", "CLOUD_RUN_TIMEOUT_SECONDS")

    def __init__(self, env: Mapping[str, str], log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._env = {**dockerfile_env(self.SERVER_ENV), **env, "PORT": str(self.port)}
        self.log_path = log_path
        self.started = 0.0
        self.healthz_seconds = 0.0
        self.final_memory: dict = {}

    def _popen(self, log) -> subprocess.Popen:
        """The server process, writing to `log` (imagelib.container starts an image's instead)."""
        env = {**self._env, "HOST": "127.0.0.1"}
        return subprocess.Popen([sys.executable, "-m", "function.server"],
                                cwd=ROOT, env=python_env(env), stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        self._log = open(self.log_path, "w")
        self.started = time.perf_counter()
        self._process = self._popen(self._log)
        try:
            self.healthz_seconds = self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def workers(self) -> int:
        """gunicorn workers it runs (their processes may still be starting)."""
        return int(self._env["WORKERS"])

    @property
    def pid(self) -> int:
        """The server process (the gunicorn master; its workers are children)."""
        return self._process.pid

    def _wait_healthy(self) -> float:
        deadline = self.started + SERVER_START_SECONDS
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
                try:
                    if session.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                        return time.perf_counter() - self.started
                except requests.ConnectionError:
                    pass
                time.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError(f"server not healthy within {SERVER_START_SECONDS:g} s")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its gunicorn workers."""
        return tree_cpu_seconds(self._process.pid)

    def memory(self) -> dict:
        """Each process's VmRSS and VmHWM in MB: the gunicorn master, and its workers."""
        return {"master": memory_mb(self.pid), "workers": [memory_mb(pid) for pid in children(self.pid)]}

    def __exit__(self, *exc) -> None:
        if self._process.returncode is None:
            try:
                self.final_memory = self.memory()
            except FileNotFoundError:  # it died: nothing left to read
                pass
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
