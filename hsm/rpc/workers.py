"""The pool of threads that run whole requests for hsmd's event loop (hsm.rpc.server)."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable

# The work, and what takes its outcome on the event loop: the reply, or the exception the work raised.
Job = tuple[Callable[[], bytes], Callable[[bytes | Exception], None]]


class Workers:
    """Up to `count` threads running whole requests, each result handed back to the event loop.

    The thread idle the shortest takes the next request (last in, first out),
    so a light load keeps running on one warm thread instead of waking them
    all in turn.
    """

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._count = count
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pending: collections.deque[Job] = collections.deque()
        self._started = 0
        self._stopping = False
        self._results_lock = threading.Lock()
        self._results: list[tuple[Callable[[bytes | Exception], None], bytes | Exception]] = []
        self._wake_pending = False

    def submit(self, work: Callable[[], bytes], done: Callable[[bytes | Exception], None]) -> None:
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
            elif self._started < self._count:
                self._started += 1
                worker = _Worker(self, f"rpc-{self._started}")
            else:
                self._pending.append((work, done))
                return
        worker.give((work, done))

    def stop(self) -> None:
        """Workers end once the requests queued so far are done."""
        with self._lock:
            self._stopping = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.give(None)

    def next_job(self, worker: _Worker) -> Job | None | bool:
        """A queued job; False when there is none and `worker` is now idle; None when workers must end."""
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            if self._stopping:
                return None
            self._idle.append(worker)
            return False

    def finish(self, job: Job) -> bool:
        work, done = job
        outcome: bytes | Exception
        try:
            outcome = work()
        except Exception as e:  # a worker outlives any request; its caller gets a 500
            outcome = e
        with self._results_lock:  # one wake-up of the loop for all the results that wait for it
            self._results.append((done, outcome))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: hsmd stopped without waiting for this call
                return False
        return True

    def _deliver(self) -> None:
        with self._results_lock:
            results, self._results, self._wake_pending = self._results, [], False
        for done, outcome in results:
            done(outcome)


class _Worker:
    def __init__(self, pool: Workers, name: str) -> None:
        self._pool = pool
        self._job: Job | None = None
        self._wake = threading.Lock()
        self._wake.acquire()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def give(self, job: Job | None) -> None:
        self._job = job
        self._wake.release()

    def _run(self) -> None:
        while True:
            self._wake.acquire()
            job: Job | None | bool = self._job
            while isinstance(job, tuple):  # else False: idle again, wait for give(); None: end
                if not self._pool.finish(job):
                    return
                job = self._pool.next_job(self)
            if job is None:
                return
