"""Freed big buffers go back to the system: what many threads decoding images need."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, python_env
from function import memory

def _growth_in_a_fresh_process(work: str, threads: int) -> float:
    """MiB a new interpreter's RSS grew by while `threads` threads ran `work(i)` (defined by
    the source `work`) with malloc tuned as the server tunes it: a heap's history is per
    process."""
    script = f"""
import threading
from function import memory
assert memory.tune_malloc()  # as the server sets it
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
before = rss()
together = threading.Barrier({threads})
{work}
threads = [threading.Thread(target=work, args=(i,)) for i in range({threads})]
[t.start() for t in threads]
[t.join() for t in threads]
print(rss() - before)
"""
    return float(_in_a_fresh_process(script))


CHURN = """
def work(i):  # decode-like: image-sized buffers of 8..15 MiB, touched, then freed
    together.wait()
    for n in range(6):
        buffer = bytearray((8 + (i + n) % 8) * 1024 * 1024)
        buffer[::4096] = b"x" * len(buffer[::4096])
        del buffer
"""


def _in_a_fresh_process(script: str) -> str:
    """What `script` prints, run in a new interpreter: a heap's history is per process."""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=python_env({}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_buffers_freed_by_many_threads_leave_the_process():
    """In a fresh process; glibc's defaults keep about 110 MiB of this resident."""
    assert _growth_in_a_fresh_process(CHURN, 8) < 16


BURST = """
idle = memory.IdleTrim()
kept = []  # what outlives a request (caches, pooled connections) lands above its chunks
def work(i):  # download-like
    with idle.working():  # each a request's work; the last to end trims
        together.wait()
        chunks = [bytes(64 * 1024) for _ in range(160)]  # 10 MiB in download-sized chunks
        kept.append(bytes(4096))  # above pymalloc's 512 bytes: from the same heap
        del chunks
"""


def test_a_burst_of_downloads_gives_its_memory_back_when_the_last_request_ends():
    """In a fresh process: 32 concurrent downloads' 64 KiB chunks sit below the mmap
    threshold; freed under a live object, per-thread heaps keep them without the trim."""
    assert _growth_in_a_fresh_process(BURST, 32) < 24


HEAPS = """
def work(i):  # requests at once, each holding 3 MiB in download-sized chunks
    together.wait()
    chunks = [bytearray(64 * 1024) for _ in range(48)]
    for chunk in chunks:
        chunk[::4096] = b"x" * len(chunk[::4096])
    together.wait()
    del chunks
"""


def test_threads_share_two_heaps_so_freed_memory_kept_for_reuse_stays_small():
    """In a fresh process: with glibc's heap per thread (up to 8 x cores), each keeps what its
    thread freed below the trim threshold, 48 MiB here; two heaps keep 24 MiB."""
    assert _growth_in_a_fresh_process(HEAPS, 16) < 36


REUSE = """
import resource, threading
from function import memory
assert memory.tune_malloc()  # as the server sets it
def received(size):  # written into, as a download's buffer is (calloc'd pages untouched never fault)
    buffer = bytearray(size)
    buffer[::4096] = b"x" * len(buffer[::4096])
    return buffer
def requests(n):  # each frees a 2 MiB photo's body and 1 MiB of 64 KiB chunks
    for _ in range(n):
        body, chunks = received(2 * 1024 * 1024), [received(64 * 1024) for _ in range(16)]
        del body, chunks
faults = []
def worker():
    requests(5)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    requests(40)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(faults[0])
"""


def test_a_heap_keeps_what_the_next_request_reuses():
    """In a fresh process: with the trim threshold left at 128 KiB by the fixed mmap
    threshold, each of these requests gave its chunks back and faulted them in again, and
    with a 1 MiB mmap threshold its body was fresh pages each time (~20 000 page faults
    either way); kept, they fault nothing."""
    assert int(_in_a_fresh_process(REUSE)) < 500


def test_the_container_memory_limit_comes_from_its_cgroup(tmp_path):
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v1.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert memory.container_limit((str(v2), str(v1))) is None
    v2.write_text("max\n")
    assert memory.container_limit((str(v2), str(v1))) is None
    v2.write_text("1610612736\n")
    assert memory.container_limit((str(v2), str(v1))) == 1536 * 1024 * 1024
    assert memory.container_limit((str(tmp_path / "none"),)) is None
