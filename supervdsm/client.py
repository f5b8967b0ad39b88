"""The client hsmd (and VDSM) use to call supervdsmd; it reconnects by itself."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from typing import Any

from hsm.errors import HsmError, SupervdsmCallError, SupervdsmUnavailable
from supervdsm import protocol

# supervdsmd's own limit for the verbs that do not use its call_timeout + 5 (supervdsm/verbs.py).
VERB_TIMEOUTS = {"ping": 5.0, "listBlockDevices": 30.0, "udevadmSettle": 620.0, "udevadmTrigger": 65.0,
                 "chown": 10.0, "chmod": 10.0}
ANSWER_MARGIN = 5.0  # seconds past a verb's limit the client waits for supervdsmd's own timeout answer


class SupervdsmClient:
    """Calls run side by side, each on a connection of its own from a small pool.

    At most `max_calls` calls are in flight at once; one more fails at once
    with SupervdsmUnavailable (5003), so a frozen supervdsmd ties up at most
    that many of the caller's threads (inside patient(), a task's thread
    waits for its turn instead). Each call waits for its answer as long
    as supervdsmd lets its verb run, plus a margin; past that it fails with
    5003. A call while supervdsmd is down fails within `connect_timeout` with
    5003; an error inside supervdsmd comes back with its own code. Connections
    lost while idle (supervdsmd restarted) are made anew by the next call.
    """

    def __init__(self, path: str, connect_timeout: float = 1.0, call_timeout: float = 60.0,
                 max_calls: int = 8) -> None:
        self.path = path
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._max_calls = max_calls
        self._slots = threading.BoundedSemaphore(max_calls)
        self._idle: list[socket.socket] = []  # connections with no call on them, the most recently used last
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._local = threading.local()  # patient(): this thread's calls wait for a slot

    def timeout(self, verb: str) -> float:
        """Seconds a call of `verb` waits for its answer."""
        return VERB_TIMEOUTS.get(verb, self._call_timeout + 5) + ANSWER_MARGIN

    @contextlib.contextmanager
    def patient(self) -> Iterator[None]:
        """Calls from this thread inside the block wait for a free slot, up to a call's own time limit,
        instead of failing at once: for task threads, whose work (a fix) may wait its turn, never for the
        RPC workers that must answer."""
        before = getattr(self._local, "patient", False)
        self._local.patient = True
        try:
            yield
        finally:
            self._local.patient = before

    def call(self, verb: str, **args: Any) -> Any:
        wait = self._call_timeout if getattr(self._local, "patient", False) else 0
        if not (self._slots.acquire(timeout=wait) if wait else self._slots.acquire(blocking=False)):
            raise SupervdsmUnavailable(f"{verb}: {self._max_calls} calls already wait on supervdsmd")
        try:
            answer = self._exchange({"id": next(self._ids), "verb": verb, "args": args})
        finally:
            self._slots.release()
        if "error" in answer:
            raise _remote_error(answer["error"])
        return answer.get("result")

    def _exchange(self, request: dict) -> dict:
        verb = request["verb"]
        for attempt in (1, 2):  # a connection dropped while idle gets one fresh try
            sock, reused = self._checkout()
            try:
                sock.settimeout(self.timeout(verb))
                protocol.send_frame(sock, request)
                answer = protocol.recv_frame(sock)
                if answer.get("id") != request["id"]:
                    raise protocol.ProtocolError(f"answer to call {answer.get('id')!r}, not {request['id']}")
            except (OSError, protocol.ProtocolError) as e:
                sock.close()
                if reused:
                    self.close()  # the other idle connections were made to the same, likely gone, supervdsmd
                if attempt == 2 or isinstance(e, TimeoutError) or not reused:
                    raise SupervdsmUnavailable(f"{verb}: {e}") from None
                continue
            with self._lock:
                self._idle.append(sock)
            return answer
        raise AssertionError("unreachable")

    def _checkout(self) -> tuple[socket.socket, bool]:
        """An idle connection (True), else a new one (False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self._connect_timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise SupervdsmUnavailable(f"{self.path}: {e.strerror or e}") from None
        return sock

    def close(self) -> None:
        """Close the idle connections; calls in flight keep theirs, and later calls connect anew."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


def _remote_error(status: dict) -> HsmError:
    """supervdsmd's error with its own code and message."""
    error = SupervdsmCallError()
    error.code = int(status.get("code", SupervdsmCallError.code))
    error.message = status.get("message", SupervdsmCallError.message)
    return error
