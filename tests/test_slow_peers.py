"""Idle, slow and never-handshaking peers cost hsmd no worker: a good client keeps being answered.

The hostile connections come from 127.0.0.2-11 (50 from each, under the
per-peer cap); the good client calls from 127.0.0.1. A ping that waited for a
worker a hostile connection held would wait for that connection's deadline;
every ping here answers well before it. The good client's latency beside a
baseline, with those connections open, is bench/rpc.py's.
"""

import http.client
import resource
import selectors
import socket
import ssl
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hsm.rpc.client import TlsFiles
from tests.test_tls import pki  # noqa: F401  (a fixture)
from tests.waiting import wait_for

HOSTILE = 500
DEADLINE = 8  # seconds: [rpc] header_timeout, body_timeout and idle_timeout of these hsmd
CALLS = 100


@pytest.fixture(autouse=True)
def enough_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _config(**extra):
    return {"rpc": {"threads": 2, "header_timeout": DEADLINE, "body_timeout": DEADLINE, "idle_timeout": DEADLINE,
                    **extra}}


def _gauges(address):
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name in ("hsm_rpc_connections", "hsm_rpc_requests_in_workers")}


def _connect(address, n):
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10, source_address=(f"127.0.0.{2 + n % 10}", 0))
    return sock


def _slowest_ping(proxy):
    slowest = 0.0
    for _ in range(CALLS):
        begin = time.perf_counter()
        assert proxy.ping()["status"]["code"] == 0
        slowest = max(slowest, time.perf_counter() - begin)
    return slowest


class Drip:
    """Sends one more byte of each socket's request every 0.3 s, from a thread, until stopped."""

    def __init__(self, socks_and_data):
        self._items = [[sock, data] for sock, data in socks_and_data]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.3):
            for item in self._items:
                sock, data = item
                if data:
                    try:
                        sock.send(data[:1])
                    except OSError:
                        data = b""
                    item[1] = data[1:]

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def _read_until_closed(socks, timeout):
    """What each socket received until hsmd closed it; fails if any is still open after `timeout`."""
    received = {sock: b"" for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    open_ = set(socks)
    while open_:
        assert time.monotonic() < deadline, f"{len(open_)} hostile connections still open"
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                received[sock] += data
            else:
                selector.unregister(sock)
                open_.discard(sock)
    selector.close()
    return received


def test_idle_and_slow_peers_cost_no_worker(make_hsmd):
    daemon = make_hsmd(config=_config()).start()
    good = daemon.proxy(timeout=10)
    good.ping()
    base = _gauges(daemon.address)["hsm_rpc_connections"]  # the good client's and this one's
    body = b"<?xml version='1.0'?><methodCall><methodName>ping</methodName><params></params></methodCall>"
    idle, slow_head, slow_body = [], [], []
    for n in range(HOSTILE):
        sock = _connect(daemon.address, n)
        if n % 3 == 0:
            idle.append(sock)
        elif n % 3 == 1:
            sock.sendall(b"POST /RPC2 HTTP/1.1\r\n")
            slow_head.append(sock)
        else:
            sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5])
            slow_body.append(sock)
    drip = Drip([(s, b"Host: x\r\nX-Slow: " + b"y" * 100) for s in slow_head] + [(s, body[5:]) for s in slow_body])
    try:
        wait_for(lambda: _gauges(daemon.address)["hsm_rpc_connections"] >= base + HOSTILE,
                 what="hsmd holding them all", poll=0.05)
        slowest = _slowest_ping(good)
        gauges = _gauges(daemon.address)
        assert gauges["hsm_rpc_connections"] >= base + HOSTILE, "the hostile connections closed before the calls ended"
        assert gauges["hsm_rpc_requests_in_workers"] == 1  # only this /metrics request
        assert slowest < DEADLINE / 2, f"a ping took {slowest:.2f} s with {HOSTILE} hostile connections open"
        received = _read_until_closed(idle + slow_head + slow_body, timeout=DEADLINE + 30)
    finally:
        drip.stop()
    assert all(received[s] == b"" for s in idle)
    assert all(received[s].startswith(b"HTTP/1.1 408") for s in slow_head + slow_body)
    wait_for(lambda: _gauges(daemon.address)["hsm_rpc_connections"] <= base, what="hsmd forgetting them", poll=0.05)
    assert good.ping()["status"]["code"] == 0
    for sock in idle + slow_head + slow_body:
        sock.close()


def test_peers_stuck_before_the_tls_handshake_cost_no_worker(make_hsmd, pki):  # noqa: F811
    p = str(pki)
    daemon = make_hsmd(config=_config(ssl="true", key_file=f"{p}/server.key", cert_file=f"{p}/server.pem",
                                      ca_file=f"{p}/ca.pem"),
                       tls=TlsFiles(f"{p}/client.key", f"{p}/client.pem", f"{p}/ca.pem")).start()
    good = daemon.proxy(timeout=10)
    good.ping()
    base = _connections_tls(daemon)
    stuck = []
    for n in range(HOSTILE):
        sock = _connect(daemon.address, n)
        if n % 2:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        stuck.append(sock)
    try:
        wait_for(lambda: _connections_tls(daemon) >= base + HOSTILE, what="hsmd holding them all", poll=0.05)
        slowest = _slowest_ping(good)
        assert _connections_tls(daemon) >= base + HOSTILE, "the hostile connections closed before the calls ended"
        assert slowest < DEADLINE / 2, f"a ping took {slowest:.2f} s, {HOSTILE} connections stuck before the handshake"
        received = _read_until_closed(stuck, timeout=DEADLINE + 30)
    finally:
        for sock in stuck:
            sock.close()
    assert all(not data.startswith(b"HTTP") for data in received.values())
    wait_for(lambda: _connections_tls(daemon) <= base, what="hsmd forgetting them", poll=0.05)
    assert good.ping()["status"]["code"] == 0


def _connections_tls(daemon):
    context = daemon.tls.context()
    host, port = daemon.address.split(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (ssl.SSLError, OSError):
        return -1
    finally:
        conn.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hsm_rpc_connections":
                return sample.value
    return -1


def test_connections_over_the_per_peer_cap_are_closed(make_hsmd):
    daemon = make_hsmd(config=_config(max_connections_per_peer=5)).start()
    held = [_connect(daemon.address, 0) for _ in range(5)]
    wait_for(lambda: _gauges(daemon.address)["hsm_rpc_connections"] >= 6, what="the five held", poll=0.05)
    extra = _connect(daemon.address, 0)
    assert _read_until_closed([extra], timeout=10)[extra] == b""
    assert daemon.proxy().ping()["status"]["code"] == 0  # another address is still served
    held.pop().close()
    wait_for(lambda: _gauges(daemon.address)["hsm_rpc_connections"] <= 5, what="the closed one forgotten", poll=0.05)
    again = _connect(daemon.address, 0)
    again.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.recv(64).startswith(b"HTTP/1.1 200")
    for sock in [*held, extra, again]:
        sock.close()
    assert "Refusing connections from 127.0.0.2" in daemon.log_text()


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 6\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: -5\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
def test_ambiguous_body_framing_is_refused(hsmd, headers):
    host, port = hsmd.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n12345")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Connection: close" in answer
    assert hsmd.proxy().ping()["status"]["code"] == 0


def test_repeated_equal_content_length_and_pipelined_requests_are_served(hsmd):
    body = b"<methodCall><methodName>ping</methodName><params/></methodCall>"
    request = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n" % (
        len(body), len(body)) + body
    host, port = hsmd.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request * 3)
        answer = b""
        while answer.count(b"</methodResponse>") < 3:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 3


def test_a_tls_connection_hsmd_closed_while_idle_is_made_again(make_hsmd, pki):  # noqa: F811
    """The client keeps its TLS connection alive; hsmd closes it after [rpc] idle_timeout; the next call
    goes on a new connection instead of failing with TLS's EOF (as the stdlib does for plain HTTP)."""
    p = str(pki)
    daemon = make_hsmd(config=_config(ssl="true", key_file=f"{p}/server.key", cert_file=f"{p}/server.pem",
                                      ca_file=f"{p}/ca.pem", idle_timeout=1),
                       tls=TlsFiles(f"{p}/client.key", f"{p}/client.pem", f"{p}/ca.pem")).start()
    good = daemon.proxy(timeout=10)
    assert good.ping()["status"]["code"] == 0
    with_it = _connections_tls(daemon)  # the kept-alive one, and the probe's own
    wait_for(lambda: _connections_tls(daemon) < with_it, timeout=30, what="hsmd closing the idle connection")
    assert good.ping()["status"]["code"] == 0
