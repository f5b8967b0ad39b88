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
    sources = tmp_path / "sources"
    for folder in (repository / "mnt", state, lvm_dir, sources):
        folder.mkdir(parents=True)
    (lvm_dir / "lvm.conf").write_text("global { activation = 0 }\n")
    return {"repository": str(repository), "state": str(state), "lvm": str(lvm_dir), "sources": str(sources)}


@pytest.fixture
def helper(tmp_path, roots):
    daemon = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": roots["repository"],
                                                              "state_dir": roots["state"]}},
                        env={"LVM_SYSTEM_DIR": roots["lvm"]}, mount_sources=roots["sources"])
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


def mountinfo(mountpoint):
    """The mountinfo line of `mountpoint` split in fields, or None when nothing is mounted there."""
    with open("/proc/self/mountinfo") as f:
        return next((line.split() for line in f if line.split()[4] == mountpoint), None)


def is_mounted(mountpoint):
    return mountinfo(mountpoint) is not None


def mount_options(mountpoint):
    return set(mountinfo(mountpoint)[5].split(","))


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
    export = tmp_path / "sources" / "export"
    export.mkdir()
    (export / "marker").write_text("here")
    mountpoint = os.path.join(roots["repository"], "mnt", "_export")
    done = helper.call("mount", spec=str(export), mountpoint=mountpoint, vfsType="none", options="bind")
    assert done["rc"] == 0, done["err"]
    try:
        with open(os.path.join(mountpoint, "marker")) as f:
            assert f.read() == "here"
        assert {"nosuid", "nodev", "noexec"} <= mount_options(mountpoint)
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
    blank = os.path.join(roots["sources"], "blank.img")
    with open(blank, "wb") as f:
        f.truncate(1 << 20)
    done = helper.call("mount", spec=blank, mountpoint=mountpoint, vfsType="ext4", options="loop")
    assert done["rc"] != 0
    assert "wrong fs type" in done["err"] or "bad superblock" in done["err"], done["err"]
    assert not is_mounted(mountpoint)
    gone = helper.call("mount", spec=os.path.join(roots["sources"], "nothing"), mountpoint=mountpoint,
                       vfsType="none", options="bind")
    assert gone["rc"] != 0, "an allowed source that is not there is a failed mount (a server gone), not a refusal"
    assert "nothing" in gone["err"]
    assert not is_mounted(mountpoint)


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


# Issue 11, section 4: each reproduction is refused with 1000 and does nothing.

PRECIOUS = "root's own file\n"


@pytest.fixture
def volume_group(helper, loop):
    """A real VG on a loop device, made and removed through supervdsmd; (vg, device, config)."""
    device = loop()
    vg = f"hsmsec{os.getpid()}"
    config = _config(device)
    assert helper.call("lvm", command="pvcreate", args=[device], config=config)["rc"] == 0
    made = helper.call("lvm", command="vgcreate", args=[vg, device], config=config)
    assert made["rc"] == 0, made["err"]
    yield vg, device, config
    assert helper.call("lvm", command="vgremove", args=["-f", vg], config=config)["rc"] == 0, "-f is --force here"
    helper.call("lvm", command="pvremove", args=[device], config=config)


@pytest.fixture
def precious(tmp_path):
    path = tmp_path / "precious"
    path.write_text(PRECIOUS)
    os.chmod(path, 0o600)
    return path


def refused(helper, verb, **args):
    with pytest.raises(SupervdsmCallError) as info:
        helper.call(verb, **args)
    assert info.value.code == 1000, info.value
    return str(info.value)


@pytest.mark.parametrize("args", [["-f", "{file}", "{vg}"], ["--file", "{file}", "{vg}"], ["-f{file}", "{vg}"],
                                  ["{vg}", "-f", "{file}"]])
def test_vgcfgbackup_file_option_is_refused(helper, volume_group, precious, args):
    """-f is --force for vgremove (the fixture uses it) but --file for vgcfgbackup: refused there."""
    vg, _, config = volume_group
    args = [arg.format(file=precious, vg=vg) for arg in args]
    assert "not allowed for vgcfgbackup" in refused(helper, "lvm", command="vgcfgbackup", args=args, config=config)
    assert precious.read_text() == PRECIOUS


def test_vgcfgbackup_writes_only_lvm_own_backup(helper, volume_group, roots):
    vg, _, config = volume_group
    done = helper.call("lvm", command="vgcfgbackup", args=[vg], config=config)
    assert done["rc"] == 0, done["err"]
    assert os.path.exists(os.path.join(roots["lvm"], "backup", vg))


@pytest.mark.parametrize("config", [
    'log {{ file="{file}" overwrite=1 }}',
    'devices {{ filter=["r|.*|"] }} log {{ file="{file}" overwrite=1 }}',
    'backup {{ backup_dir="{dir}" }}',
    'backup {{ archive_dir="{dir}" }}',
    'global {{ etc="{dir}" }}',
    'global/etc="{dir}"',
    'global {{ locking_dir="{dir}" }}',
    'devices {{ cache_dir="{dir}" }}',
    'global {{ activation=0 log {{ file="{file}" }} }}',
    'devices {{ filter=["a|x\\\\", "|" ] }} log {{ file="{file}" }}',
    'devices {{ filter=["a|.*|"] filter=["r|.*|"] }}',
    'global {{ activation="{file}" }}',
    'devices {{ filter="{file}" }}',
])
def test_lvm_config_outside_the_known_settings_is_refused(helper, volume_group, precious, config):
    vg, _, _ = volume_group
    config = config.format(file=precious, dir=precious.parent)
    listing_before = sorted(os.listdir(precious.parent))
    refused(helper, "lvm", command="vgs", args=[vg], config=config)
    assert precious.read_text() == PRECIOUS
    assert sorted(os.listdir(precious.parent)) == listing_before


VDSM_CONFIG = ('devices {{ preferred_names=["^/dev/mapper/"] ignore_suspended_devices=1 write_cache_state=0 '
               'disable_after_error_count=3 filter=["a|^{device}$|", "r|.*|"] hints="none" '
               'obtain_device_list_from_udev=0 use_devicesfile=0 }} global {{ activation=0 prioritise_write_locks=1 '
               'wait_for_locks=1 use_lvmpolld=1 }} backup {{ retain_min=50 retain_days=0 }}')
# VDSM's older string: commas between settings, locking_type.
VDSM_OLD_CONFIG = ('devices {{ preferred_names = ["^/dev/mapper/"], ignore_suspended_devices=1, write_cache_state=0, '
                   'disable_after_error_count=3, filter = [ "a%{device}%", "r%.*%" ] }} '
                   'global {{ locking_type=1, prioritise_write_locks=1, wait_for_locks=1, activation=0 }} '
                   'backup {{ retain_min = 50, retain_days = 0 }} '
                   'activation {{ udev_sync=0 udev_rules=0 monitoring=0 }}')


@pytest.mark.parametrize("template", [VDSM_CONFIG, VDSM_OLD_CONFIG])
def test_vdsm_config_strings_and_the_options_hsm_uses_still_work(helper, volume_group, template):
    vg, device, _ = volume_group
    config = template.format(device=device)
    lv = f"{vg}/vol1"

    def ok(command, *args):
        done = helper.call("lvm", command=command, args=list(args), config=config)
        assert done["rc"] == 0, f"{command} {args}: {done['err']}"
        return done["out"]

    ok("lvcreate", "--autobackup", "n", "-an", "-Zn", "--wipesignatures", "n", "--contiguous", "n", "-L", "16m",
       "-n", "vol1", "--addtag", "IU_image1", "--addtag", "MD_1", vg)
    ok("lvextend", "-L", "+8m", lv)
    ok("lvextend", "-l", "+1", lv)
    ok("lvchange", "--addtag", "PU_parent", "--deltag", "MD_1", lv)
    ok("lvchange", "-p", "r", lv)
    ok("lvchange", "-p", "rw", lv)
    ok("lvreduce", "-f", "-L", "16m", lv)
    ok("lvrename", vg, "vol1", "vol2")
    ok("vgchange", "--addtag", "RHAT_storage_domain", "--deltag", "RHAT_storage_domain_UNREADY", vg)
    ok("vgck", vg)
    report = json.loads(ok("lvs", "--reportformat", "json", "-o", "lv_name,lv_size,lv_tags,lv_attr", "--units", "b",
                           "--nosuffix", "-S", f"vg_name={vg}", vg))
    assert report["report"][0]["lv"][0]["lv_name"] == "vol2"
    assert set(report["report"][0]["lv"][0]["lv_tags"].split(",")) == {"IU_image1", "PU_parent"}
    classic = ok("lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|", "--ignoreskippedcluster",
                 "-o", "uuid,name,vg_name,attr,size,seg_start_pe,devices,tags", vg)
    assert f"|vol2|{vg}|" in classic and str(16 << 20) in classic
    assert vg in ok("vgs", "--reportformat", "json", "-o", "vg_name,vg_tags", vg)
    assert device in ok("pvs", "--devices", device, "--noheadings", "-o", "pv_name")
    assert set(json.loads(ok("fullreport", "--reportformat", "json", vg))["report"][0]) >= {"vg", "pv", "lv"}
    ok("lvremove", "-f", f"{vg}/vol2")


@pytest.mark.parametrize("command, args, words", [
    ("lvextend", ["-r", "-L", "+8m", "vg/lv"], "not allowed for lvextend"),     # -r runs fsadm
    ("lvcreate", ["-L", "$(reboot)", "vg"], "not an acceptable value"),
    ("lvcreate", ["--addtag", "-f", "vg"], "not an acceptable value"),
    ("lvcreate", ["-n"], "not an acceptable value"),
    ("lvs", ["--", "-f"], "not allowed for lvs"),
    ("lvs", ["--size", "1m"], "not allowed for lvs"),
    ("vgs", ["--separator", "\n"], "not an acceptable value"),
    ("pvcreate", ["--metadatasize=128m", "/dev/x"], "not allowed for pvcreate"),
    ("vgcreate", ["--profile", "x", "vg", "/dev/x"], "not allowed for vgcreate"),
])
def test_lvm_options_are_checked_per_command(helper, command, args, words):
    assert words in refused(helper, "lvm", command=command, args=args)


def _image(path, size_mb=32):
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return str(path)


@pytest.fixture
def user_home(tmp_path):
    """A folder and an ext4 image owned by an unprivileged user, outside every root."""
    home = tmp_path / "home"
    home.mkdir()
    image = _image(home / "evil.img")
    os.chown(home, 65534, 65534)
    os.chown(image, 65534, 65534)
    return home


@pytest.mark.parametrize("spec, options, words", [
    ("{home}/evil.img", "loop,suid,dev,exec", "not accepted"),
    ("{home}/evil.img", "loop", "loop sources must be under"),
    ("{home}/evil.img", "", "loop sources must be under"),            # mount would loop a file by itself
    ("{sources}/user.img", "loop,suid", "'suid' is not accepted"),
    ("{sources}/user.img", "loop,dev", "'dev' is not accepted"),
    ("{sources}/user.img", "loop,exec", "'exec' is not accepted"),
    ("{sources}/user.img", "loop,defaults", "'defaults' is not accepted"),
    ("{sources}/user.img", "loop,bind", "'bind' is not accepted"),
    ("{sources}/user.img", "loop,offset=0", "'offset' is not accepted"),
    ("{sources}/link.img", "loop", "loop sources must be under"),     # a symlink out of the roots
    ("/etc/passwd", "", "loop sources must be under"),
    ("/dev/null", "", "expected a block device"),
])
def test_loop_mounts_of_user_images_are_refused(helper, roots, user_home, spec, options, words):
    _image(os.path.join(roots["sources"], "user.img"))
    os.symlink(user_home / "evil.img", os.path.join(roots["sources"], "link.img"))
    mountpoint = os.path.join(roots["repository"], "mnt", "evil")
    spec = spec.format(home=user_home, sources=roots["sources"])
    assert words in refused(helper, "mount", spec=spec, mountpoint=mountpoint, vfsType="ext4", options=options)
    assert not is_mounted(mountpoint)
    assert subprocess.run(["losetup", "-j", spec], capture_output=True, text=True).stdout == ""


@pytest.mark.parametrize("spec, options, words", [
    ("/", "bind", "bind sources must be under"),
    ("/etc", "bind", "bind sources must be under"),
    ("{sources}/../..", "bind", "absolute normalized"),
    ("{sources}/escape", "bind", "bind sources must be under"),       # a symlink to /
    ("{sources}", "rbind", "'rbind' is not accepted"),
    ("{sources}", "", "only a bind mount"),
    ("{sources}", "bind,remount", "'remount' is not accepted"),
    ("{sources}", "bind,suid", "'suid' is not accepted"),
    ("{sources}", "bind,X-mount.mode=0777", "not accepted"),
])
def test_bind_mounts_outside_the_configured_roots_are_refused(helper, roots, spec, options, words):
    os.symlink("/", os.path.join(roots["sources"], "escape"))
    mountpoint = os.path.join(roots["repository"], "mnt", "root")
    spec = spec.format(sources=roots["sources"])
    assert words in refused(helper, "mount", spec=spec, mountpoint=mountpoint, vfsType="none", options=options)
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("vfs_type, options, words", [
    ("glusterfs", "log-file=/etc/passwd", "'log-file' is not accepted"),
    ("cephfs", "secretfile=/etc/shadow", "'secretfile' is not accepted"),
    ("nfs", "soft,exec", "'exec' is not accepted"),
    ("nfs", "vers=4;reboot", "not acceptable"),
    ("nfs", "soft=1", "not acceptable"),
    ("nfs", "timeo", "not acceptable"),
])
def test_network_mount_options_are_allow_listed(helper, roots, vfs_type, options, words):
    mountpoint = os.path.join(roots["repository"], "mnt", "net")
    assert words in refused(helper, "mount", spec="127.0.0.1:/export", mountpoint=mountpoint, vfsType=vfs_type,
                            options=options)
    assert not is_mounted(mountpoint)


def test_a_loop_mount_of_an_image_under_the_roots_is_nosuid_nodev_noexec(helper, roots):
    image = _image(os.path.join(roots["sources"], "fs.img"))
    mountpoint = os.path.join(roots["repository"], "mnt", "fs")
    done = helper.call("mount", spec=image, mountpoint=mountpoint, vfsType="ext4", options="loop,noatime")
    assert done["rc"] == 0, done["err"]
    try:
        assert {"nosuid", "nodev", "noexec", "noatime"} <= mount_options(mountpoint)
        assert mountinfo(mountpoint)[-2].startswith("/dev/loop")
        assert image in subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout
    finally:
        assert helper.call("umount", mountpoint=mountpoint)["rc"] == 0
    assert not is_mounted(mountpoint)
