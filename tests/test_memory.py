"""Freed big buffers go back to the system: what many threads decoding images need."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, python_env

CHURN = """
import threading
from function import memory
assert memory.return_big_buffers()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
before = rss()
start = threading.Barrier(8)
def decode_like(i):
    start.wait()
    for n in range(6):  # image-sized buffers of 8..15 MiB, touched, then freed
        buffer = bytearray((8 + (i + n) % 8) * 1024 * 1024)
        buffer[::4096] = b"x" * len(buffer[::4096])
        del buffer
threads = [threading.Thread(target=decode_like, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(rss() - before)
"""


def test_buffers_freed_by_many_threads_leave_the_process():
    """In a fresh process; glibc's defaults keep about 110 MiB of this resident."""
    done = subprocess.run([sys.executable, "-c", CHURN], cwd=ROOT, env=python_env({}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 16
