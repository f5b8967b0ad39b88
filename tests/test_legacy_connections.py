"""VDSM's connection verbs that take no conList to connect: validateStorageServerConnection, the 2012 connection
references (storageServer_ConnectionRefs_*), cleanupUnusedConnections and discoverSendTargets.

Flows that need no supervdsmd run twice (through vdsm_shim's ServiceProxy to a real hsmd, and in-process) and
must answer the same. Mounts and iSCSI discovery go through a real supervdsmd, against a real bind mount and a
real tgtd target.
"""

import json
import os
import shutil

import pytest

from hsm.connections import discovery
from tests.hsmd import free_port
from tests.images_helpers import code, ok
from tests.legacy_helpers import BLANK, run_both
from tests.waiting import wait_for

LOCALFS, FCP, POSIXFS = 4, 2, 6
IQN = "iqn.2026-11.org.hsm.test:refs"
SECRET = "ref-chap-secret"


def localfs(path) -> dict:
    return {"type": "localfs", "params": {"path": str(path)}}


def statuses(irs) -> dict:
    """VDSM's answer, under both keys it is given with (see the verb's docstring)."""
    answer = ok(irs.storageServer_ConnectionRefs_statuses())
    assert answer["connectionslist"] == answer["results"]
    return answer["results"]


def managed(irs) -> list:
    return sorted(entry["id"] for entry in ok(irs.getStorageConnectionsList(""))["connectionslist"]
                  if entry["managed"])


def refs_flow(irs, root: str) -> list:
    data, later = os.path.join(root, "data"), os.path.join(root, "later")
    os.mkdir(data)
    seen = []
    # Bad input as a whole: VDSM's 1000, nothing recorded.
    assert code(irs.storageServer_ConnectionRefs_acquire(["not", "a", "map"])) == 1000
    assert code(irs.storageServer_ConnectionRefs_release("ref-data")) == 1000
    assert code(irs.storageServer_ConnectionRefs_release([1])) == 1000
    assert statuses(irs) == {} and managed(irs) == []

    iscsi = {"type": "iscsi", "params": {"target": {"portal": {"host": "127.0.0.1", "port": 3999}, "iqn": IQN},
                                         "credentials": {"type": "chap",
                                                         "params": {"username": "admin", "password": SECRET}}}}
    nfs = {"type": "nfs", "params": {"export": "127.0.0.1:/no/such/export", "version": "4", "retrans": 3}}
    answer = ok(irs.storageServer_ConnectionRefs_acquire({
        "ref-data": localfs(data), "ref-later": localfs(later), "ref-iscsi": iscsi, "ref-nfs": nfs,
        "ref-cifs": {"type": "cifs", "params": {"path": data}}, "ref-no-path": {"type": "localfs", "params": {}},
        "ref-relative": localfs("relative"), "ref-not-a-struct": "localfs",
        "ref-no-iqn": {"type": "iscsi", "params": {"target": {"portal": {"host": "127.0.0.1"}}}},
        "ref-kerberos": {"type": "iscsi", "params": {**iscsi["params"], "credentials": {"type": "krb5"}}},
        "a/b": localfs(data)}))
    assert answer["results"] == {"ref-data": 0, "ref-later": 0, "ref-iscsi": 0, "ref-nfs": 0, "ref-cifs": 453,
                                 "ref-no-path": 453, "ref-relative": 453, "ref-not-a-struct": 453,
                                 "ref-no-iqn": 453, "ref-kerberos": 453, "a/b": 1000}
    assert managed(irs) == ["ref-data", "ref-iscsi", "ref-later", "ref-nfs"]
    # The same reference again is no change; the same refID for other storage is refused.
    assert ok(irs.storageServer_ConnectionRefs_acquire({"ref-data": localfs(data)}))["results"] == {"ref-data": 0}
    assert ok(irs.storageServer_ConnectionRefs_acquire({"ref-data": localfs(root)}))["results"] == {"ref-data": 478}

    wait_for(lambda: statuses(irs)["ref-data"]["connected"], what="ref-data connected")
    wait_for(lambda: all(statuses(irs)[ref]["lastError"][0] for ref in ("ref-later", "ref-iscsi", "ref-nfs")),
             what="the failures of ref-later, ref-iscsi and ref-nfs")
    found = statuses(irs)
    assert found["ref-data"] == {"connected": True, "lastError": [0, ""],
                                 "connectionInfo": {"type": "localfs", "params": {"path": data}}}
    assert found["ref-later"]["connected"] is False and found["ref-later"]["lastError"][0] == 451
    assert "later" in found["ref-later"]["lastError"][1]
    assert found["ref-iscsi"]["connectionInfo"] == {"type": "iscsi", "params": {
        "target": {"portal": {"hostname": "127.0.0.1", "port": 3999}, "tpgt": 1, "iqn": IQN}, "iface": "default"}}
    assert found["ref-nfs"]["connectionInfo"] == {"type": "nfs", "params": {
        "export": "127.0.0.1:/no/such/export", "retrans": "3", "timeout": "default", "version": "4"}}
    assert SECRET not in json.dumps(found)
    seen.append({ref: {**entry, "lastError": entry["lastError"][0]} for ref, entry in found.items()})

    # A refID is a CID: connectStorageServer's ids are references too, and the other way round.
    con = {"id": "con-data", "connection": data}
    assert ok(irs.connectStorageServer(LOCALFS, BLANK, [con]))["statuslist"] == [{"id": "con-data", "status": 0}]
    assert statuses(irs)["con-data"]["connectionInfo"] == {"type": "localfs", "params": {"path": data}}
    answer = ok(irs.storageServer_ConnectionRefs_release(["con-data", "ref-data", "no-such-ref", "ref-iscsi"]))
    assert answer["results"] == {"con-data": 0, "ref-data": 0, "no-such-ref": 479, "ref-iscsi": 0}
    assert ok(irs.storageServer_ConnectionRefs_release(["ref-data"]))["results"] == {"ref-data": 479}
    assert sorted(statuses(irs)) == managed(irs) == ["ref-later", "ref-nfs"]
    ok(irs.storageServer_ConnectionRefs_release(["ref-later", "ref-nfs"]))
    assert statuses(irs) == {} and managed(irs) == []
    seen.append(os.listdir(root))
    return seen


def test_connection_references(both):
    run_both(both, refs_flow)


def validate_flow(irs, root: str) -> list:
    data = os.path.join(root, "data")
    os.mkdir(data)
    good, missing = {"id": "good", "connection": data}, {"id": "missing", "connection": os.path.join(root, "no")}
    relative = {"id": "relative", "connection": "relative/path"}
    # Bad input as a whole: 1000, nothing done.
    for args in [(LOCALFS, "not-a-uuid", [good]), (LOCALFS, BLANK, "not a list"), (LOCALFS, BLANK, [{"x": 1}]),
                 (LOCALFS, BLANK, [good, "not a struct"])]:
        assert code(irs.validateStorageServerConnection(*args)) == 1000, args

    answer = ok(irs.validateStorageServerConnection(LOCALFS, BLANK, [good, missing, relative]))
    assert answer["statuslist"] == [{"id": "good", "status": 0}, {"id": "missing", "status": 451},
                                    {"id": "relative", "status": 5014}]
    assert [entry["status"] for entry in ok(irs.validateStorageServerConnection(9, "", [good]))["statuslist"]] \
        == [1000]
    assert ok(irs.validateStorageServerConnection(FCP, "", [missing]))["statuslist"] == [{"id": "missing",
                                                                                          "status": 0}]
    assert managed(irs) == [] and statuses(irs) == {}  # nothing kept

    ok(irs.connectStorageServer(LOCALFS, BLANK, [good]))
    assert ok(irs.validateStorageServerConnection(LOCALFS, "", [good]))["statuslist"] == [{"id": "good",
                                                                                           "status": 0}]
    ok(irs.cleanupUnusedConnections())
    # Bad domType or spUUID disconnects nothing either.
    assert ok(irs.disconnectStorageServer(9, "", [good]))["statuslist"] == [{"id": "good", "status": 1000}]
    assert code(irs.disconnectStorageServer(LOCALFS, "../pool", [good])) == 1000
    assert managed(irs) == ["good"] and statuses(irs)["good"]["connected"]
    ok(irs.disconnectStorageServer(LOCALFS, BLANK, [good]))
    return [managed(irs), sorted(os.listdir(root))]


def test_validate_storage_server_connection(both):
    run_both(both, validate_flow)


def test_cleanup_unused_connections_answers_status_only(both):
    for irs, _ in both:
        assert ok(irs.cleanupUnusedConnections()) == {"status": {"code": 0, "message": "OK"}}
        assert ok(irs.cleanupUnusedConnections({}))["status"]["code"] == 0


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and iscsiadm need root")


def mounts_under(root: str) -> list:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(root + "/")]


@needs_root
def test_validating_a_mount_makes_it_and_takes_it_down_again(mounting_hsmd, tmp_path):
    daemon, mount_root = mounting_hsmd
    proxy = daemon.proxy()
    export = tmp_path / "export"
    export.mkdir()
    bind = {"id": "bind", "connection": str(export), "vfs_type": "none", "mnt_options": "bind"}
    missing = {**bind, "id": "missing", "connection": str(tmp_path / "missing")}
    answer = ok(proxy.validateStorageServerConnection(POSIXFS, BLANK, [bind, missing]))
    assert answer["statuslist"] == [{"id": "bind", "status": 0}, {"id": "missing", "status": 477}]
    assert mounts_under(mount_root) == [] and managed(proxy) == []

    ok(proxy.connectStorageServer(POSIXFS, BLANK, [bind]))
    [path] = mounts_under(mount_root)
    assert ok(proxy.validateStorageServerConnection(POSIXFS, BLANK, [bind]))["statuslist"][0]["status"] == 0
    assert mounts_under(mount_root) == [path]  # a connection in use is only looked at
    ok(proxy.disconnectStorageServer(POSIXFS, BLANK, [bind]))
    assert mounts_under(mount_root) == []


def test_iscsiadm_output_reads_as_vdsm_answered():
    """iscsiadm's discovery output (the path hosts with iSCSI in the kernel take) reads into VDSM's two lists."""
    out = ("10.35.0.5:3260,1 iqn.2026-11.org.example:disk1\n[fd00::5]:3260,2 iqn.2026-11.org.example:disk2\n"
           "10.35.0.5:3260,1 iqn.2026-11.org.example:disk1\n")
    found = discovery._targets(out, discovery._ISCSIADM)
    assert [target.full() for target in found] == ["10.35.0.5:3260,1 iqn.2026-11.org.example:disk1",
                                                   "[fd00::5]:3260,2 iqn.2026-11.org.example:disk2"]


@pytest.fixture
def tgtd(tmp_path):
    """A real tgtd on 127.0.0.1 with two targets, the first behind CHAP."""
    if shutil.which("tgtd") is None:
        pytest.skip("tgtd is not installed (apt-get install tgt)")
    from tests.tgtd import Tgtd
    target = Tgtd(str(tmp_path), IQN + "-1", user="hsmuser", password=SECRET).start()
    try:
        target.tgtadm("--op", "new", "--mode", "target", "--tid", "2", "-T", IQN + "-2")
        target.tgtadm("--op", "bind", "--mode", "target", "--tid", "2", "-I", "ALL")
        yield target
    finally:
        target.stop()


@needs_root
def test_discover_send_targets_of_a_real_tgtd(mounting_hsmd, tgtd):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    expected = sorted([f"127.0.0.1:{tgtd.port},1 {IQN}-1", f"127.0.0.1:{tgtd.port},1 {IQN}-2"])
    for con in [{"connection": "127.0.0.1", "port": str(tgtd.port), "user": "", "password": ""},
                {"connection": "127.0.0.1", "port": tgtd.port},
                {"connection": "127.0.0.1", "port": tgtd.port, "user": "hsmuser", "password": SECRET}]:
        answer = ok(proxy.discoverSendTargets(con))
        assert sorted(answer["fullTargets"]) == expected, con
        assert sorted(answer["targets"]) == [f"{IQN}-1", f"{IQN}-2"]
    assert SECRET not in daemon.log_text()

    unused = free_port()
    failed = proxy.discoverSendTargets({"connection": "127.0.0.1", "port": unused, "user": "", "password": ""})
    assert code(failed) == 475 and f"127.0.0.1:{unused}" in failed["status"]["message"]
    for con in ["127.0.0.1", {"port": tgtd.port}, {"connection": "-oops", "port": tgtd.port},
                {"connection": "127.0.0.1", "port": "x"}, {"connection": "127.0.0.1", "port": 70000},
                {"connection": "127.0.0.1;reboot", "port": tgtd.port},
                {"connection": "127.0.0.1", "port": tgtd.port, "user": 5, "password": ""}]:
        assert code(proxy.discoverSendTargets(con)) == 1000, con


def test_discovery_goes_through_supervdsmd(make_hsmd, tmp_path):
    daemon = make_hsmd(config={"supervdsm": {"socket": str(tmp_path / "no-supervdsmd.sock")}}).start()
    answer = daemon.proxy().discoverSendTargets({"connection": "127.0.0.1", "port": 3260, "user": "",
                                                 "password": ""})
    assert code(answer) == 5003  # SupervdsmUnavailable: nothing asked the portal behind its back
