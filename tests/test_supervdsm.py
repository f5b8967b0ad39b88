"""supervdsmd and its client, as real processes; getDeviceList through it from hsmd."""

import ast
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from hsm.errors import SupervdsmUnavailable
from tests.supervdsmd import Supervdsmd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, other uids)")


@pytest.fixture
def supervdsmd(tmp_path):
    daemon = Supervdsmd(str(tmp_path / "sv")).start()
    yield daemon
    daemon.kill()


@pytest.fixture
def loop_device(tmp_path):
    image = tmp_path / "lun.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    yield device, str(image)
    subprocess.run(["losetup", "-d", device], check=False)


def test_ping_and_refusals(supervdsmd):
    client = supervdsmd.client()
    assert client.call("ping") == {"pid": supervdsmd.process.pid, "uid": os.geteuid()}
    for verb, args, words in [("rm", {"path": "/"}, "unknown verb 'rm'"),
                              ("ping", {"x": 1}, "unknown arguments x")]:
        with pytest.raises(Exception) as info:
            client.call(verb, **args)
        assert info.value.code == 1000
        assert words in str(info.value)
    client.close()


def test_socket_mode_and_stop(supervdsmd):
    assert oct(os.stat(supervdsmd.socket).st_mode & 0o777) == "0o660"
    assert supervdsmd.stop() == 0
    assert not os.path.exists(supervdsmd.socket)
    with open(os.path.join(supervdsmd.log_dir, "supervdsm.log")) as f:
        assert "supervdsmd stopped" in f.read()


PROBE = """
import json, socket, struct, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
body = json.dumps({"id": 1, "verb": "ping", "args": {}}).encode()
sock.sendall(struct.pack(">I", len(body)) + body)
size = struct.unpack(">I", sock.recv(4))[0]
print(json.loads(sock.recv(size))["error"])
"""


@needs_root
def test_peer_with_other_uid_is_refused():
    """A user not in allowed_uids gets 5009 even when the socket's mode lets it connect."""
    root = tempfile.mkdtemp(prefix="hsm-sv-", dir="/tmp")
    os.chmod(root, 0o755)
    daemon = Supervdsmd(root, mode="0666").start()
    os.chmod(os.path.dirname(daemon.socket), 0o755)
    try:
        done = subprocess.run(["/usr/bin/python3", "-c", PROBE, daemon.socket], user=65534,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        error = ast.literal_eval(done.stdout)
        assert error["code"] == 5009
        assert "uid 65534" in error["message"]
        client = daemon.client()
        assert client.call("ping")["uid"] == 0
        client.close()
    finally:
        daemon.kill()
        shutil.rmtree(root)


def test_outage_fails_fast_then_reconnects(supervdsmd):
    client = supervdsmd.client()
    assert client.call("ping")
    supervdsmd.kill()
    begin = time.monotonic()
    with pytest.raises(SupervdsmUnavailable):
        client.call("ping")
    assert time.monotonic() - begin < 1.0
    supervdsmd.start()
    assert client.call("ping")["pid"] == supervdsmd.process.pid
    client.close()


@needs_root
def test_get_device_list_through_supervdsmd(make_hsmd, supervdsmd, loop_device):
    device, image = loop_device
    daemon = make_hsmd(config={"supervdsm": {"socket": supervdsmd.socket}}).start()
    answer = daemon.proxy().getDeviceList()
    assert answer["status"]["code"] == 0
    entry = {d["GUID"]: d for d in answer["devList"]}[os.path.basename(device)]
    assert entry["capacity"] == str(64 * 1024 * 1024)
    assert entry["backingFile"] == image
    assert entry["devnode"] == device
    assert daemon.proxy().getDeviceList(3)["devList"] == []
    assert daemon.proxy().getDeviceList("disks")["status"]["code"] == 1000


def test_get_device_list_while_supervdsmd_is_down(make_hsmd, tmp_path):
    daemon = make_hsmd(config={"supervdsm": {"socket": str(tmp_path / "none.sock")}}).start()
    begin = time.monotonic()
    answer = daemon.proxy().getDeviceList()
    assert time.monotonic() - begin < 1.5
    assert answer["status"]["code"] == 5003
    assert "none.sock" in answer["status"]["message"]


def test_kill_under_load_fails_fast_then_recovers(supervdsmd):
    """Eight callers hammer supervdsmd; kill -9 it; every call in the outage fails within a second
    with 5003; after a restart every caller gets answers again without doing anything."""
    import threading

    clients = [supervdsmd.client() for _ in range(8)]
    stop = threading.Event()
    outcomes = [[] for _ in clients]

    def caller(client, outcome):
        while not stop.is_set():
            begin = time.monotonic()
            try:
                client.call("ping")
                outcome.append(("ok", time.monotonic() - begin, time.monotonic()))
            except SupervdsmUnavailable as e:
                outcome.append(("down", time.monotonic() - begin, time.monotonic(), repr(e)))
                time.sleep(0.01)

    def wait_until(condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not every caller {what} within {timeout} s"
            time.sleep(0.01)

    threads = [threading.Thread(target=caller, args=pair) for pair in zip(clients, outcomes, strict=True)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(outcome and outcome[-1][0] == "ok" for outcome in outcomes), "got an answer")
        killed_at = time.monotonic()
        supervdsmd.kill()
        wait_until(lambda: all(any(o[0] == "down" for o in outcome) for outcome in outcomes), "saw the outage")
        supervdsmd.start()
        restarted_at = time.monotonic()
        wait_until(lambda: all(any(o[0] == "ok" and o[2] > restarted_at for o in outcome) for outcome in outcomes),
                   "came back")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for client in clients:
            client.close()
    for outcome in outcomes:
        downs = [o for o in outcome if o[0] == "down"]
        assert max(o[1] for o in downs) < 1.0
        assert all(o[2] > killed_at for o in downs), [(o, killed_at) for o in outcome if o[2] <= killed_at][:3]
