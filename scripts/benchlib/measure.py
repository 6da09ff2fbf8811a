"""Run one command and report its own wall time, peak RSS and CPU time as JSON.

Why a process of its own: Linux hands a child the peak RSS of the memory it was
forked (or vforked) from, across exec, so every child of a bench that has grown to
gigabytes would report gigabytes (`ru_maxrss`). Started from this small process, a
measured command inherits this process's ~10 MB at most, whatever its caller grew to.

`python -m benchlib.measure RESULT_JSON TIMEOUT_S COMMAND...`: the command inherits
stdin, stdout and stderr; a command still running after TIMEOUT_S is killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time


def main(argv: list[str]) -> int:
    result_path, timeout, *command = argv
    started = time.perf_counter()
    process = subprocess.Popen(command)
    killer = threading.Timer(float(timeout), process.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)  # the command and every child it waited for
    finally:
        killer.cancel()
    seconds = time.perf_counter() - started
    with open(result_path, "w") as result:
        json.dump({"returncode": os.waitstatus_to_exitcode(status), "seconds": seconds,
                   "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
                   "cpu_seconds": usage.ru_utime + usage.ru_stime}, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
