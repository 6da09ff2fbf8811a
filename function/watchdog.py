"""Deadlines kept by one thread per process.

Every download (and every request still arriving) has a deadline that shuts its socket
when it passes. A `threading.Timer` per deadline starts and joins an OS thread for each
image: at loopback speed that cost about a quarter of a millisecond of CPU per image
(docs/performance.md, Levers). Here one thread waits for the earliest deadline instead,
and a deadline that ends in time is only marked.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Alarm:
    """`callback` due at `when` (time.monotonic()), unless cancelled first."""

    when: float
    callback: Callable[[], None] | None

    def cancel(self) -> None:
        """Dropping the callback also lets go of what it holds (a download's sockets)
        without waiting for the deadline to pass."""
        self.callback = None


class Watchdog:
    """Runs every alarm's callback on one thread of its own, started on first use."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # equal deadlines never compare their alarms
        self._thread: threading.Thread | None = None

    def after(self, seconds: float, callback: Callable[[], None]) -> Alarm:
        alarm = Alarm(time.monotonic() + seconds, callback)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._due, (alarm.when, next(self._order), alarm))
            if self._due[0][2] is alarm:  # sooner than what the thread waits for
                self._changed.notify()
        return alarm

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, alarm = heapq.heappop(self._due)
            callback = alarm.callback
            if callback is not None:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - the thread keeps every other deadline
                    logger.exception("a deadline's callback failed")


_watchdog = Watchdog()


def after(seconds: float, callback: Callable[[], None]) -> Alarm:
    """Call `callback` on the process's watchdog thread in `seconds`, unless cancelled."""
    return _watchdog.after(seconds, callback)


def _forked() -> None:
    """A forked child (a gunicorn worker) has none of its parent's threads: a new watchdog."""
    global _watchdog
    _watchdog = Watchdog()


os.register_at_fork(after_in_child=_forked)
