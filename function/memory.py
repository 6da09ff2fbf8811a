"""Make freed image buffers go back to the system (glibc), so a busy process stays small."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter, <malloc.h>
MMAP_THRESHOLD_BYTES = 1024 * 1024


def return_big_buffers() -> bool:
    """glibc serves allocations below a threshold from per-thread heaps that keep what is
    freed, and raises that threshold (up to 32 MiB) whenever a bigger buffer is freed: after
    one decoded image, image-sized buffers come from heaps, and each of up to 8 x cores
    heaps keeps its own peak. A fixed 1 MiB threshold sends them to mmap, returned on free.
    True if set; False where the C library is not glibc (nothing to tune)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False
