"""The client hsmd (and VDSM) use to call supervdsmd; it reconnects by itself."""

from __future__ import annotations

import itertools
import socket
import threading
from typing import Any

from hsm.errors import HsmError, SupervdsmCallError, SupervdsmUnavailable
from supervdsm import protocol


class SupervdsmClient:
    """One connection, shared by threads one call at a time; a lost connection is made anew on the next call.

    A call while supervdsmd is down fails within `connect_timeout` with
    SupervdsmUnavailable (5003); an error inside supervdsmd comes back with its
    own code.
    """

    def __init__(self, path: str, connect_timeout: float = 1.0, call_timeout: float = 60.0) -> None:
        self.path = path
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self._connect_timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise SupervdsmUnavailable(f"{self.path}: {e.strerror or e}") from None
        sock.settimeout(self._call_timeout)
        return sock

    def call(self, verb: str, **args: Any) -> Any:
        with self._lock:
            for attempt in (1, 2):  # a connection dropped while idle gets one fresh try
                if self._sock is None:
                    self._sock = self._connect()
                call_id = next(self._ids)
                try:
                    protocol.send_frame(self._sock, {"id": call_id, "verb": verb, "args": args})
                    answer = protocol.recv_frame(self._sock)
                    break
                except (OSError, protocol.ProtocolError) as e:
                    self.close_locked()
                    if attempt == 2 or isinstance(e, TimeoutError):
                        raise SupervdsmUnavailable(f"{verb}: {e}") from None
        if "error" in answer:
            raise _remote_error(answer["error"])
        return answer.get("result")

    def close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


def _remote_error(status: dict) -> HsmError:
    """supervdsmd's error with its own code and message."""
    error = SupervdsmCallError()
    error.code = int(status.get("code", SupervdsmCallError.code))
    error.message = status.get("message", SupervdsmCallError.message)
    return error
