"""The service verbs and hsmd's lifecycle, against a real hsmd over a real socket."""

import os
import socket
import struct
import subprocess
import threading
import xmlrpc.client

import pytest

import hsm
from hsm import config as hsmconfig
from tests.hsmd import HSMD, free_port
from tests.waiting import wait_for


def test_ping(hsmd):
    assert hsmd.proxy().ping() == {"status": {"code": 0, "message": "OK"}}


def test_capabilities(hsmd):
    answer = hsmd.proxy().getCapabilities()
    assert answer["status"]["code"] == 0
    info = answer["info"]
    assert info["version"] == hsm.__version__
    assert info["taskMode"] == "non-transparent"
    assert info["hostId"] == 1
    assert info["pid"] == hsmd.process.pid


def test_config_whole_and_one_section(make_hsmd):
    daemon = make_hsmd(config={"rpc": {"threads": 4}}).start()
    proxy = daemon.proxy()
    config = proxy.getHsmConfig()["config"]
    assert set(config) == {"irs", "rpc", "tasks", "connections", "sanlock", "supervdsm", "offload", "logging"}
    assert config["rpc"]["threads"] == 4
    assert config["rpc"]["port"] == daemon.port
    assert config["irs"]["state_dir"] == daemon.state_dir
    assert config["irs"]["lv_activation"] == "lvm"
    assert "maximum_allowed_pvs" not in config["irs"]  # not supported yet: not shown
    assert proxy.getHsmConfig("tasks") == {
        "status": {"code": 0, "message": "OK"},
        "config": {"tasks": {"mode": "non-transparent", "thread_pool_size": 10, "max_tasks": 500,
                             "finished_ttl": 3600, "max_finished": 1000, "diagnostics": False}}}


def test_config_sizes_travel_as_decimal_strings(make_hsmd):
    """Every option of the size type answers as a decimal string (api.md), even past XML-RPC's int range."""
    daemon = make_hsmd(config={"rpc": {"max_request_bytes": 3 * 2**30}}).start()
    config = daemon.proxy().getHsmConfig()["config"]
    assert config["rpc"]["max_request_bytes"] == str(3 * 2**30)
    sizes = [opt for opt in hsmconfig.OPTIONS.values() if opt.type_name == "bytes"]
    assert sizes
    for opt in sizes:
        value = config[opt.section][opt.name]
        assert isinstance(value, str) and value.isascii() and value.isdigit(), (opt, value)
    assert daemon.proxy().getHsmConfig("rpc")["config"]["rpc"]["max_request_bytes"] == str(3 * 2**30)
    assert config["rpc"]["threads"] == 16  # counts that are not sizes stay ints


def test_config_unknown_section_is_invalid_parameter(hsmd):
    answer = hsmd.proxy().getHsmConfig("nosuch")
    assert answer["status"]["code"] == 1000
    assert "nosuch" in answer["status"]["message"]


def test_nil_argument_accepted(hsmd):
    answer = hsmd.proxy().getHsmConfig(None)
    assert answer["status"]["code"] == 0
    assert "rpc" in answer["config"]


def test_stats_count_calls_and_errors(hsmd):
    proxy = hsmd.proxy()
    for _ in range(3):
        proxy.ping()
    proxy.getHsmConfig("nosuch")
    stats = proxy.getStats()["stats"]
    assert stats["verbs"]["ping"]["calls"] >= 3  # the fixture's own readiness pings count too
    assert stats["verbs"]["ping"]["errors"] == 0
    assert stats["verbs"]["getHsmConfig"] == {**stats["verbs"]["getHsmConfig"], "calls": 1, "errors": 1}
    assert stats["errors"] == {"1000": 1}
    assert stats["tasks"] == {}
    assert stats["uptime"] > 0


def test_answers_never_carry_nil(hsmd):
    # A parser without allow_none (as VDSM's clients) reads every answer.
    for verb, args in [("ping", ()), ("getCapabilities", ()), ("getHsmConfig", ()), ("getStats", ()),
                       ("getHsmConfig", ("nosuch",))]:
        body = xmlrpc.client.dumps(args, verb, allow_none=True)
        answer = _post(hsmd.address, body.encode())
        assert b"<nil/>" not in answer
        xmlrpc.client.loads(answer)


def _post(address, body, path="/RPC2"):
    import http.client
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, body, {"Content-Type": "text/xml"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return data


def _unread(server: tuple[str, int], client: tuple[str, int]) -> int | None:
    """Bytes from `client` that the process at `server` has not read yet: its socket's receive queue
    (/proc/net/tcp), or None when there is no such connection."""
    def hexed(address: tuple[str, int]) -> str:
        return f"{struct.unpack('=I', socket.inet_aton(address[0]))[0]:08X}:{address[1]:04X}"

    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == (hexed(server), hexed(client)):
                return int(fields[4].split(":")[1], 16)
    return None


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_the_call_in_flight_finish(hsmd):
    """A call whose body is still arriving when SIGTERM comes gets its answer."""
    body = xmlrpc.client.dumps((), "getStats").encode()
    host, port = hsmd.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:20])
        wait_for(lambda: _unread((host, int(port)), sock.getsockname()) == 0, what="hsmd reading the request")
        hsmd.process.terminate()
        wait_for(lambda: _refused(host, int(port)), what="hsmd stopping: no new connection taken")
        sock.sendall(body[20:])
        answer = b""
        while b"</methodResponse>" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"<name>stats</name>" in answer
    assert hsmd.process.wait(30) == 0
    log = hsmd.log_text()
    assert "Stopping: finishing calls in flight" in log
    assert "hsmd stopped" in log
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)


def test_sd_notify_ready_and_stopping(make_hsmd, tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(15)
    daemon = make_hsmd(env={"NOTIFY_SOCKET": path}).start()
    assert listener.recv(4096).decode().splitlines()[0] == "READY=1"
    assert daemon.stop() == 0
    assert listener.recv(4096).decode() == "STOPPING=1"
    listener.close()


def test_busy_port_fails_start_with_a_message(hsmd, tmp_path):
    done = subprocess.run([HSMD, "--listen", hsmd.address, "--state-dir", str(tmp_path / "s2"),
                           "--config", hsmd.config_path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "cannot start" in done.stderr
    assert hsmd.proxy().ping()["status"]["code"] == 0


def test_sixty_four_concurrent_clients(hsmd):
    errors, answered = [], []

    def client():
        proxy = hsmd.proxy()
        for _ in range(25):
            try:
                answered.append(proxy.ping()["status"]["code"])
            except Exception as e:  # any failure counts, that is the point
                errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert answered == [0] * 64 * 25


def test_state_dir_is_created(tmp_path, make_hsmd):
    daemon = make_hsmd().start()
    assert os.path.isdir(daemon.state_dir)
    assert os.path.isdir(os.path.join(daemon.state_dir, "requests"))


def test_listen_without_port_is_refused(tmp_path):
    done = subprocess.run([HSMD, "--listen", "127.0.0.1", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


def test_free_port_helper_gives_a_bindable_port():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
