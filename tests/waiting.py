"""Tests wait on conditions, never on fixed sleeps: the one polling loop they share, and a clock they can move."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str | Callable[[], str] = "condition",
             poll: float = 0.02) -> T:
    """Poll `predicate` until it returns something true, and return that; fail after `timeout` seconds.

    `what` names the condition in the failure, or is called then to describe what was last seen. A
    predicate that sees the wait cannot succeed any more raises at once: that error goes to the caller.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what() if callable(what) else what} after {timeout} s")
        time.sleep(poll)


class FakeClock:
    """A clock for code that takes a `clock` callable: time moves only when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
