"""ServiceProxy: a client for hsmd, plain or TLS with a client certificate, or on a Unix socket."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import stat
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from hsm import config as hsmconfig
from hsm.errors import ConfigError
from hsm.rpc.marshal import load_answer

DEFAULT_ADDRESS = "127.0.0.1:54324"
DEFAULT_UNIX_SOCKET = "/run/hsm/hsmd.sock"  # where the packaged hsm.conf puts it
UNIX_PREFIX = "unix:"


def default_address(config_path: str | None = None) -> str:
    """The Unix socket hsm.conf names (or the packaged one) when it exists on this host, else loopback TCP."""
    path = DEFAULT_UNIX_SOCKET
    try:
        path = hsmconfig.load(hsmconfig.default_path(config_path)).rpc.unix_socket or path
    except ConfigError:
        pass  # an unreadable hsm.conf is hsmd's problem to report; try the usual places
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return UNIX_PREFIX + path
    except OSError:
        pass
    return DEFAULT_ADDRESS


def unix_path(address: str) -> str | None:
    """The socket path of a `unix:/path` address, None for HOST:PORT."""
    return address[len(UNIX_PREFIX):] if address.startswith(UNIX_PREFIX) else None


@dataclass(frozen=True)
class TlsFiles:
    key_file: str
    cert_file: str
    ca_file: str

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.check_hostname = False  # hsmd's certificate names the host, callers often use an IP
        return context


# What Transport.make_connection may be given: ServerProxy passes HOST:PORT, Transport.request also takes (host, x509).
_Host = tuple[str, dict[str, str]] | str


def _host_name(host: _Host) -> str:
    if not isinstance(host, str):
        raise TypeError("x509 host options are not supported: use TlsFiles")
    return host


class _WholeBody:
    """Read an answer whole and parse it with hsm's own reader (hsm.rpc.marshal.load_answer),
    which does half the work per element of the stdlib's, fed 1 KiB at a time.

    `retry_stale`: the stdlib sends a request again, on a new connection, when the kept-alive one
    turns out closed. A caller that must notice hsmd restarting (vdsm_shim) turns that off and sees
    the closed connection as an error.
    """

    retry_stale = True

    def request(self, host: Any, handler: str, request_body: Any, verbose: bool = False) -> Any:
        if not self.retry_stale:
            return self.single_request(host, handler, request_body, verbose)  # type: ignore[attr-defined]
        try:
            return super().request(host, handler, request_body, verbose)  # type: ignore[misc]
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # A kept-alive TLS connection hsmd closed while it was idle ([rpc] idle_timeout): the stdlib
            # tries again after a plain connection's reset, not after TLS's EOF; the same here.
            self.close()  # type: ignore[attr-defined]
            return self.single_request(host, handler, request_body, verbose)  # type: ignore[attr-defined]

    def parse_response(self, response: http.client.HTTPResponse) -> tuple:
        try:
            body = response.read()
        except http.client.IncompleteRead as e:  # hsmd went away mid-answer: for callers, a lost connection
            raise ConnectionResetError(f"the answer was cut off after {len(e.partial)} bytes") from None
        return (load_answer(body),)


class _Transport(_WholeBody, xmlrpc.client.Transport):
    """Keep-alive HTTP/1.1 with a timeout on every socket operation."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host: _Host) -> http.client.HTTPConnection:
        name, (open_host, connection) = _host_name(host), self._connection
        if connection is not None and name == open_host:
            return connection
        connection = http.client.HTTPConnection(name, timeout=self._timeout)
        self._connection = name, connection
        return connection


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix stream socket; the Host header names localhost."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(_WholeBody, xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: _Host) -> http.client.HTTPConnection:
        name, (open_host, connection) = _host_name(host), self._connection
        if connection is not None and name == open_host:
            return connection
        connection = UnixHTTPConnection(self._path, self._timeout)
        self._connection = name, connection
        return connection


class _TlsTransport(_WholeBody, xmlrpc.client.SafeTransport):
    def __init__(self, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._timeout = timeout
        self._context = context

    def make_connection(self, host: _Host) -> http.client.HTTPSConnection:
        name, (open_host, connection) = _host_name(host), self._connection
        if isinstance(connection, http.client.HTTPSConnection) and name == open_host:  # the only kind kept here
            return connection
        connection = http.client.HTTPSConnection(name, timeout=self._timeout, context=self._context)
        self._connection = name, connection
        return connection


class ServiceProxy:
    """Calls hsmd verbs as methods: ServiceProxy().ping() -> {"status": {...}}.

    `address` is HOST:PORT or `unix:/path/to/socket` (no TLS there: the
    kernel tells hsmd who calls). One proxy holds one keep-alive connection
    and is not for sharing between threads; make one per thread.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, tls: TlsFiles | None = None,
                 timeout: float = 60.0, retry_stale: bool = True) -> None:
        path = unix_path(address)
        scheme = "https" if tls else "http"
        if path is not None:
            if tls:
                raise ValueError("TLS is not used on a Unix socket")
            transport: xmlrpc.client.Transport = _UnixTransport(path, timeout)
            url = "http://localhost/RPC2"
        else:
            transport = _TlsTransport(timeout, tls.context()) if tls else _Transport(timeout)
            url = f"{scheme}://{address}/RPC2"
        transport.retry_stale = retry_stale  # type: ignore[attr-defined]
        self._proxy = xmlrpc.client.ServerProxy(url, transport=transport,
                                               allow_none=True, use_builtin_types=True)
        self.address = address

    def call(self, verb: str, *args: Any) -> Any:
        return getattr(self._proxy, verb)(*args)

    def __getattr__(self, verb: str) -> Any:
        if verb.startswith("_"):
            raise AttributeError(verb)
        return getattr(self._proxy, verb)

    def close(self) -> None:
        self._proxy("close")()

    def __enter__(self) -> ServiceProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
