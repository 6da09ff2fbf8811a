"""Images in buildah's local store: the config a runtime would follow, the layers a node
would pull, and the root filesystem mounted for reading and running."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

BUILDAH = "buildah"


class StoreError(RuntimeError):
    """buildah failed, or the image is not in its store."""


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """What a container runtime reads from the image before starting it."""

    user: str  # as the image says it: "10001", "app", "10001:999"...
    env: dict[str, str]
    workdir: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    layer_bytes: tuple[int, ...]  # each layer as an uncompressed tar: the unpacked size


def _buildah(*args: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run([BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise StoreError("buildah is not installed (Debian: apt-get install -y buildah)") from None
    if done.returncode != 0:
        raise StoreError(f"buildah {' '.join(args)}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def inspect(image: str) -> ImageConfig:
    """The image's OCI config and manifest, as stored."""
    found = json.loads(_buildah("inspect", "--type", "image", image))
    config = found["OCIv1"].get("config") or {}
    manifest = json.loads(found["Manifest"])
    return ImageConfig(
        user=config.get("User") or "0",
        env=dict(item.split("=", 1) for item in config.get("Env") or []),
        workdir=config.get("WorkingDir") or "/",
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        layer_bytes=tuple(layer["size"] for layer in manifest["layers"]),
    )


@contextlib.contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's root filesystem, mounted through a working container of its own that
    is removed afterwards (writes there never reach the image)."""
    name = f"image-check-{uuid.uuid4().hex[:12]}"
    _buildah("from", "--pull-never", "--name", name, image)
    try:
        yield Path(_buildah("mount", name).strip())
    finally:
        _buildah("rm", name)


def compressed_layer_bytes(image: str) -> tuple[int, ...]:
    """Each layer gzip-compressed, as `buildah push` sends it to a registry: what a node pulls."""
    with tempfile.TemporaryDirectory(prefix="image-layers-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        _buildah("push", "--quiet", "--compression-format", "gzip", image, f"oci:{tmp}:image")
        blobs = Path(tmp, "blobs", "sha256")
        (entry,) = json.loads(Path(tmp, "index.json").read_text())["manifests"]
        manifest = json.loads((blobs / entry["digest"].split(":", 1)[1]).read_text())
        return tuple(layer["size"] for layer in manifest["layers"])
