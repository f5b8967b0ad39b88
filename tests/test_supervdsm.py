"""supervdsmd and its client, as real processes; getDeviceList through it from hsmd."""

import ast
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from hsm.errors import SupervdsmUnavailable
from tests.supervdsmd import Supervdsmd
from tests.waiting import wait_for

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
    assert time.monotonic() - begin < client.timeout("ping") / 2  # not waiting out the call's timeout
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
    assert time.monotonic() - begin < 5  # well under listBlockDevices' 30 s: the refused connect failed it
    assert answer["status"]["code"] == 5003
    assert "none.sock" in answer["status"]["message"]


def test_kill_under_load_fails_fast_then_recovers(supervdsmd):
    """Eight callers hammer supervdsmd; kill -9 it; every call begun in the outage fails with 5003 without
    waiting out its timeout; after a restart every caller gets answers again without doing anything."""
    clients = [supervdsmd.client() for _ in range(8)]
    stop = threading.Event()
    phase = ["up"]  # when each call begins: "up", "killing", "down" (supervdsmd is dead), "restarting"
    outcomes: list[list[tuple[str, str, float, str]]] = [[] for _ in clients]  # (phase, result, seconds, why)

    def caller(client, outcome):
        while not stop.is_set():
            began, begin = phase[0], time.monotonic()
            try:
                client.call("ping")
                outcome.append((began, "ok", time.monotonic() - begin, ""))
            except SupervdsmUnavailable as e:
                outcome.append((began, "down", time.monotonic() - begin, repr(e)))
                stop.wait(0.01)  # pacing, not ordering: eight callers spinning on refused connects starve the rest

    def every_caller(condition, what: str) -> None:
        wait_for(lambda: all(condition(list(outcome)) for outcome in outcomes), what=f"every caller {what}")

    threads = [threading.Thread(target=caller, args=pair) for pair in zip(clients, outcomes, strict=True)]
    for t in threads:
        t.start()
    try:
        every_caller(lambda outcome: any(o[1] == "ok" for o in outcome), "answered")
        phase[0] = "killing"
        supervdsmd.kill()  # returns once the process is gone
        phase[0] = "down"
        every_caller(lambda outcome: any(o[0] == "down" for o in outcome), "called in the outage")
        phase[0] = "restarting"
        supervdsmd.start()
        every_caller(lambda outcome: any(o[0] == "restarting" and o[1] == "ok" for o in outcome),
                     "answered after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for client in clients:
            client.close()
    assert not any(t.is_alive() for t in threads)
    # Failing fast means not waiting out the call's timeout, which a call stuck on the dead socket would.
    fast = clients[0].timeout("ping") / 2
    for outcome in outcomes:
        in_outage = [o for o in outcome if o[0] == "down"]
        assert in_outage and all(o[1] == "down" and o[2] < fast for o in in_outage), in_outage[:5]


def test_client_timeouts_follow_supervdsmd_verbs():
    """The client waits for each verb as long as supervdsmd lets it run, and a little more."""
    from hsm import config as hsmconfig
    from supervdsm import client as sv_client
    from supervdsm.verbs import make_verbs

    config = hsmconfig.load(None)
    client = sv_client.SupervdsmClient("/nowhere", call_timeout=config.supervdsm.call_timeout)
    for verb in make_verbs(config).values():
        assert client.timeout(verb.name) == verb.timeout + sv_client.ANSWER_MARGIN, verb.name


def test_a_frozen_supervdsmd_costs_only_the_calls_on_it(supervdsmd, monkeypatch):
    """Calls run side by side, each with its verb's timeout; past max_calls waiting, one more fails at once."""
    from supervdsm import client as sv_client

    monkeypatch.setattr(sv_client, "ANSWER_MARGIN", 0.0)
    monkeypatch.setitem(sv_client.VERB_TIMEOUTS, "ping", 1.0)
    client = sv_client.SupervdsmClient(supervdsmd.socket, max_calls=3)
    outcomes: list[tuple[float, str]] = []

    def stuck_ping() -> None:
        begin = time.monotonic()
        with pytest.raises(SupervdsmUnavailable) as info:
            client.call("ping")
        outcomes.append((time.monotonic() - begin, str(info.value)))

    assert client.call("ping")["pid"] == supervdsmd.process.pid
    supervdsmd.process.send_signal(signal.SIGSTOP)
    try:
        callers = [threading.Thread(target=stuck_ping) for _ in range(3)]
        for caller in callers:
            caller.start()

        def refused_at_once() -> float | None:
            begin = time.monotonic()
            try:
                client.call("ping")
            except SupervdsmUnavailable as e:
                if "3 calls already wait" in str(e):
                    return time.monotonic() - begin or 1e-9
            return None

        assert wait_for(refused_at_once, what="call refused past max_calls") < 0.5  # not the verb's 1 s
        for caller in callers:
            caller.join(10)
        assert len(outcomes) == 3
        for took, message in outcomes:
            assert 0.9 < took < 3, outcomes  # the verb's timeout, not the connection's nor another call's
            assert "timed out" in message
    finally:
        supervdsmd.process.send_signal(signal.SIGCONT)
    assert wait_for(lambda: _answers(client), what="answer after SIGCONT")["pid"] == supervdsmd.process.pid
    client.close()


def test_a_task_thread_waits_its_turn_past_max_calls(supervdsmd):
    """Inside patient() (a fix's steps) a call past max_calls waits for a slot and then runs; outside it
    (an RPC worker) the same call is refused at once."""
    from supervdsm import client as sv_client

    client = sv_client.SupervdsmClient(supervdsmd.socket, max_calls=1, call_timeout=30)
    answers: list = []

    def busy() -> None:
        answers.append(client.call("ping"))

    def patient() -> None:
        with client.patient():
            answers.append(client.call("ping"))

    supervdsmd.process.send_signal(signal.SIGSTOP)
    try:
        first = threading.Thread(target=busy)
        first.start()
        wait_for(lambda: client._slots._value == 0, what="the one slot taken")  # noqa: SLF001 (the test's probe)
        second = threading.Thread(target=patient)
        second.start()
        with pytest.raises(SupervdsmUnavailable):
            client.call("ping")
    finally:
        supervdsmd.process.send_signal(signal.SIGCONT)
    first.join(30)
    second.join(30)
    assert [answer["pid"] for answer in answers] == [supervdsmd.process.pid] * 2
    client.close()


def _answers(client):
    try:
        return client.call("ping")
    except SupervdsmUnavailable:
        return None


def test_a_frozen_supervdsmd_stalls_nothing_else_in_hsmd(make_hsmd, supervdsmd):
    """supervdsmd stopped (SIGSTOP); 20 clients call getDeviceList on hsmd; ping and getImageList
    keep answering, each well under the 30 s a getDeviceList may wait (their latencies against a
    baseline are bench/stalls.py's), and every getDeviceList either waits on one of the few call
    slots (until its verb's timeout) or fails at once with 5003."""
    from tests.images_helpers import code, new_disk, ok

    daemon = make_hsmd(config={"supervdsm": {"socket": supervdsmd.socket}}).start()
    proxy = daemon.proxy()
    ok(proxy.getDeviceList())
    disk = new_disk(proxy)
    assert disk in ok(proxy.getImageList("local"))["images"]

    stop = threading.Event()
    answers: list[tuple[int, float]] = []

    def list_devices() -> None:
        other = daemon.proxy(timeout=120)
        while not stop.is_set():
            begin = time.monotonic()
            answer = other.getDeviceList()
            answers.append((code(answer), time.monotonic() - begin))  # a caller told "busy" calls again at once

    def timed(call) -> float:
        begin = time.monotonic()
        ok(call())
        return time.monotonic() - begin

    supervdsmd.process.send_signal(signal.SIGSTOP)
    callers = [threading.Thread(target=list_devices) for _ in range(20)]
    try:
        for caller in callers:
            caller.start()
        wait_for(lambda: any(c == 5003 for c, _ in answers), what="getDeviceList refused as busy")
        pings, lists = [], []
        for _ in range(50):
            pings.append(timed(proxy.ping))
            lists.append(timed(lambda: proxy.getImageList("local")))
    finally:
        stop.set()
        supervdsmd.process.send_signal(signal.SIGCONT)
    for caller in callers:
        caller.join(60)
    assert not any(caller.is_alive() for caller in callers)
    for name, samples in (("ping", pings), ("getImageList", lists)):
        assert max(samples) < 5, f"{name}: {max(samples):.2f} s, as if it waited on supervdsmd"
    assert {c for c, _ in answers} <= {0, 5003}, answers
    assert max(took for c, took in answers if c == 5003) < 40  # listBlockDevices' 30 s and the margin at most
    wait_for(lambda: code(proxy.getDeviceList()) == 0, what="getDeviceList answered after SIGCONT")
