"""One HTTP/1.1 connection in hsmd's event loop: reads whole requests under deadlines, then hands them on.

A connection costs no worker until its request is whole: the TLS handshake,
the head and the body are read here, each within its deadline (checked by
Front's sweep, so the fast path arms no timer), and only then does
`Front.route` give the request to the worker pool, or answer it at once (the
next pipelined request is then read in a loop, not by recursion). Connections
are capped in all and per peer (an address, or on a Unix socket a uid); those
over a cap are closed as they are accepted. On a Unix socket the peer's credentials
(SO_PEERCRED) are checked before anything is read: a caller not allowed gets
403 and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from hsm.rpc.http import MAX_HEAD_BYTES, ChunkedBody, Head, HttpError, parse_head, response

log = logging.getLogger("hsm.rpc")

HANDSHAKE, HEAD, BODY, BUSY, IDLE, DONE = "handshake", "head", "body", "busy", "idle", "done"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MAX_BUFFERED = 256 * 1024  # pipelined bytes held while a worker answers, before reading pauses
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_READ_BYTES = 256 * 1024  # the most one read takes, as asyncio's own


@dataclass(frozen=True)
class Deadlines:
    header: float  # from a connection's start (TLS handshake included) or a request's first byte to its blank line
    body: float  # from the end of the head to the body's last byte
    idle: float  # between keep-alive requests, and for an answer the peer does not read


class HttpConnection(asyncio.BufferedProtocol):
    def __init__(self, front: Front) -> None:
        self._front = front
        self._buffer = bytearray()
        self._state = HANDSHAKE
        self._head: Head | None = None
        self._chunks: ChunkedBody | None = None
        self._keep_alive = True
        self._reading = True
        self._writable = True
        self._routing = False
        self.deadline = math.inf
        self.peer = ""
        self.transport: asyncio.Transport | None = None

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # the TLS transport start_tls made: nothing to do again
            return
        # asyncio types the argument for any protocol; a stream protocol such as this one gets a Transport.
        self.transport = stream = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if isinstance(peername, tuple) else "local"
        allowed = True
        if self._front.authorize is not None:
            try:
                pid, uid, gid = peer_credentials(transport.get_extra_info("socket"))
            except OSError as e:
                log.warning("Cannot read the credentials of a Unix socket peer: %s", e)
                pid, uid, gid = 0, -1, -1
            self.peer = f"uid {uid}"
            allowed = uid >= 0 and self._front.authorize(uid, gid)
        if not self._front.admit(self):
            self._state = DONE
            stream.abort()
            return
        self.deadline = self._front.loop.time() + self._front.deadlines.header
        if not allowed:
            log.warning("Refused connection of %s (pid %d, gid %d): not allowed to call hsmd", self.peer, pid, gid)
            self._refuse(HttpError(403, f"{self.peer} may not call hsmd"))
            return
        tls = self._front.tls
        if tls is None:
            self._state = HEAD
        else:
            self._front.loop.create_task(self._handshake(tls))

    @property
    def _stream(self) -> asyncio.Transport:
        """The transport, in every state that reads or writes (they all follow connection_made)."""
        assert self.transport is not None, "no transport before connection_made"
        return self.transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._front.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == DONE:
            return
        self._buffer += self._front.read_buffer[:nbytes]
        if self._state == IDLE and self._writable:
            self._state = HEAD
            self.deadline = self._front.loop.time() + self._front.deadlines.header
        if self._state in (HEAD, BODY):
            self._advance()
        elif len(self._buffer) > _MAX_BUFFERED and self._reading:
            self._reading = False
            self._stream.pause_reading()

    def eof_received(self) -> bool:
        if self._state == BUSY:  # a peer may half-close after its request: answer, then close
            self._keep_alive = False
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = DONE
        self._front.forget(self)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._state == IDLE:
            self._next()

    # Deadlines and stop, called by Front

    def expire(self) -> None:
        """Past its deadline: a request cut short gets 408, an idle connection just closes."""
        partial = self._state == BODY or (self._state == HEAD and self._buffer)
        if partial and self._writable:
            log.debug("Closing connection of %s: request not read in time", self.peer)
            self._refuse(HttpError(408, "request not received in time"))
        else:
            self._close(abort=True)

    def stop(self) -> None:
        """hsmd is stopping: close unless a request is on its way (it gets its answer first)."""
        self._keep_alive = False
        if self._state in (HANDSHAKE, IDLE) or (self._state == HEAD and not self._buffer):
            self._close(abort=True)

    # Reading requests

    async def _handshake(self, context: ssl.SSLContext) -> None:
        front = self._front
        try:
            tls = await front.loop.start_tls(self._stream, self, context, server_side=True,
                                             ssl_handshake_timeout=front.deadlines.header,
                                             ssl_shutdown_timeout=front.deadlines.header)
        except (OSError, TimeoutError, asyncio.CancelledError) as e:
            log.debug("TLS handshake with %s failed: %s", self.peer, e)
            self._close(abort=True)
            self._front.forget(self)  # asyncio does not always tell the protocol of a failed handshake
            return
        if tls is None or self._state != HANDSHAKE:  # lost, stopped or expired meanwhile
            if tls is not None:
                tls.abort()
            self._close(abort=True)
            self._front.forget(self)
            return
        self.transport = tls
        self._state = HEAD
        if self._buffer:
            self._advance()

    def _advance(self) -> None:
        """Route each whole request in the buffer in turn, as long as each is answered at once."""
        while self._state in (HEAD, BODY):
            try:
                if self._state == HEAD and not self._read_head():
                    return
                head = self._head
                assert head is not None, "BODY follows a head read"
                if not self._read_body(head):
                    return
            except HttpError as e:
                log.info("Refused request of %s: %s", self.peer, e)
                self._refuse(e)
                return
            body = self._body(head)
            self._state = BUSY
            self.deadline = math.inf
            self._keep_alive = head.keep_alive and not self._front.stopping
            self._routing = True  # an answer given at once leaves the next request to this loop
            try:
                self._front.route(self, head, body)
            finally:
                self._routing = False

    def _read_head(self) -> bool:
        while self._buffer.startswith(b"\r\n"):  # blank lines before a request are allowed
            del self._buffer[:2]
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HttpError(431, "request head too large")
            return False
        head = parse_head(bytes(self._buffer[:end]), self._front.max_body)
        del self._buffer[:end + 4]
        self._head = head
        self._chunks = ChunkedBody(self._front.max_body) if head.chunked else None
        self._state = BODY
        self.deadline = self._front.loop.time() + self._front.deadlines.body
        if head.expect_continue and (head.chunked or head.length) and not self._buffer:
            self._stream.write(_CONTINUE)
        return True

    def _read_body(self, head: Head) -> bool:
        if self._chunks is not None:
            return self._chunks.feed(self._buffer)
        return len(self._buffer) >= head.length

    def _body(self, head: Head) -> bytes:
        if self._chunks is not None:
            body = bytes(self._chunks.body)
            self._chunks = None
            return body
        length = head.length
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    # Answering

    def answer(self, reply: bytes) -> None:
        """Write the answer to the request read last, then read the next one."""
        if self._state == DONE:
            return
        self._stream.write(reply)
        if not self._keep_alive:
            self._close()
            return
        self._state = IDLE
        self.deadline = self._front.loop.time() + self._front.deadlines.idle
        self._next()

    def reply(self, status: int, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.answer(response(status, content_type, body, extra, close=not self._keep_alive))

    def _next(self) -> None:
        if not self._writable:
            return  # the peer is not reading its answer: wait, within the idle deadline
        if not self._reading:
            self._reading = True
            self._stream.resume_reading()
        if self._buffer:
            self._state = HEAD
            self.deadline = self._front.loop.time() + self._front.deadlines.header
            if not self._routing:
                self._advance()

    def _refuse(self, error: HttpError) -> None:
        """Answer `error` and close; what the peer still sends meanwhile is read and dropped."""
        self._state = DONE
        self._buffer.clear()
        message = f"{error}\n".encode()
        self._stream.write(response(error.status, "text/plain", message, close=True))
        self._close()

    def _close(self, abort: bool = False) -> None:
        """Close, flushing what is written unless `abort`; a peer that never reads is aborted at the deadline."""
        self._state = DONE
        self._keep_alive = False
        if self.transport is None or self.transport.is_closing():
            if self.transport is not None and abort:
                self.transport.abort()
            return
        if abort:
            self.transport.abort()
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the peer reads the answer, then closes; we drop what it sends
            self._linger()
        else:
            self.transport.close()
        self.deadline = self._front.loop.time() + self._front.deadlines.header

    def _linger(self) -> None:
        if not self._reading:
            self._reading = True
            self._stream.resume_reading()


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as the kernel saw it connect."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


class Front:
    """The connections of one listening socket: caps, deadlines, and handing whole requests to `route`.

    `authorize(uid, gid)`, given for a Unix socket, decides from the peer's credentials who may call.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, deadlines: Deadlines, max_body: int,
                 max_connections: int, max_per_peer: int, tls: ssl.SSLContext | None,
                 route: Callable[[HttpConnection, Head, bytes], None],
                 authorize: Callable[[int, int], bool] | None = None) -> None:
        self.loop = loop
        self.authorize = authorize
        self.deadlines = deadlines
        self.max_body = max_body
        self.tls = tls
        self.route = route
        self.stopping = False
        self._max = max_connections
        self._max_per_peer = max_per_peer
        self._connections: set[HttpConnection] = set()
        self._per_peer: dict[str, int] = {}
        self._refused_peers: set[str] = set()
        self._drained: asyncio.Event | None = None
        # What every connection reads into before taking its bytes (one loop thread: one at a time), so
        # that no read allocates a buffer of its own (asyncio's are 256 KiB, each shrunk to fit).
        self.read_buffer = memoryview(bytearray(_READ_BYTES))

    @property
    def count(self) -> int:
        return len(self._connections)

    def admit(self, conn: HttpConnection) -> bool:
        if self.stopping:
            return False
        held = self._per_peer.get(conn.peer, 0)
        if held >= self._max_per_peer or len(self._connections) >= self._max:
            if conn.peer not in self._refused_peers:  # once until it is back under the cap
                self._refused_peers.add(conn.peer)
                log.warning("Refusing connections from %s: %d open from it, %d in all (caps %d and %d)",
                            conn.peer, held, len(self._connections), self._max_per_peer, self._max)
            return False
        self._per_peer[conn.peer] = held + 1
        self._connections.add(conn)
        return True

    def forget(self, conn: HttpConnection) -> None:
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        held = self._per_peer.pop(conn.peer) - 1
        if held:
            self._per_peer[conn.peer] = held
        self._refused_peers.discard(conn.peer)
        if self._drained is not None and not self._connections:
            self._drained.set()

    def sweep(self) -> None:
        """Close every connection past its deadline."""
        now = self.loop.time()
        for conn in [c for c in self._connections if c.deadline <= now]:
            if conn.transport is not None and conn.transport.is_closing():
                conn.transport.abort()  # a close that could not flush in time
            else:
                conn.expire()

    async def drain(self, timeout: float) -> None:
        """Stop every connection; wait up to `timeout` for those with a request in progress to be answered."""
        self.stopping = True
        self._drained = asyncio.Event()
        for conn in list(self._connections):
            conn.stop()
        if self._connections:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                log.warning("Closing %d connections whose calls did not finish in time", len(self._connections))
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
