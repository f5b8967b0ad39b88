"""hsmd as the unprivileged user `hsm` (etc/sysusers.d/hsm.conf; tools/bootstrap.sh applies it), supervdsmd as root.

This is how the packaged units run them: hsmd holds no capability, and every
mount goes through supervdsmd, which lets the hsm user call it by uid and by the
socket's group. posixfs connections are real bind mounts made by supervdsmd.

The daemons live in a folder under /tmp that hsm can reach (pytest's own
folders are private to root).
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.block_helpers import detach_loops_over
from tests.hsmd import Hsmd
from tests.images_helpers import code, ok, qemu_reads, qemu_write, top_path, wait_image
from tests.supervdsmd import Supervdsmd
from tests.test_connections import bind_uri, servers
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting hsmd as another user needs root")

GiB, MiB = 1 << 30, 1 << 20
ROOT_WARNING = "hsmd runs as root"


@pytest.fixture(scope="module")
def hsm_user() -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam("hsm")
    except KeyError:
        pytest.skip("no user hsm: tools/bootstrap.sh makes it from etc/sysusers.d/hsm.conf")
    try:
        done = subprocess.run([sys.executable, "-c", "import hsm"], user="hsm", group="hsm", extra_groups=[],
                              capture_output=True, text=True, timeout=60)
        why = done.stderr.strip()[-200:] if done.returncode != 0 else ""
    except OSError as e:  # the interpreter itself cannot be reached
        why = str(e)
    if why:
        pytest.skip(f"user hsm cannot run {sys.executable} (a venv made from a Python under a private "
                    f"folder; tools/bootstrap.sh uses /usr/bin/python3.11): {why}")
    return account


@pytest.fixture
def place():
    """A folder every user can enter; mounts under it are undone at the end."""
    top = Path(tempfile.mkdtemp(prefix="hsm-unprivileged-"))
    top.chmod(0o755)
    yield top
    subprocess.run(f"grep -o ' {top}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", shell=True,
                   check=False)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def services(place, hsm_user):
    """(hsmd as hsm, supervdsmd as root): the packaged arrangement, on this test's own paths."""
    repository = place / "rhev"
    supervdsmd = Supervdsmd(str(place / "sv"), config={"irs": {"repository": str(repository)}},
                            allowed_uids="hsm", group="hsm", mount_sources=str(place)).start()
    config = {"supervdsm": {"socket": supervdsmd.socket},
              "irs": {"repository": str(repository), "sd_health_check_delay": 0.2},
              "connections": {"monitor_interval": 0.2, "reconnect_backoff_min": 0.2, "reconnect_backoff_max": 1}}
    (place / "hsmd").mkdir()
    daemon = Hsmd(str(place / "hsmd"), config=config, user="hsm").start()
    yield daemon, supervdsmd
    daemon.kill()
    supervdsmd.kill()


def credentials(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {name: fields[name].split() for name in ("Uid", "Gid", "Groups", "CapEff", "CapPrm")}


def owners(top: str) -> set[int]:
    """The owners of everything under `top`, `top` included."""
    found = {os.lstat(top).st_uid}
    for folder, dirs, files in os.walk(top):
        found.update(os.lstat(os.path.join(folder, name)).st_uid for name in dirs + files)
    return found


def mounts_under(top: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(f"{top}/")]


def hsm_owned(path: Path, account: pwd.struct_passwd) -> Path:
    path.mkdir()
    os.chown(path, account.pw_uid, account.pw_gid)
    return path


def test_hsmd_runs_as_hsm_with_no_capability(services, hsm_user):
    daemon, _ = services
    seen = credentials(daemon.process.pid)
    assert set(seen["Uid"]) == {str(hsm_user.pw_uid)} and set(seen["Gid"]) == {str(hsm_user.pw_gid)}
    assert int(seen["CapEff"][0], 16) == 0 and int(seen["CapPrm"][0], 16) == 0
    assert ok(daemon.proxy().ping())
    assert ROOT_WARNING not in daemon.log_text()


def test_the_image_flow_as_hsm(services, hsm_user):
    """Create, write, snapshot, copy, prepare, remove, check: every file hsmd made is hsm's."""
    daemon, _ = services
    proxy = daemon.proxy()
    disk = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, {}))["imageId"]
    wait_image(proxy, "local", disk)
    qemu_write(top_path(proxy, "local", disk), 0x3A, 0, 4 * MiB)
    snapshot = ok(proxy.createSnapshot("local", disk, {}, {}))["imageId"]
    wait_image(proxy, "local", snapshot)
    copy = ok(proxy.copyImage("local", snapshot, "", {}, {}))["imageId"]
    info = wait_image(proxy, "local", copy)
    assert qemu_reads(info["volumes"][0]["path"], 0x3A, 0, 4 * MiB)
    prepared = ok(proxy.prepareImage("local", disk, {}))
    assert code(proxy.removeImage("local", disk, {})) == 203  # prepared: busy
    ok(proxy.teardownImage("local", disk, {}))
    ok(proxy.removeImage("local", disk, {}))
    wait_for(lambda: ok(proxy.checkStorageRepository("local"))["fixes"] == [], timeout=180, what="clean done")
    assert disk not in ok(proxy.getImageList("local"))["images"]
    assert prepared["status"]["code"] == 0
    assert owners(daemon.state_dir) == {hsm_user.pw_uid}
    assert owners(daemon.log_dir) == {hsm_user.pw_uid}


def test_a_posixfs_repository_through_supervdsmd(services, hsm_user, place):
    """supervdsmd mounts (as root); hsmd makes the repository on the mount as hsm, then lets it go."""
    daemon, _ = services
    proxy = daemon.proxy()
    export = hsm_owned(place / "export", hsm_user)
    ok(proxy.manageStorageServer(bind_uri(export), "shared"))
    wait_for(lambda: servers(proxy)["shared"]["connected"], what="mounted")
    assert mounts_under(place / "rhev")
    params = {"connectionId": "shared", "subdir": "repo"}
    ok(proxy.createStorageRepository("posixfs-1", params, {}))
    ok(proxy.connectStorageRepository("shared", "posixfs-1", params, {}))
    disk = ok(proxy.createVirtualDisk("shared", str(GiB), "", {}, {}))["imageId"]
    wait_image(proxy, "shared", disk)
    assert owners(str(export / "repo")) == {hsm_user.pw_uid}
    ok(proxy.disconnectStorageRepository("shared", {}))
    ok(proxy.unmanageStorageServer("shared"))
    assert not mounts_under(place / "rhev")


def test_storage_hsm_may_not_write_is_refused_with_a_code(services, place):
    """A root-owned folder, local or behind a connection: a clear code, nothing made, nothing deleted."""
    daemon, _ = services
    proxy = daemon.proxy()
    closed = place / "root-owned"
    closed.mkdir()
    (closed / "keep").write_text("root's file")
    answer = proxy.createStorageRepository("localfs-1", {"path": str(closed)}, {"force": True})
    assert code(answer) == 469, answer
    assert "permission" in answer["status"]["message"].lower()
    assert sorted(os.listdir(closed)) == ["keep"]
    ok(proxy.manageStorageServer(bind_uri(closed), "closed"))
    wait_for(lambda: servers(proxy)["closed"]["connected"], what="mounted")
    answer = proxy.createStorageRepository("posixfs-1", {"connectionId": "closed", "subdir": "repo"}, {})
    assert code(answer) == 469, answer
    assert sorted(os.listdir(closed)) == ["keep"]
    assert ok(daemon.proxy().ping())


def test_hsmd_started_as_root_says_so_once(tmp_path):
    (tmp_path / "hsmd").mkdir()
    daemon = Hsmd(str(tmp_path / "hsmd")).start()
    try:
        assert ok(daemon.proxy().ping())
        assert daemon.log_text().count(ROOT_WARNING) == 1
    finally:
        daemon.kill()


def test_a_block_repository_as_hsm(place, hsm_user, loops, lvm_dir):
    """block-1 with hsmd as hsm: every LVM command and activation through supervdsmd (root), which hands
    each activated loop device to hsm (and takes it back when it is detached), so qemu-img runs as hsm."""
    repository = place / "rhev"
    supervdsmd = Supervdsmd(str(place / "sv"), config={"irs": {"repository": str(repository)}},
                            env={"LVM_SYSTEM_DIR": lvm_dir}, allowed_uids="hsm", group="hsm").start()
    (place / "hsmd").mkdir()
    daemon = Hsmd(str(place / "hsmd"), user="hsm", config={
        "supervdsm": {"socket": supervdsmd.socket},
        "irs": {"repository": str(repository), "lv_activation": "loop", "sd_health_check_delay": 0.2}}).start()
    pvs = [loops(8 * 1024), loops(8 * 1024)]
    try:
        proxy = daemon.proxy()
        ok(proxy.createStorageRepository("block-1", {"vgName": "hsmunpriv", "devices": pvs}))
        ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": "hsmunpriv"}))
        disk = ok(proxy.createVirtualDisk("blk", str(GiB), "", {}, {}))["imageId"]
        wait_image(proxy, "blk", disk)
        path = ok(proxy.prepareImage("blk", disk))["path"]
        device = os.path.realpath(path)
        assert device.startswith("/dev/loop") and os.stat(device).st_uid == hsm_user.pw_uid
        qemu_write(path, 0x42, 0, MiB)
        assert qemu_reads(path, 0x42, 0, MiB)
        ok(proxy.teardownImage("blk", disk))
        assert os.stat(device).st_uid == 0  # detached: root's again
    finally:
        daemon.kill()
        supervdsmd.kill()
        detach_loops_over(pvs)
