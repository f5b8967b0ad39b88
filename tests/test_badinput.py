"""Bad requests get a clear fault or status; none kills or hangs hsmd; the next call works.

Damaged state files are bad input too: hsmd reports them and starts.
"""

import http.client
import json
import os
import socket
import time
import xmlrpc.client

import pytest


def _post(address, body, path="/RPC2", method="POST", headers=None, timeout=20):
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body, {"Content-Type": "text/xml", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _fault(address, body):
    status, data = _post(address, body)
    assert status == 200
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(data)
    return info.value


@pytest.fixture
def healthy_after(hsmd):
    yield hsmd
    assert hsmd.alive()
    assert hsmd.proxy(timeout=10).ping()["status"]["code"] == 0


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<methodCall><methodName>getHsmConfig</methodName>
<params><param><value><string>&lol9;</string></value></param></params></methodCall>"""


@pytest.mark.parametrize("body, words", [
    (b"<methodCall><methodName>ping</methodName><params>", "malformed"),
    (b"\xff\xfe garbage \x00\x01", "malformed"),
    (b"", "malformed"),
    (b"<methodCall><params/></methodCall>", "no methodName"),
    (b"<methodCall><methodName>ping</methodName><params><param><value><int>12x</int>"
     b"</value></param></params></methodCall>", "malformed"),
    (BILLION_LAUGHS, "DTD"),
    (b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><methodCall>'
     b"<methodName>ping</methodName><params/></methodCall>", "DTD"),
])
def test_malformed_xml_is_a_parse_fault(healthy_after, body, words):
    fault = _fault(healthy_after.address, body)
    assert fault.faultCode == -32700
    assert words in fault.faultString


def test_deep_nesting_is_refused(healthy_after):
    depth = 100000
    value = b"<value><array><data>" * depth + b"</data></array></value>" * depth
    body = b"<methodCall><methodName>ping</methodName><params><param>" + value + b"</param></params></methodCall>"
    fault = _fault(healthy_after.address, body)
    assert fault.faultCode == -32700
    assert "nested deeper" in fault.faultString


def test_unknown_method_is_a_fault(healthy_after):
    with pytest.raises(xmlrpc.client.Fault) as info:
        healthy_after.proxy().noSuchVerb()
    assert info.value.faultCode == -32601
    assert "noSuchVerb" in info.value.faultString


def test_wrong_argument_count_is_a_fault(healthy_after):
    proxy = healthy_after.proxy()
    with pytest.raises(xmlrpc.client.Fault) as info:
        proxy.ping("extra")
    assert info.value.faultCode == -32602
    with pytest.raises(xmlrpc.client.Fault) as info:
        proxy.getHsmConfig("a", "b")
    assert info.value.faultCode == -32602
    assert "getHsmConfig" in info.value.faultString


def test_wrong_argument_type_is_a_status(healthy_after):
    answer = healthy_after.proxy().getHsmConfig({"a": 1})
    assert answer["status"]["code"] == 1000
    assert "section" in answer["status"]["message"]


def test_hundred_megabyte_body_is_refused_early(healthy_after):
    """hsmd answers 413 from the headers alone; it never reads the 100 MB."""
    host, port = healthy_after.address.split(":")
    size = 100 * 1024 * 1024
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        sent = 0
        chunk = b"<" * (1024 * 1024)
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # hsmd closed the connection after answering
            pass
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_chunked_body_over_the_limit_is_refused(make_hsmd):
    daemon = make_hsmd(config={"rpc": {"max_request_bytes": 4096}}).start()
    host, port = daemon.address.split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(8):
                sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        except OSError:
            pass
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert daemon.proxy().ping()["status"]["code"] == 0


def test_get_on_rpc_path_and_unknown_paths(healthy_after):
    status, _ = _post(healthy_after.address, None, method="GET")
    assert status == 405
    status, _ = _post(healthy_after.address, b"x", path="/nosuch")
    assert status == 404


def test_slow_client_does_not_block_others(healthy_after):
    """A client that sends half a request and stalls holds one worker, not the service."""
    host, port = healthy_after.address.split(":")
    stalled = []
    for _ in range(4):
        sock = socket.create_connection((host, int(port)), timeout=20)
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<method")
        stalled.append(sock)
    try:
        start = time.monotonic()
        assert healthy_after.proxy(timeout=10).ping()["status"]["code"] == 0
        assert time.monotonic() - start < 10  # well under the 30 s body deadline a held worker would wait
    finally:
        for sock in stalled:
            sock.close()


def test_garbage_instead_of_http(healthy_after):
    host, port = healthy_after.address.split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")


def _managed(proxy) -> list[str]:
    return sorted(cid for cid, server in proxy.getStorageServerList()["servers"].items() if server["managed"])


def _start_over_connections(make_hsmd, write) -> tuple:
    """An hsmd started over a connections.json that `write(path)` made; (daemon, path)."""
    daemon = make_hsmd()
    os.makedirs(daemon.state_dir)
    path = os.path.join(daemon.state_dir, "connections.json")
    write(path)
    return daemon.start(), path


@pytest.mark.parametrize("content", [b"\xff\xfe garbage \x00", b"", b'["a list"]', b'"a string"', b"[" * 100000,
                                     None])
def test_damaged_connections_file_is_set_aside_and_hsmd_starts(make_hsmd, content):
    def write(path):
        if content is None:
            os.mkdir(path)  # not even a file
        else:
            with open(path, "wb") as f:
                f.write(content)

    daemon, path = _start_over_connections(make_hsmd, write)
    proxy = daemon.proxy()
    assert proxy.ping()["status"]["code"] == 0
    assert path in daemon.log_text()
    assert os.path.exists(path + ".damaged") and not os.path.exists(path)
    assert _managed(proxy) == []
    assert proxy.manageStorageServer(f"localfs://{daemon.root}", "after")["status"]["code"] == 0


def test_damaged_connection_entries_are_dropped_and_the_others_kept(make_hsmd):
    def write(path):
        with open(path, "w") as f:
            json.dump({"kept": f"localfs://{os.path.dirname(path)}", "a/b": "localfs:///tmp", "number": 5,
                       "a-list": ["localfs:///tmp"], "bad-uri": "gopher://x"}, f)

    daemon, path = _start_over_connections(make_hsmd, write)
    proxy = daemon.proxy()
    assert proxy.ping()["status"]["code"] == 0
    assert _managed(proxy) == ["kept"]
    log = daemon.log_text()
    for cid in ("a/b", "number", "a-list", "bad-uri"):
        assert f"Dropping stored connection {cid!r} of {path}" in log
