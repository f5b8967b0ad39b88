import grp
import os
import pathlib
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests import hsmd as hsmd_module
from tests.block_helpers import detach_loops_over
from tests.hsmd import Hsmd
from tests.images_helpers import FORMATS, ok, repositories
from tests.lvm_helpers import raw_lvm, report
from tests.supervdsmd import Supervdsmd
from tests.waiting import wait_for
from vdsm_shim import ServiceProxy
from vdsm_shim.inprocess import InProcess


@pytest.fixture(scope="session", autouse=True)
def sanlock_daemon():
    """One sanlock daemon for the session (unprivileged mode, its own run dir), which every test hsmd and the
    test process itself talk to: the Python binding reads SANLOCK_RUN_DIR once, at its first call."""
    if shutil.which("sanlock") is None:
        yield None
        return
    top = pathlib.Path(tempfile.mkdtemp(prefix="hsm-sanlock-"))  # under /tmp: hsm must reach the socket too
    top.chmod(0o755)
    run = top / "run"
    run.mkdir()
    run.chmod(0o755)
    env = {**os.environ, "SANLOCK_RUN_DIR": str(run), "SANLOCK_PRIVILEGED": "0"}
    try:  # its socket's group: hsm's where that user exists (tests/test_unprivileged.py), as the packaged
        grp.getgrnam("hsm")  # host puts hsm in sanlock's group
        group = "hsm"
    except KeyError:
        group = "root"
    process = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", group,
                                "-e", "hsmtest"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["SANLOCK_RUN_DIR"] = str(run)
    hsmd_module.SANLOCK_RUN_DIR = str(run)
    wait_for(lambda: (run / "sanlock.sock").exists(), timeout=10, what="sanlock's socket")
    yield run
    subprocess.run(["sanlock", "client", "shutdown", "-f", "1"], env=env, capture_output=True)
    process.wait(10)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def hsmd(tmp_path):
    """A running hsmd with its default configuration, on a free loopback port."""
    daemon = Hsmd(str(tmp_path)).start()
    yield daemon
    daemon.kill()


@pytest.fixture
def proxy(hsmd):
    """A client of the `hsmd` fixture's daemon."""
    return hsmd.proxy()


@pytest.fixture
def make_hsmd(tmp_path):
    """Build hsmd processes with extra config; each is killed at the end if still running."""
    made = []

    def make(name: str = "hsmd", **kwargs) -> Hsmd:
        root = tmp_path / name
        root.mkdir()
        daemon = Hsmd(str(root), **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


@pytest.fixture
def hung_mount(tmp_path):
    """(mountpoint, flag): a real FUSE mount (tests/hungfs.py); touching it blocks while the flag file exists."""
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs root and /dev/fuse")
    from tests.hungfs import mounted  # fusepy loads libfuse on import

    with mounted(str(tmp_path)) as (mountpoint, flag):
        yield mountpoint, pathlib.Path(flag)


@pytest.fixture
def both(make_hsmd, tmp_path):
    """[(irs, root)]: hsmd through ServiceProxy, then hsm in-process; each with its own storage under root."""
    sides = []
    daemon = make_hsmd(config={"irs": {"sd_health_check_delay": 0.2}}).start()
    remote = ServiceProxy(daemon.address)
    here = InProcess({"state_dir": str(tmp_path / "in-process"), "sd_health_check_delay": 0.2})
    for name, irs in (("hsmd", remote), ("in-process", here)):
        root = tmp_path / f"storage-{name}"
        root.mkdir()
        sides.append((irs, str(root)))
    yield sides
    remote.close()
    here.close()


@pytest.fixture
def lvm_dir(tmp_path):
    """An LVM_SYSTEM_DIR whose lvm.conf turns activation off, as hosts without device-mapper need
    (shared/environment.md); LVM's archives and backups go there too."""
    folder = tmp_path / "lvm"
    folder.mkdir()
    (folder / "lvm.conf").write_text("global { activation = 0 }\n")
    return str(folder)


@pytest.fixture
def lvm_supervdsmd(tmp_path, lvm_dir):
    """A real supervdsmd running LVM with `lvm_dir`'s settings."""
    repository, state = tmp_path / "repository", tmp_path / "state"
    for folder in (repository / "mnt", state):
        folder.mkdir(parents=True, exist_ok=True)
    daemon = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": str(repository), "state_dir": str(state)}},
                        env={"LVM_SYSTEM_DIR": lvm_dir}).start()
    yield daemon
    daemon.kill()


@pytest.fixture
def loops(tmp_path, lvm_dir):
    """Make loop devices over sparse files (size in MiB); teardown removes every VG on them, wipes them and
    detaches them. Skips the test when losetup cannot attach one."""
    devices: list[str] = []

    def make(size_mb: int = 2048) -> str:
        image = tmp_path / f"pv{len(devices)}.img"
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        done = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"losetup failed: {done.stderr.strip()}")
        devices.append(done.stdout.strip())
        return devices[-1]

    yield make
    if devices:
        for vg in {pv["vg_name"] for pv in report(lvm_dir, devices, "pvs", "pv", "-o", "pv_name,vg_name")} - {""}:
            raw_lvm(lvm_dir, devices, "vgremove", "-f", vg)
        raw_lvm(lvm_dir, devices, "pvremove", "-y", *devices)
    for device in devices:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def mounting_hsmd(tmp_path, make_hsmd):
    """(hsmd, its mount root): an hsmd whose mounts go through a real supervdsmd (root), which may bind and
    loop-mount sources under tmp_path; whatever is still mounted is unmounted at the end."""
    repository = tmp_path / "rhev"
    # Bind and loop sources (exports, images) are made under tmp_path: it is the helper's allowed root.
    supervdsmd = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": str(repository)}},
                            mount_sources=str(tmp_path)).start()
    config = {"supervdsm": {"socket": supervdsmd.socket},
              "irs": {"repository": str(repository), "sd_health_check_delay": 0.2},
              "connections": {"monitor_interval": 0.2, "reconnect_backoff_min": 0.2, "reconnect_backoff_max": 1}}
    daemon = make_hsmd(config=config).start()
    yield daemon, str(repository / "mnt")
    daemon.kill()
    supervdsmd.kill()
    subprocess.run(f"grep -o ' {repository}/mnt/[^ ]*' /proc/mounts | xargs -r -n1 umount -l", shell=True,
                   check=False)


@pytest.fixture
def block_hsmd(tmp_path, make_hsmd, lvm_supervdsmd):
    """An hsmd whose LVM and activation go through `lvm_supervdsmd`, LVs used through loop devices."""
    daemon = make_hsmd(config={"supervdsm": {"socket": lvm_supervdsmd.socket},
                               "irs": {"lv_activation": "loop", "sd_health_check_delay": 0.2}}).start()
    yield daemon
    daemon.kill()


@pytest.fixture
def pvs(loops):
    """Two sparse 20 GiB PVs-to-be."""
    return [loops(20 * 1024), loops(20 * 1024)]


@pytest.fixture
def block_repo(block_hsmd, pvs, lvm_dir):
    """(proxy, vg name, devices): a connected block-1 repository 'blk' on the two PVs."""
    proxy = block_hsmd.proxy()
    vg = f"hsmtest{uuid.uuid4().hex[:8]}"
    repo_uuid = ok(proxy.createStorageRepository("block-1", {"vgName": vg, "devices": pvs}))["repoUuid"]
    ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": vg}))
    yield proxy, vg, pvs, repo_uuid
    detach_loops_over(pvs)


@pytest.fixture(params=FORMATS)
def make_repo(request):
    """make_repo(config=...): a repository of each format (localfs-1, block-1) on an hsmd of its own
    (tests/images_helpers.py `repositories`)."""
    yield from repositories(request)


@pytest.fixture
def repo(make_repo):
    """A repository of each format, on its hsmd with the default configuration."""
    return make_repo()
