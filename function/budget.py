"""Process-wide budgets: how much of one resource all requests together may hold at once.

A PNG of a few kilobytes decodes to tens of megabytes, a gzip of one megabyte inflates
to a gigabyte: each image is bounded, but only a budget bounds them together. Beyond
it, takers wait their turn; one taker alone always may go, whatever it asks for.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator


class Budget:
    """`capacity` units (pixels, bytes) shared by every thread of the process."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = capacity
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        return self.capacity - self._free

    def take(self, amount: int, timeout: float | None = None) -> int:
        """Wait until `amount` (at most the capacity) is free and take it; returns what was
        taken. TimeoutError when it is not free within `timeout` seconds."""
        amount = min(amount, self.capacity)
        with self._changed:
            if not self._changed.wait_for(lambda: self._free >= amount, timeout):
                raise TimeoutError(f"{amount} of {self.capacity} not free within {timeout:g} s")
            self._free -= amount
        return amount

    def give(self, amount: int) -> None:
        with self._changed:
            self._free += amount
            self._changed.notify_all()

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """`amount` taken for the block, given back after it, however it ends."""
        taken = self.take(amount)
        try:
            yield
        finally:
            self.give(taken)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """A lease for one piece of work, current in this context for the block (code that
        holds the resource deep inside it takes through `current_lease`) and given back
        whole when the block ends."""
        lease = Lease(self)
        token = _current.set(lease)
        try:
            yield lease
        finally:
            _current.reset(token)
            lease.release()


class Lease:
    """What one piece of work holds of a budget: reserved whole, shrunk to what was used,
    released when the work is done. Reserving all at once (never growing bit by bit) is
    what keeps two half-done takers from waiting on each other forever."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.held = 0

    def reserve(self, amount: int, timeout: float) -> None:
        """Hold `amount` in all, in place of what the lease held (one body at a time);
        TimeoutError when the budget cannot spare it within `timeout` seconds."""
        self.release()
        self.held = self.budget.take(amount, max(0.0, timeout))

    def shrink(self, amount: int) -> None:
        """Keep only `amount`, giving the rest back at once."""
        surplus = self.held - max(0, amount)
        if surplus > 0:
            self.held -= surplus
            self.budget.give(surplus)

    def release(self) -> None:
        self.shrink(0)


_current: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("budget_lease", default=None)


def current_lease() -> Lease | None:
    """The lease of the work running in this context, if any."""
    return _current.get()
