"""supervdsmd's privileged verbs against real storage: LVM on loop devices, mounts, files.

LVM runs for real with activation off (this kernel has no device-mapper), as
shared/environment.md says: LVM_SYSTEM_DIR points at a private lvm.conf.
"""

import json
import os
import shutil
import subprocess

import pytest

from hsm.errors import SupervdsmCallError
from tests.supervdsmd import Supervdsmd

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("lvm") is None or shutil.which("losetup") is None,
                                reason="needs root, lvm2 and losetup")

ACTIVATION_OFF = "global { activation=0 }"


@pytest.fixture
def roots(tmp_path):
    repository = tmp_path / "repository"
    state = tmp_path / "state"
    lvm_dir = tmp_path / "lvm"
    for folder in (repository / "mnt", state, lvm_dir):
        folder.mkdir(parents=True)
    (lvm_dir / "lvm.conf").write_text("global { activation = 0 }\n")
    return {"repository": str(repository), "state": str(state), "lvm": str(lvm_dir)}


@pytest.fixture
def helper(tmp_path, roots):
    daemon = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": roots["repository"],
                                                              "state_dir": roots["state"]}},
                        env={"LVM_SYSTEM_DIR": roots["lvm"]})
    daemon.start()
    client = daemon.client()
    yield client
    client.close()
    daemon.kill()


def _loop(tmp_path, name, size_mb=64):
    image = tmp_path / name
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    return subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def loop(tmp_path):
    devices = []

    def make(name="pv.img", size_mb=64):
        devices.append(_loop(tmp_path, name, size_mb))
        return devices[-1]

    yield make
    for device in devices:
        subprocess.run(["losetup", "-d", device], check=False)


def _config(device):
    return (f'devices {{ filter=["a|^{device}$|", "r|.*|"] hints="none" obtain_device_list_from_udev=0 '
            f'use_devicesfile=0 }} {ACTIVATION_OFF}')


def test_lvm_volume_group_and_tagged_volume(helper, loop):
    device = loop()
    vg = f"hsmtest{os.getpid()}"
    config = _config(device)
    try:
        assert helper.call("lvm", command="pvcreate", args=[device], config=config)["rc"] == 0
        assert helper.call("lvm", command="vgcreate", args=[vg, device], config=config)["rc"] == 0
        created = helper.call("lvm", command="lvcreate", args=["-an", "-Zn", "-L", "16m", "-n", "vol1",
                                                               "--addtag", "IU_image1", vg], config=config)
        assert created["rc"] == 0, created["err"]
        report = helper.call("lvm", command="lvs", args=["--reportformat", "json", "-o", "lv_name,lv_size,lv_tags",
                                                         "--units", "b", "--nosuffix", vg], config=config)
        volumes = json.loads(report["out"])["report"][0]["lv"]
        assert volumes == [{"lv_name": "vol1", "lv_size": str(16 * 1024 * 1024), "lv_tags": "IU_image1"}]
        hidden = helper.call("lvm", command="vgs", args=["--reportformat", "json", vg],
                             config=f'devices {{ filter=["r|.*|"] }} {ACTIVATION_OFF}')
        assert vg not in hidden["out"], "the caller's --config filter is applied"
    finally:
        helper.call("lvm", command="vgremove", args=["-f", vg], config=config)
        helper.call("lvm", command="pvremove", args=[device], config=config)


@pytest.mark.parametrize("command, args, config, words", [
    ("lvcreate", ["-n", "x; rm -rf /", "vg"], "", "not an acceptable value"),
    ("lvcreate", ["-n", "$(reboot)", "vg"], "", "not an acceptable value"),
    ("pvcreate", ["/dev/../etc/passwd"], "", "not an acceptable value"),
    ("pvcreate", ["--config", "global{}"], "", "option '--config' is not allowed"),
    ("pvcreate", ["--config=global{}"], "", "option '--config=global{}' is not allowed"),
    ("vgs", [], "global { thin_check_executable=\"/bin/sh\" }", "executable"),
    ("vgs", [], "devices {}\nglobal {}", "one line"),
    ("lvmconfig", [], "", "not allowed"),
    ("vgs", [42], "", "expected a string"),
])
def test_lvm_refuses_injection(helper, command, args, config, words):
    with pytest.raises(SupervdsmCallError) as info:
        helper.call("lvm", command=command, args=args, config=config)
    assert info.value.code == 1000
    assert words in str(info.value)


def test_bind_mount_under_the_mount_root(helper, roots, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "marker").write_text("here")
    mountpoint = os.path.join(roots["repository"], "mnt", "_export")
    done = helper.call("mount", spec=str(export), mountpoint=mountpoint, vfsType="none", options="bind")
    assert done["rc"] == 0, done["err"]
    try:
        with open(os.path.join(mountpoint, "marker")) as f:
            assert f.read() == "here"
    finally:
        assert helper.call("umount", mountpoint=mountpoint)["rc"] == 0
    assert not os.path.exists(os.path.join(mountpoint, "marker"))


def test_ext4_on_a_loop_device(helper, roots, loop):
    device = loop("fs.img", 32)
    subprocess.run(["mkfs.ext4", "-q", device], check=True)
    mountpoint = os.path.join(roots["repository"], "mnt", "loopfs")
    done = helper.call("mount", spec=device, mountpoint=mountpoint, vfsType="ext4", options="noatime")
    assert done["rc"] == 0, done["err"]
    try:
        assert os.path.isdir(os.path.join(mountpoint, "lost+found"))
    finally:
        helper.call("umount", mountpoint=mountpoint)


def test_failed_mount_reports_rc_and_stderr(helper, roots, tmp_path):
    mountpoint = os.path.join(roots["repository"], "mnt", "x")
    done = helper.call("mount", spec=str(tmp_path / "nothing"), mountpoint=mountpoint, vfsType="none", options="bind")
    assert done["rc"] != 0
    assert "nothing" in done["err"]


@pytest.mark.parametrize("args, words", [
    ({"spec": "/srv", "mountpoint": "/mnt/elsewhere", "vfsType": "none", "options": "bind"}, "not under"),
    ({"spec": "/srv", "mountpoint": "MNT/../../etc", "vfsType": "none"}, "absolute normalized"),
    ({"spec": "-o", "mountpoint": "MNT/a", "vfsType": "none"}, "absolute normalized"),
    ({"spec": "/srv", "mountpoint": "MNT/a", "vfsType": "fuse.sshfs"}, "vfsType"),
    ({"spec": "/srv", "mountpoint": "MNT/a", "vfsType": "none", "options": "bind,helper=/bin/sh"}, "mount option"),
    ({"spec": "host:/e;reboot", "mountpoint": "MNT/a", "vfsType": "nfs"}, "server:/export"),
])
def test_mount_refuses_bad_arguments(helper, roots, args, words):
    mnt = os.path.join(roots["repository"], "mnt")
    args = {k: v.replace("MNT", mnt) for k, v in args.items()}
    with pytest.raises(SupervdsmCallError) as info:
        helper.call("mount", **args)
    assert info.value.code == 1000
    assert words in str(info.value)


def test_chown_and_chmod_under_the_roots_only(helper, roots, tmp_path):
    image = os.path.join(roots["state"], "volume.qcow2")
    open(image, "w").close()
    helper.call("chown", path=image, uid=36, gid=36)
    helper.call("chmod", path=image, mode=0o660)
    st = os.stat(image)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (36, 36, 0o660)
    outside = tmp_path / "outside"
    outside.write_text("")
    escape = os.path.join(roots["state"], "escape")
    os.symlink(outside, escape)
    for path in (str(outside), escape, "/etc/shadow"):
        with pytest.raises(SupervdsmCallError) as info:
            helper.call("chown", path=path, uid=36, gid=36)
        assert info.value.code == 1000
    assert os.stat(outside).st_uid == 0
    with pytest.raises(SupervdsmCallError):
        helper.call("chmod", path=image, mode=0o4755)


def test_udevadm_settle_and_trigger(helper):
    assert helper.call("udevadmSettle", timeout=2)["rc"] == 0
    assert helper.call("udevadmTrigger", subsystem="block", action="change")["rc"] == 0
    with pytest.raises(SupervdsmCallError, match="1 to 600"):
        helper.call("udevadmSettle", timeout=0)
    with pytest.raises(SupervdsmCallError, match="add or change"):
        helper.call("udevadmTrigger", action="remove")


def test_missing_and_mistyped_arguments(helper):
    with pytest.raises(SupervdsmCallError, match="missing arguments command"):
        helper.call("lvm", args=[])
    with pytest.raises(SupervdsmCallError, match="expected int"):
        helper.call("chown", path="/x", uid="0", gid=0)


needs_iscsiadm = pytest.mark.skipif(shutil.which("iscsiadm") is None, reason="open-iscsi is not installed")


@needs_iscsiadm
def test_iscsi_node_and_iface_records(helper, tmp_path):
    """Records are written for real in /etc/iscsi; CHAP secrets never reach the log."""
    suffix = f"{os.getpid()}x{id(tmp_path) % 10000}"
    target = f"iqn.2026-11.test.hsm:target{suffix}"
    iface = f"hsmtest{suffix}"
    portal = "127.0.0.1:3260,1"
    assert helper.call("iscsiIface", op="new", name=iface)["rc"] == 0
    try:
        assert helper.call("iscsiNode", op="new", target=target, portal=portal, iface=iface)["rc"] == 0
        for name, value in [("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", "hsmuser"),
                            ("node.session.auth.password", "Secret-4-chap")]:
            done = helper.call("iscsiNode", op="update", target=target, portal=portal, iface=iface, name=name,
                               value=value)
            assert done["rc"] == 0, done["err"]
        listed = helper.call("iscsiNodeList")["out"]
        assert f"127.0.0.1:3260,1 {target}" in listed
        login = helper.call("iscsiNode", op="login", target=target, portal=portal, iface=iface)
        assert login["rc"] != 0, "no iSCSI kernel support on this machine: login must fail, and say so"
        assert login["err"]
    finally:
        helper.call("iscsiNode", op="delete", target=target, portal=portal, iface=iface)
        helper.call("iscsiIface", op="delete", name=iface)
    assert target not in helper.call("iscsiNodeList")["out"]
    log_dir = os.path.join(os.path.dirname(os.path.dirname(helper.path)), "log")
    with open(os.path.join(log_dir, "supervdsm.log")) as f:
        log = f.read()
    assert "node.session.auth.password" in log and "Secret-4-chap" not in log


@needs_iscsiadm
@pytest.mark.parametrize("args, words", [
    ({"op": "new", "target": "iqn.2026-11.x:t;reboot", "portal": "127.0.0.1:3260"}, "target="),
    ({"op": "new", "target": "iqn.2026-11.x:t", "portal": "127.0.0.1:3260 -o"}, "portal="),
    ({"op": "new", "target": "iqn.2026-11.x:t", "portal": "127.0.0.1:3260", "iface": "../x"}, "iface="),
    ({"op": "update", "target": "iqn.2026-11.x:t", "portal": "127.0.0.1:3260", "name": "node.conn[0].x",
      "value": "1"}, "may not be changed"),
    ({"op": "rescan", "target": "iqn.2026-11.x:t", "portal": "127.0.0.1:3260"}, "op="),
])
def test_iscsi_refuses_bad_arguments(helper, args, words):
    with pytest.raises(SupervdsmCallError) as info:
        helper.call("iscsiNode", **args)
    assert info.value.code == 1000
    assert words in str(info.value)


@pytest.mark.skipif(shutil.which("multipath") is None, reason="multipath-tools is not installed")
def test_multipath_reconfigure_runs_the_real_tool(helper):
    """On a host with device-mapper this reloads the maps; this kernel has none, and the answer says so."""
    done = helper.call("multipathReconfigure")
    with open("/proc/misc") as f:
        kernel_has_dm = "device-mapper" in f.read()
    if not kernel_has_dm:
        assert done["rc"] != 0
        assert "device-mapper" in done["err"]
    else:
        assert done["rc"] == 0, done["err"]
