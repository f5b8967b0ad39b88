"""hsmd's HTTP side: XML-RPC on POST /RPC2 and Prometheus text on GET /metrics.

cheroot serves HTTP/1.1 with keep-alive from a bounded pool of worker threads;
idle keep-alive connections wait in a selector, not in a worker, so 64 or
more clients share a pool of 16 without starving each other.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cheroot import wsgi
from cheroot.errors import MaxSizeExceeded
from cheroot.ssl.builtin import BuiltinSSLAdapter

from hsm.api.dispatch import BadArguments, Dispatcher, UnknownVerb
from hsm.rpc import marshal
from hsm.rpc.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger("hsm.rpc")

RPC_PATHS = ("/RPC2", "/")


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    threads: int = 16
    listen_backlog: int = 1024
    keepalive_connections: int = 256
    max_request_bytes: int = 10 * 1024 * 1024
    socket_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    tls: tuple[str, str, str] | None = None  # key, cert, CA


class _CherootServer(wsgi.Server):
    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        log.log(level, "%s", msg, exc_info=traceback)


def _tls_adapter(key_file: str, cert_file: str, ca_file: str) -> BuiltinSSLAdapter:
    adapter = BuiltinSSLAdapter(cert_file, key_file, ca_file)
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    adapter.context.verify_mode = ssl.CERT_REQUIRED  # as VDSM: no client certificate, no service
    return adapter


class RpcApplication:
    """The WSGI application: routes, bodies, and faults for what cannot be called."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        if path == "/metrics" and method == "GET":
            return self._reply(start_response, "200 OK", CONTENT_TYPE_LATEST, self._metrics.render())
        if path not in RPC_PATHS:
            return self._reply(start_response, "404 Not Found", "text/plain", b"not found\n")
        if method != "POST":
            return self._reply(start_response, "405 Method Not Allowed", "text/plain",
                               b"XML-RPC takes POST\n", [("Allow", "POST")])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        except (MaxSizeExceeded, OSError, ValueError) as e:
            # Only chunked bodies fail here (cheroot refuses a too long Content-Length
            # itself); it signals "too large" with MaxSizeExceeded or a plain OSError.
            if isinstance(e, MaxSizeExceeded) or "Too Large" in str(e):
                status, text = "413 Request Entity Too Large", b"request body too large\n"
            elif isinstance(e, ValueError):
                status, text = "400 Bad Request", f"bad chunked body: {e}\n".encode()
            else:
                raise
            return self._reply(start_response, status, "text/plain", text, [("Connection", "close")])
        return self._reply(start_response, "200 OK", "text/xml", self.answer(body))

    def answer(self, body: bytes) -> bytes:
        try:
            name, params = marshal.load_call(body)
            return marshal.dump_answer(self._dispatcher.call(name, params))
        except marshal.RequestError as e:
            code, message = e.code, str(e)
        except UnknownVerb as e:
            code, message = marshal.METHOD_NOT_FOUND, str(e)
        except BadArguments as e:
            code, message = marshal.INVALID_PARAMS, str(e)
        log.info("Refused request: %s", message)
        return marshal.dump_fault(code, message)

    @staticmethod
    def _reply(start_response: Callable, status: str, content_type: str, body: bytes,
               extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response(status, headers + (extra or []))
        return [body]


class RpcServer:
    """Binds at construction (so a busy port fails start-up), serves in serve_forever()."""

    def __init__(self, settings: ServerSettings, dispatcher: Dispatcher, metrics: Metrics) -> None:
        server = _CherootServer(
            (settings.host, settings.port), RpcApplication(dispatcher, metrics),
            numthreads=settings.threads, max=settings.threads,
            request_queue_size=settings.listen_backlog, timeout=settings.socket_timeout,
            shutdown_timeout=settings.shutdown_timeout, server_name="hsmd")
        server.max_request_body_size = settings.max_request_bytes
        server.max_request_header_size = 64 * 1024
        server.keep_alive_conn_limit = settings.keepalive_connections
        if settings.tls:
            server.ssl_adapter = _tls_adapter(*settings.tls)
        server.prepare()
        self._server = server

    @property
    def address(self) -> tuple[str, int]:
        return self._server.bind_addr[:2]

    def serve_forever(self) -> None:
        self._server.serve()

    def stop(self) -> None:
        """Stop accepting; calls in flight finish (up to shutdown_timeout) before this returns."""
        self._server.stop()
