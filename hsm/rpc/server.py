"""hsmd's HTTP side: XML-RPC on POST /RPC2 and Prometheus text on GET /metrics.

One event-loop thread accepts connections, runs TLS handshakes and reads each
request whole, under deadlines (hsm.rpc.connection); only then does a worker
of a bounded pool parse and run it. Idle, slow or never-handshaking peers
therefore cost a socket and a little memory, never a worker. A small request
naming a quick verb (ping: no I/O, no lock held long) is answered on the loop
itself, since handing it to a worker and back would cost more than the verb.

The same API is also served on a Unix socket when `unix_socket` is set, without
TLS: there the kernel names the caller (SO_PEERCRED), and only the uids listed
in `allowed_uids`, hsmd's own uid and members of the socket's group may call.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import grp
import logging
import os
import pwd
import resource
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hsm.api.dispatch import BadArguments, Dispatcher, UnknownVerb
from hsm.rpc import marshal
from hsm.rpc.connection import Deadlines, Front, HttpConnection
from hsm.rpc.http import Head, response
from hsm.rpc.metrics import CONTENT_TYPE_LATEST, Metrics
from hsm.rpc.workers import Workers

log = logging.getLogger("hsm.rpc")

RPC_PATHS = ("/RPC2", "/")
_SWEEP_INTERVAL = 0.25  # seconds between deadline checks
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters
_MALLOC_THRESHOLD = 128 * 1024  # glibc's default for both
_SMALL_BODY = 1024  # bytes: a request this small is read on the event loop, to answer a quick verb there


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    threads: int = 16
    listen_backlog: int = 1024
    max_connections: int = 1000
    max_connections_per_peer: int = 128
    max_request_bytes: int = 10 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    tls: tuple[str, str, str] | None = None  # key, cert, CA
    unix_socket: str = ""  # empty: TCP only
    unix_socket_group: str = ""  # empty: hsmd's own group
    unix_socket_mode: int = 0o660
    allowed_uids: tuple[int, ...] = (0,)


def _tls_context(key_file: str, cert_file: str, ca_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_REQUIRED  # as VDSM: no client certificate, no service
    return context


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=backlog)


def _listen_unix(path: str, group: str, mode: int, backlog: int) -> socket.socket:
    """A listening Unix socket at `path`, replacing a stale one (a socket nobody listens on)."""
    if len(os.fsencode(path)) >= 108:
        raise OSError(errno.ENAMETOOLONG, f"Unix socket path longer than 107 bytes: {path}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                log.info("Removing stale socket %s", path)
                os.unlink(path)
            else:
                raise OSError(errno.EADDRINUSE, f"another process serves on {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # nobody can connect before the mode and group are set
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        if group:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        _unlink_quietly(path)
        raise
    return sock


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class UnixCallers:
    """Who may call on the Unix socket: listed uids, hsmd's own uid, members of the socket's group."""

    def __init__(self, allowed_uids: tuple[int, ...], group: str) -> None:
        self._uids = frozenset(allowed_uids) | {os.getuid()}
        self._gid = grp.getgrnam(group).gr_gid if group else None

    def __call__(self, uid: int, gid: int) -> bool:
        if uid in self._uids:
            return True
        if self._gid is None:
            return False
        if gid == self._gid:
            return True
        try:
            user = pwd.getpwuid(uid)
            return self._gid in os.getgrouplist(user.pw_name, user.pw_gid)
        except (KeyError, OSError):
            return False


def _pin_malloc_thresholds() -> None:
    """Keep glibc's malloc giving freed memory back to the system as it does at start.

    Once a block over its mmap threshold (128 KiB) is freed, glibc raises that
    threshold to the block's size and lets every malloc arena keep twice as
    much free memory. hsmd frees such blocks all along (the table of a dict of
    10,000 requestId answers, the task journal's snapshot), and each of its
    threads (16 RPC workers, the tasks') allocates in an arena of its own: the
    arenas grew by some 1 MB a minute under load. Set, the thresholds stay put.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, _MALLOC_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _MALLOC_THRESHOLD)


def _allow_open_files(needed: int) -> None:
    """Raise the soft limit on open files toward the hard one, so accepting never fails with EMFILE first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class RpcApplication:
    """What a worker does with a whole request: XML-RPC calls and faults, metrics."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics

    def answer(self, body: bytes, call: tuple[str, tuple] | None = None) -> bytes:
        """The answer to the XML-RPC request `body`, whose call may have been read already (`call`)."""
        try:
            name, params = call if call is not None else marshal.load_call(body)
            return marshal.dump_answer(self._dispatcher.call(name, params))
        except marshal.RequestError as e:
            code, message = e.code, str(e)
        except UnknownVerb as e:
            code, message = marshal.METHOD_NOT_FOUND, str(e)
        except BadArguments as e:
            code, message = marshal.INVALID_PARAMS, str(e)
        log.info("Refused request: %s", message)
        return marshal.dump_fault(code, message)

    def read_small(self, body: bytes) -> tuple[str, tuple] | None:
        """The call in a small well-formed body; None for any other (a worker reads it and answers its fault)."""
        if len(body) > _SMALL_BODY:
            return None
        try:
            return marshal.load_call(body)
        except marshal.RequestError:
            return None

    def quick(self, call: tuple[str, tuple]) -> bool:
        """Whether `call` is answered at once, with no I/O and no lock held long: no need for a worker."""
        return self._dispatcher.quick(call[0])

    def metrics(self) -> bytes:
        return self._metrics.render()


class RpcServer:
    """Binds at construction (so a busy port fails start-up), serves in serve_forever()."""

    def __init__(self, settings: ServerSettings, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self._settings = settings
        self._app = RpcApplication(dispatcher, metrics)
        self._tls = _tls_context(*settings.tls) if settings.tls else None
        self._sock = _listen(settings.host, settings.port, settings.listen_backlog)
        self._unix_sock: socket.socket | None = None
        self._unix_inode: tuple[int, int] | None = None
        if settings.unix_socket:
            authorize = UnixCallers(settings.allowed_uids, settings.unix_socket_group)
            try:
                self._unix_sock = _listen_unix(settings.unix_socket, settings.unix_socket_group,
                                               settings.unix_socket_mode, settings.listen_backlog)
            except BaseException:
                self._sock.close()
                raise
            st = os.stat(settings.unix_socket)
            self._unix_inode = st.st_dev, st.st_ino
        _allow_open_files(settings.max_connections + 256)
        _pin_malloc_thresholds()
        self._loop = asyncio.new_event_loop()
        self._workers = Workers(settings.threads, self._loop)
        self._loop.set_exception_handler(self._loop_error)
        self._stop_requested: asyncio.Future | None = None
        self._served = threading.Event()
        self._in_workers = 0
        deadlines = Deadlines(settings.header_timeout, settings.body_timeout, settings.idle_timeout)
        self._front = Front(self._loop, deadlines, settings.max_request_bytes, settings.max_connections,
                            settings.max_connections_per_peer, self._tls, self._route)
        self._unix_front = None
        if self._unix_sock is not None:
            self._unix_front = Front(self._loop, deadlines, settings.max_request_bytes, settings.max_connections,
                                     settings.max_connections_per_peer, None, self._route, authorize=authorize)
        metrics.server_counts = self.counts

    @property
    def address(self) -> tuple[str, int]:
        return self._sock.getsockname()[:2]

    def counts(self) -> dict[str, int]:
        """Open connections, and requests with the worker pool (queued or running)."""
        unix = self._unix_front.count if self._unix_front is not None else 0
        return {"connections": self._front.count + unix, "in_workers": self._in_workers}

    def serve_forever(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()
            self._workers.stop()
            self._remove_unix_socket()
            self._served.set()

    def _remove_unix_socket(self) -> None:
        """Remove our socket file, unless another process has put its own there meanwhile."""
        if self._unix_sock is None:
            return
        self._unix_sock.close()
        path = self._settings.unix_socket
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == self._unix_inode:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def stop(self) -> None:
        """Stop accepting; calls in flight finish (up to shutdown_timeout) before this returns."""
        try:
            self._loop.call_soon_threadsafe(self._request_stop)
        except RuntimeError:  # the loop is closed: nothing is served
            return
        self._served.wait(self._settings.shutdown_timeout + 10)

    def _request_stop(self) -> None:
        if self._stop_requested is not None and not self._stop_requested.done():
            self._stop_requested.set_result(None)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_requested = loop.create_future()
        server = await loop.create_server(lambda: HttpConnection(self._front), sock=self._sock,
                                          backlog=self._settings.listen_backlog)
        unix_server, unix_front = None, self._unix_front
        if self._unix_sock is not None and unix_front is not None:  # __init__ makes both or neither
            unix_server = await loop.create_unix_server(lambda: HttpConnection(unix_front),
                                                        sock=self._unix_sock, backlog=self._settings.listen_backlog)
        sweeper = loop.create_task(self._sweep())
        await self._stop_requested
        server.close()
        if unix_server is not None:
            unix_server.close()
            self._remove_unix_socket()
        fronts = [self._front] + ([self._unix_front] if self._unix_front is not None else [])
        await asyncio.gather(*(front.drain(self._settings.shutdown_timeout) for front in fronts))
        sweeper.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            self._front.sweep()
            if self._unix_front is not None:
                self._unix_front.sweep()

    def _route(self, conn: HttpConnection, head: Head, body: bytes) -> None:
        if head.path == "/metrics" and head.method == "GET":
            self._submit(conn, lambda close: response(200, CONTENT_TYPE_LATEST, self._app.metrics(), close=close))
        elif head.path not in RPC_PATHS:
            conn.reply(404, "text/plain", b"not found\n")
        elif head.method != "POST":
            conn.reply(405, "text/plain", b"XML-RPC takes POST\n", (("Allow", "POST"),))
        else:
            call = self._app.read_small(body)
            work = self._rpc_work(body, call)
            if call is not None and self._app.quick(call):
                self._answer_here(conn, work)  # the hop to a worker and back would cost more than the verb
            else:
                self._submit(conn, work)

    def _rpc_work(self, body: bytes, call: tuple[str, tuple] | None) -> Callable[[bool], bytes]:
        return lambda close: response(200, "text/xml", self._app.answer(body, call), close=close)

    def _submit(self, conn: HttpConnection, work: Callable[[bool], bytes]) -> None:
        self._in_workers += 1
        close = not conn.keep_alive
        self._workers.submit(lambda: work(close), lambda outcome: self._answered(conn, outcome))

    def _answer_here(self, conn: HttpConnection, work: Callable[[bool], bytes]) -> None:
        try:
            reply = work(not conn.keep_alive)
        except Exception as e:  # as on a worker: the caller gets a 500, the loop serves on
            self._failed(conn, e)
            return
        conn.answer(reply)

    def _answered(self, conn: HttpConnection, outcome: bytes | Exception) -> None:
        self._in_workers -= 1
        if isinstance(outcome, Exception):
            self._failed(conn, outcome)
        else:
            conn.answer(outcome)

    def _failed(self, conn: HttpConnection, error: Exception) -> None:
        log.error("Request of %s failed", conn.peer, exc_info=error)
        conn.reply(500, "text/plain", b"internal error\n")

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        log.warning("RPC event loop: %s", context.get("message"), exc_info=context.get("exception"))
