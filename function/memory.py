"""Give freed memory back to the system (glibc), so a busy process shrinks after a burst,
and know how much memory the container may use."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from pathlib import Path

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024
ARENAS = 2
# cgroup v2, then v1: where a container's memory limit is read from
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
UNLIMITED_BYTES = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


_LIBC = _libc()


def tune_malloc() -> bool:
    """Big buffers back to the system when freed; the small ones kept for reuse.

    glibc serves allocations below a threshold from per-thread heaps that keep what is
    freed, and raises that threshold (up to 32 MiB) whenever a bigger buffer is freed: after
    one big image, buffers of that size come from heaps, and each of up to 8 x cores heaps
    keeps its own peak (the hostile run peaked at 897 MB, over the pod's limit). A fixed
    4 MiB threshold sends the big ones (20 MB downloads, full-size decodes) to mmap,
    returned on free, while a photo's body (0.1-3 MB) still comes from a heap: at 1 MiB,
    each one was fresh pages to fault in, ~0.7 ms of CPU per image at full load.
    Fixing it also fixes the trim threshold at its 128 KiB default: a heap then gives back
    its free top on nearly every request and faults it in again on the next, ~1 ms of CPU
    per image more. Each heap keeps up to 4 MiB instead (16 MiB added 90 MB to the hostile
    run's peak); `trim` still empties them all when the process goes idle. And all threads
    share two heaps: the pipeline's threads outlive requests, each staying on the heap it
    first used, and with glibc's up to 8 x cores heaps the hostile run peaked at 505-525 MB
    against 422 MB with two, at the same images/s. Measured in interleaved runs at 32
    clients and in `scripts/loadtest --hostile` (docs/performance.md).
    True if set; False where the C library is not glibc (nothing to tune)."""
    try:
        return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                    and _LIBC.mallopt(M_ARENA_MAX, ARENAS))
    except (AttributeError, TypeError):
        return False


def trim() -> bool:
    """Hand the free pages of every heap back to the system (`malloc_trim(0)`). Download
    chunks (64 KiB) and the many small objects of a burst stay below the mmap threshold:
    freed, they leave per-thread heaps holding hundreds of megabytes (measured: 64
    concurrent 20 MB downloads left 550-730 MB resident after the last was freed; one
    trim, in 30 ms, brought the process back to 70 MB). False where there is no glibc."""
    try:
        return bool(_LIBC.malloc_trim(0))
    except (AttributeError, TypeError):
        return False


class IdleTrim:
    """Counts the work in flight and trims when the last piece ends: after any burst the
    process returns near its idle size, and steady traffic pays nothing per request."""

    def __init__(self):
        self._busy = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                idle = self._busy == 0
            if idle:
                trim()


def container_limit(paths: tuple[str, ...] = CGROUP_LIMITS) -> int | None:
    """The container's memory limit in bytes (its cgroup's), or None where there is none."""
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < UNLIMITED_BYTES:
            return int(text)
        return None  # "max", or v1's near-2**63: no limit
    return None
