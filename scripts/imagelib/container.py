"""Run an image's root filesystem the way a container runtime would, without one.

Where `podman run` cannot start containers (its OCI runtime fails to set rlimits in some
sandboxes), this runs the mounted root filesystem of an image (`store.mounted`) with its
own config: `unshare` makes new PID and mount namespaces (the host's network stays, so
loopback reaches the server), the root filesystem is remounted read-only with a tmpfs at
/tmp (knative/service.yaml's readOnlyRootFilesystem and its emptyDir), /proc and a minimal
/dev are mounted, and `chroot --userspec` starts the image's CMD as the image's USER with
exactly the image's ENV (plus overrides) in its WORKDIR. Needs root on Linux, and
/usr/bin/env in the image (coreutils).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchlib import procs

from .store import ImageConfig

STOP_SECONDS = 30.0

# Runs as root in the new namespaces, then becomes the image's process: PID 1 stays this
# shell (killed with unshare, it takes the whole namespace down), the app is its child.
_SETUP = r"""
set -e
root=$1
shift
mount --rbind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=755,size=64k tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : > "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
chroot "$@" &
wait $!
"""


class ContainerError(RuntimeError):
    """The image cannot be run as its config says (user, command)."""


def _ids(rootfs: Path, user: str) -> tuple[int, int]:
    """uid and gid for an image USER (name or id, optionally :group), from the image's own files."""
    name, _, group = user.partition(":")

    def lookup(table: str, key: str) -> list[str] | None:
        for line in (rootfs / "etc" / table).read_text().splitlines():
            fields = line.split(":")
            if key in (fields[0], fields[2]):
                return fields
        return None

    entry = lookup("passwd", name)
    if entry is None and not name.isdigit():
        raise ContainerError(f"the image's USER {name!r} is not in its /etc/passwd")
    uid = int(entry[2]) if entry else int(name)
    if group:
        found = lookup("group", group)
        if found is None and not group.isdigit():
            raise ContainerError(f"the image's group {group!r} is not in its /etc/group")
        gid = int(found[2]) if found else int(group)
    else:
        gid = int(entry[3]) if entry else uid
    return uid, gid


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # exited meanwhile
        return []


def tree(pid: int) -> list[int]:
    """`pid` and its live descendants (Linux /proc)."""
    return [pid, *(p for child in _children(pid) for p in tree(child))]


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # exited meanwhile
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@dataclasses.dataclass(frozen=True)
class Container:
    """The image at `rootfs` with `config`; `env` overrides the image's ENV."""

    rootfs: Path
    config: ImageConfig
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ids(self) -> tuple[int, int]:
        """The uid and gid the image's USER runs as."""
        return _ids(self.rootfs, self.config.user)

    def command(self, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> list[str]:
        """The host command that runs `argv` (default: the image's CMD) after its ENTRYPOINT."""
        program = [*self.config.entrypoint, *(self.config.cmd if argv is None else argv)]
        if not program:
            raise ContainerError("the image has neither ENTRYPOINT nor CMD, and no command was given")
        uid, gid = self.ids
        variables = {**self.config.env, **self.env, **(env or {})}
        return [shutil.which("unshare") or "unshare", "--pid", "--fork", "--mount", "--kill-child",
                "sh", "-c", _SETUP, "sh", str(self.rootfs),
                f"--userspec={uid}:{gid}", "--groups=", str(self.rootfs),
                "/usr/bin/env", "-i", "-C", self.config.workdir,
                *(f"{key}={value}" for key, value in variables.items()), *program]

    def run(self, argv: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run one command in the image, as its user, and wait for it."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)

    def serve(self, log_path: Path) -> "Server":
        """The image's CMD on a free loopback port (PORT), as a context manager."""
        return Server(self, log_path)


class Server(procs.Server):
    """The image's CMD on a free loopback port (PORT), started and timed like `procs.Server`'s
    instance (`healthz_seconds`: process start to the first 200 from /healthz), stopped on
    leaving with SIGTERM to the app, as Knative does. `pid` is the app's main process (the
    CMD), whose tree `memory_mb` and `uids` read."""

    def __init__(self, container: Container, log_path: Path):
        super().__init__({}, log_path)
        self._command = container.command(env={"PORT": str(self.port)})
        self._app = 0

    def _popen(self, log) -> subprocess.Popen:
        return subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)

    def _wait_healthy(self) -> float:
        seconds = super()._wait_healthy()
        (init,) = _children(self._process.pid)  # PID 1 of the namespace: the setup shell
        (self._app,) = _children(init)  # by now its only child: the app
        return seconds

    @property
    def pid(self) -> int:
        return self._app

    def processes(self) -> list[int]:
        return tree(self._app) if self._app else []

    def memory_mb(self, field: str = "VmHWM") -> float:
        """`field` summed over the app's processes: VmHWM is each one's peak resident set, so
        the sum bounds the container's peak from above (pages a fork shares count twice)."""
        return sum(procs.tree_memory_mb(self._app, field)) if self._app else 0.0

    def uids(self) -> set[int]:
        """Real, effective, saved and filesystem uids of every process of the app."""
        return {int(uid) for pid in self.processes() for uid in _status(pid).get("Uid", "").split()}

    def __exit__(self, *exc) -> None:
        if self._process.poll() is None:
            try:
                if not self._app:
                    raise subprocess.TimeoutExpired(self._command, 0)  # nothing to stop gently
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._app, signal.SIGTERM)
                self._process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()  # unshare --kill-child: the namespace goes with it
                self._process.wait()
        self._log.close()
