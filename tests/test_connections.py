"""Managed storage connections through a real hsmd and a real supervdsmd doing real mounts.

posixfs connections are real bind mounts made by supervdsmd. NFS cannot be
mounted by this kernel: an NFS connection is checked for what hsmd reports
when its mount fails, not for a mount.
"""

import json
import os
import stat
import subprocess
import time

import pytest

from tests.images_helpers import code, ok, wait_image
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def bind_uri(path) -> str:
    return f"posixfs://?spec={path}&vfsType=none&options=bind"


def servers(proxy) -> dict:
    return ok(proxy.getStorageServerList())["servers"]


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def test_bad_input_gets_clear_codes_and_changes_nothing(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    ok(proxy.manageStorageServer(bind_uri(tmp_path), "keep"))
    before = wait_for(lambda: servers(proxy)["keep"]["connected"] and servers(proxy), what="mount")
    cases = [
        ("ftp://host/x", "c1", 5014), ("nfs://", "c1", 5014), ("nfs://host/../etc", "c1", 5014),
        ("nfs://host/export?version=4&bogus=1", "c1", 5014), ("posixfs://?spec=/x", "c1", 5014),
        ("iscsi://127.0.0.1/not-an-iqn", "c1", 5014), ("localfs://relative", "c1", 5014), (42, "c1", 5014),
        (bind_uri(tmp_path), "a/b", 1000), (bind_uri(tmp_path), "", 1000),
        (bind_uri(tmp_path / "other"), "keep", 478),
    ]
    for uri, cid, expected in cases:
        assert code(proxy.manageStorageServer(uri, cid)) == expected, (uri, cid)
    assert code(proxy.unmanageStorageServer("no-such-cid")) == 479
    assert servers(proxy) == before
    ok(proxy.manageStorageServer(bind_uri(tmp_path), "keep"))  # the same again: success, nothing new
    assert servers(proxy) == before


def test_a_bind_mount_is_made_shared_watched_and_torn_down_with_its_last_cid(mounting_hsmd, tmp_path):
    daemon, mount_root = mounting_hsmd
    proxy = daemon.proxy()
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "hello").write_text("world")
    ok(proxy.manageStorageServer(bind_uri(exported), "first"))
    first = wait_for(lambda: servers(proxy)["first"]["connected"] and servers(proxy)["first"], what="mount")
    path = first["connectionInfo"]["path"]
    assert first["managed"] and first["lastError"] == {} and path.startswith(mount_root + "/")
    with open(os.path.join(path, "hello")) as f:
        assert f.read() == "world"
    ok(proxy.manageStorageServer(bind_uri(exported).replace("&options=bind", "&options=bind,"), "second"))
    second = wait_for(lambda: servers(proxy)["second"]["connected"] and servers(proxy)["second"])
    assert second["connectionInfo"]["path"] == path  # one physical connection, two CIDs

    subprocess.run(["umount", "-l", path], check=True)  # lost behind hsmd's back
    wait_for(lambda: mounted(path) and servers(proxy)["first"]["connected"], what="reconnection")

    ok(proxy.unmanageStorageServer("first"))
    # No wait: unmanaging unmounts before it answers (see the last one below), so it would be gone by now.
    assert mounted(path) and "first" not in servers(proxy)  # the second CID keeps it up
    ok(proxy.unmanageStorageServer("second"))
    assert not mounted(path) and not any(entry["managed"] for entry in servers(proxy).values())


def test_failures_are_reported_and_retried(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    missing = tmp_path / "not-yet"
    ok(proxy.manageStorageServer(bind_uri(missing), "late"))
    ok(proxy.manageStorageServer("nfs://127.0.0.1/no/such/export?version=4.2", "nfs"))
    late = wait_for(lambda: servers(proxy)["late"]["lastError"] and servers(proxy)["late"], what="error")
    assert not late["connected"] and late["lastError"]["code"] == 477 and int(late["lastError"]["time"]) > 0
    assert "not-yet" in late["lastError"]["message"]
    nfs = wait_for(lambda: servers(proxy)["nfs"]["lastError"] and servers(proxy)["nfs"], what="NFS error")
    assert not nfs["connected"] and nfs["lastError"]["code"] == 477
    assert nfs["connectionInfo"]["server"] == "127.0.0.1" and "vers=4.2" in nfs["connectionInfo"]["options"]
    missing.mkdir()  # the storage appears: the monitor's next try connects
    wait_for(lambda: servers(proxy)["late"]["connected"], what="connection after the fix")
    assert servers(proxy)["late"]["lastError"] == {}


def test_managed_connections_survive_a_restart(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    ok(proxy.manageStorageServer(bind_uri(tmp_path), "kept"))
    path = wait_for(lambda: servers(proxy)["kept"]["connected"] and servers(proxy)["kept"])["connectionInfo"]["path"]
    subprocess.run(["umount", "-l", path], check=True)
    daemon.kill()
    daemon.start()
    proxy = daemon.proxy()
    assert servers(proxy)["kept"]["managed"]
    wait_for(lambda: servers(proxy)["kept"]["connected"], what="reconnection at start-up")
    assert mounted(path)


def test_mounts_hsmd_did_not_make_are_listed_as_unmanaged(mounting_hsmd, tmp_path):
    daemon, mount_root = mounting_hsmd
    proxy = daemon.proxy()
    stray = os.path.join(mount_root, "by-hand")
    os.makedirs(stray)
    subprocess.run(["mount", "--bind", str(tmp_path), stray], check=True)
    [(transient, entry)] = [(cid, e) for cid, e in servers(proxy).items() if e["connectionInfo"].get("path") == stray]
    assert not entry["managed"] and entry["connected"]
    assert code(proxy.unmanageStorageServer(transient)) == 479
    node = ["iscsiadm", "-m", "node", "-T", "iqn.2026-11.org.hsm.test:by-hand", "-p", "127.0.0.1:3999"]
    subprocess.run([*node, "--op=new"], check=True, capture_output=True)
    try:
        found = wait_for(lambda: [e for e in servers(proxy).values()
                                  if e["connectionInfo"].get("target") == "iqn.2026-11.org.hsm.test:by-hand"],
                         what="the node record in the list")
        assert not found[0]["managed"] and found[0]["connectionInfo"]["portal"] == "127.0.0.1:3999"
    finally:
        subprocess.run([*node, "--op=delete"], capture_output=True)


def test_credentials_never_show(mounting_hsmd):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    ok(proxy.manageStorageServer("iscsi://admin:s3cr3t-pass@127.0.0.1:3260/iqn.2026-11.org.example:disk1", "lun"))
    entry = wait_for(lambda: servers(proxy)["lun"]["lastError"] and servers(proxy)["lun"], what="login error")
    assert entry["connectionInfo"]["user"] == "admin" and entry["connectionInfo"]["target"].endswith(":disk1")
    assert "s3cr3t-pass" not in json.dumps(servers(proxy))
    assert "s3cr3t-pass" not in daemon.log_text()
    state = os.path.join(daemon.state_dir, "connections.json")
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600


def test_a_posixfs_repository_on_a_managed_connection(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    storage = tmp_path / "shared"
    storage.mkdir()
    params = {"connectionId": "shared", "subdir": "repo"}
    assert code(proxy.createStorageRepository("posixfs-1", params, {})) == 479
    ok(proxy.manageStorageServer(bind_uri(storage), "shared"))
    wait_for(lambda: servers(proxy)["shared"]["connected"])
    ok(proxy.createStorageRepository("posixfs-1", params, {}))  # the subdir is made on first use
    assert (storage / "repo" / "repository.json").exists()
    for bad in ("../out", "/abs", "a/../../out"):
        assert code(proxy.createStorageRepository("posixfs-1", {**params, "subdir": bad}, {})) == 1000
    assert not (tmp_path / "out").exists()
    ok(proxy.connectStorageRepository("shared", "posixfs-1", params, {}))
    disk = ok(proxy.createVirtualDisk("shared", str(1 << 30), "", {}, {}))["imageId"]
    info = wait_image(proxy, "shared", disk)
    assert os.path.exists(storage / "repo" / "volumes" / os.path.basename(info["volumes"][0]["path"]))


def test_vdsm_connect_and_disconnect_storage_server(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    good = {"id": "11111111-2222-3333-4444-555555555555", "connection": str(tmp_path), "vfs_type": "none",
            "mnt_options": "bind"}
    bad = {"id": "66666666-2222-3333-4444-555555555555", "connection": str(tmp_path / "missing"), "vfs_type": "none",
           "mnt_options": "bind"}
    answer = ok(proxy.connectStorageServer(6, "00000000-0000-0000-0000-000000000000", [good, bad]))
    assert answer["statuslist"] == [{"id": good["id"], "status": 0}, {"id": bad["id"], "status": 477}]
    listed = {entry["id"]: entry for entry in ok(proxy.getStorageConnectionsList(""))["connectionslist"]}
    assert listed[good["id"]]["connected"] and listed[good["id"]]["spec"] == str(tmp_path)
    path = listed[good["id"]]["path"]
    assert mounted(path)
    assert ok(proxy.connectStorageServer(9, "", [good]))["statuslist"] == [{"id": good["id"], "status": 1000}]
    assert code(proxy.connectStorageServer(6, "", "not a list")) == 1000
    answer = ok(proxy.disconnectStorageServer(6, "", [good, bad, {"id": "never-connected"}]))
    assert [entry["status"] for entry in answer["statuslist"]] == [0, 0, 479]
    assert not mounted(path)
    assert not any(entry["managed"] for entry in ok(proxy.getStorageConnectionsList(""))["connectionslist"])


def iscsi_nodes() -> str:
    done = subprocess.run(["iscsiadm", "-m", "node"], capture_output=True, text=True)
    return done.stdout


@pytest.mark.parametrize("chap", [True, False], ids=["chap", "no-auth"])
def test_an_iscsi_connection_writes_real_node_records(mounting_hsmd, tmp_path, chap):
    """tgtd exports a real LUN behind CHAP; hsmd writes real open-iscsi node records through supervdsmd.

    The login itself cannot happen on this machine (no iscsid, no iscsi_tcp): its failure is
    what hsmd must report. That the target and credentials are right is shown with libiscsi
    and qemu-img, which log in from user space.
    """
    from tests.tgtd import Tgtd
    user, password = ("hsmuser", "hsm-chap-secret") if chap else ("", "")
    target = Tgtd(str(tmp_path), "iqn.2026-11.org.hsm.test:lun", user=user, password=password).start()
    try:
        portal_url = target.url().rsplit("/", 2)[0] + "/"
        listing = subprocess.run(["iscsi-ls", "-s", portal_url], capture_output=True, text=True).stdout
        assert target.iqn in listing  # sendtargets discovery and a login, from user space
        assert subprocess.run(["qemu-img", "info", target.url()], capture_output=True).returncode == 0
        if chap:
            assert subprocess.run(["qemu-img", "info", target.url(with_credentials=False)],
                                  capture_output=True).returncode != 0  # CHAP is really required
        daemon, _ = mounting_hsmd
        proxy = daemon.proxy()
        auth = f"{user}:{password}@" if chap else ""
        uri = f"iscsi://{auth}127.0.0.1:{target.port}/{target.iqn}"
        ok(proxy.manageStorageServer(uri, "lun"))
        entry = wait_for(lambda: servers(proxy)["lun"]["lastError"] and servers(proxy)["lun"], what="login error")
        assert not entry["connected"] and entry["lastError"]["code"] == 451
        assert f"127.0.0.1:{target.port}" in iscsi_nodes() and target.iqn in iscsi_nodes()
        record = subprocess.run(["iscsiadm", "-m", "node", "-T", target.iqn, "-p", f"127.0.0.1:{target.port}"],
                                capture_output=True, text=True).stdout
        assert ("node.session.auth.authmethod = CHAP" in record) is chap
        if chap:
            assert "node.session.auth.username = hsmuser" in record
            assert "hsm-chap-secret" not in json.dumps(servers(proxy)) + daemon.log_text()
        ok(proxy.unmanageStorageServer("lun"))
        assert target.iqn not in iscsi_nodes()  # the record goes with the last CID
    finally:
        target.stop()
        subprocess.run(["iscsiadm", "-m", "node", "-T", "iqn.2026-11.org.hsm.test:lun", "--op=delete"],
                       capture_output=True)


def test_an_ext4_image_on_a_loop_mount_holds_a_repository(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    ok(proxy.manageStorageServer(f"posixfs://?spec={image}&vfsType=ext4&options=loop", "ext4"))
    entry = wait_for(lambda: servers(proxy)["ext4"]["connected"] and servers(proxy)["ext4"], what="loop mount")
    path = entry["connectionInfo"]["path"]
    params = {"connectionId": "ext4"}
    ok(proxy.createStorageRepository("posixfs-1", params, {"force": True}))  # mkfs left lost+found
    ok(proxy.connectStorageRepository("onloop", "posixfs-1", params, {}))
    disk = ok(proxy.createVirtualDisk("onloop", str(64 << 20), "", {}, {}))["imageId"]
    assert wait_image(proxy, "onloop", disk)["volumes"][0]["path"].startswith(path + "/")
    assert code(proxy.unmanageStorageServer("ext4")) == 478  # a repository sits on it
    assert mounted(path)
    ok(proxy.disconnectStorageRepository("onloop", {}))
    ok(proxy.unmanageStorageServer("ext4"))
    assert not mounted(path)


def repository_checked_after(proxy, repo_id: str, moment: float) -> dict:
    """The repository as listed once its monitor has checked it after `moment` (time.time())."""
    def fresh():
        repo = ok(proxy.getStorageRepositoryList({}))["repos"][repo_id]
        return repo["lastCheck"] and time.time() - float(repo["lastCheck"]) > moment + 0.1 and repo
    return wait_for(fresh, what=f"a check of {repo_id}")


def test_the_last_cid_under_a_repository_is_refused_whichever_cid_the_repository_used(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    storage = tmp_path / "shared"
    (storage / "repo").mkdir(parents=True)
    ok(proxy.manageStorageServer(bind_uri(storage), "a"))
    ok(proxy.manageStorageServer(bind_uri(storage), "b"))
    path = wait_for(lambda: servers(proxy)["a"]["connected"] and servers(proxy)["a"])["connectionInfo"]["path"]
    params = {"connectionId": "a", "subdir": "repo"}
    ok(proxy.createStorageRepository("posixfs-1", params, {}))
    ok(proxy.connectStorageRepository("R", "posixfs-1", params, {}))

    ok(proxy.unmanageStorageServer("a"))  # b still holds the storage R sits on
    assert code(proxy.unmanageStorageServer("b")) == 478
    refused = time.time()
    assert mounted(path) and servers(proxy)["b"]["connected"]
    repo = repository_checked_after(proxy, "R", refused)
    assert repo["connected"] and repo["valid"] and repo["lastError"] == ""

    ok(proxy.disconnectStorageRepository("R", {}))
    ok(proxy.unmanageStorageServer("b"))
    assert not mounted(path)


def test_a_flapping_connection_reports_the_error_until_it_is_back(mounting_hsmd, tmp_path):
    daemon, _ = mounting_hsmd
    proxy = daemon.proxy()
    storage = tmp_path / "flaps"
    storage.mkdir()
    ok(proxy.manageStorageServer(bind_uri(storage), "flap"))
    path = wait_for(lambda: servers(proxy)["flap"]["connected"] and servers(proxy)["flap"])["connectionInfo"]["path"]
    storage.rename(tmp_path / "away")  # the server goes away...
    subprocess.run(["umount", "-l", path], check=True)  # ...and the mount with it
    down = wait_for(lambda: servers(proxy)["flap"]["lastError"] and servers(proxy)["flap"], what="error")
    assert not down["connected"] and down["lastError"]["code"] == 477
    (tmp_path / "away").rename(storage)  # back: the monitor reconnects by itself
    up = wait_for(lambda: servers(proxy)["flap"]["connected"] and servers(proxy)["flap"], what="reconnection")
    assert up["lastError"] == {} and mounted(path)


def test_an_nfs_connection_to_a_real_ganesha_export(mounting_hsmd, tmp_path):
    """nfs-ganesha really serves the export (libnfs lists it from user space); this kernel has no NFS
    client, so the mount supervdsmd runs fails, and that failure is what hsmd must report."""
    from tests.ganesha import Ganesha
    export = tmp_path / "export"
    export.mkdir()
    (export / "probe").write_text("served")
    server = Ganesha(str(tmp_path / "ganesha"), str(export)).start()
    try:
        # ganesha takes a moment before its export answers
        wait_for(lambda: "probe" in subprocess.run(["nfs-ls", "nfs://127.0.0.1/export?version=4"], capture_output=True,
                                                   text=True).stdout, what="the ganesha export answering", poll=0.5)
        daemon, _ = mounting_hsmd
        proxy = daemon.proxy()
        ok(proxy.manageStorageServer("nfs://127.0.0.1/export?version=4&timeo=600&retrans=3", "filer"))
        entry = wait_for(lambda: servers(proxy)["filer"]["lastError"] and servers(proxy)["filer"], what="error")
        info = entry["connectionInfo"]
        assert info["spec"] == "127.0.0.1:/export" and info["vfsType"] == "nfs"
        assert {"vers=4", "timeo=600", "retrans=3", "soft"} <= set(info["options"].split(","))
        assert not entry["connected"] and entry["lastError"]["code"] == 477
        assert entry["lastError"]["message"]
    finally:
        server.stop()
