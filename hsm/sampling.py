"""SamplingMethod: one run of a slow read shared by every caller that came while the last one ran."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SamplingMethod(Generic[T]):
    """Runs `func` for callers that come together: each gets the outcome of a run that started after it came.

    A caller that comes while a run is under way waits for the next run, and
    all those waiting share that one: any number of callers at once cause at
    most two runs. A run's exception goes to every caller that shared it.
    """

    def __init__(self, func: Callable[[], T]) -> None:
        self._func = func
        self._changed = threading.Condition()
        self._started = 0
        self._finished = 0
        self._waiting = 0
        self._outcome: tuple[T | None, Exception | None] = (None, None)

    def __call__(self) -> T:
        with self._changed:
            wanted = self._started + 1  # the first run to start from now on
            while self._finished < wanted:
                if self._started == self._finished:  # nothing running: this caller runs it
                    self._started += 1
                    break
                self._waiting += 1
                self._changed.wait()
                self._waiting -= 1
            else:
                return self._result(self._outcome)
        outcome: tuple[T | None, Exception | None] = (None, RuntimeError("the sampled run was interrupted"))
        try:
            outcome = (self._func(), None)
        except Exception as e:
            outcome = (None, e)
        finally:
            with self._changed:
                self._finished += 1
                self._outcome = outcome
                self._changed.notify_all()
        return self._result(outcome)

    @property
    def waiting(self) -> int:
        """Callers waiting for a run to end."""
        with self._changed:
            return self._waiting

    @staticmethod
    def _result(outcome: tuple[T | None, Exception | None]) -> T:
        result, error = outcome
        if error is not None:
            raise error
        return result  # type: ignore[return-value]
