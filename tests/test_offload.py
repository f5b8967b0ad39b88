"""Offload on real file systems: copyImage as a reflink on XFS (reflink=1) and btrfs, and qemu-img on ext4,
for chains and `options.offload=false`. copy_file_range is offered only where the file server copies (NFS,
SMB), which no kernel mount here can show: the I/O helper's copy itself is tested on ext4, and the probe's rule
by naming ext4 as such a file system.

Each file system is made on a loop device and mounted (root only; a test whose
file system cannot be made or mounted here is skipped with the reason); a real
hsmd keeps a localfs-1 repository on it. Copies are compared with
`qemu-img compare`; sharing is read from `filefrag -v` ("shared" extents).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from hsm.storage import intents, ioworker
from hsm.storage.ioprocess import IOProcess
from tests.images_helpers import (
    GiB,
    MiB,
    code,
    new_disk,
    new_snapshot,
    ok,
    qemu_check,
    qemu_reads,
    qemu_write,
    top_path,
    wait_image,
)

MKFS = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q", "-f"],
        "ext4": ["mkfs.ext4", "-q", "-F"]}
# What getStorageRepositoryList's capabilities.offload says on each: copy_file_range would go through this
# host's page cache on all of them.
MECHANISMS: dict[str, list[str]] = {"xfs": ["reflink"], "btrfs": ["reflink"], "ext4": []}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(folder: str, fstype: str, size: int = 3 * GiB) -> Iterator[str]:
    """A fresh `fstype` on a loop device over a sparse file in `folder`, mounted; skips where it cannot be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    if shutil.which(MKFS[fstype][0]) is None:
        pytest.skip(f"{MKFS[fstype][0]} is not installed")
    image, mountpoint = os.path.join(folder, f"{fstype}.img"), os.path.join(folder, fstype)
    with open(image, "wb") as f:
        f.truncate(size)
    os.mkdir(mountpoint)
    done = _run([*MKFS[fstype], image])
    if done.returncode != 0:
        pytest.skip(f"{MKFS[fstype][0]} failed: {done.stderr.strip()}")
    done = _run(["losetup", "-f", "--show", image])
    if done.returncode != 0:
        pytest.skip(f"losetup failed: {done.stderr.strip()}")
    device = done.stdout.strip()
    try:
        done = _run(["mount", "-t", fstype, device, mountpoint])
        if done.returncode != 0:
            pytest.skip(f"mount -t {fstype} failed: {done.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            if _run(["umount", mountpoint]).returncode != 0:
                _run(["umount", "-l", mountpoint])
    finally:
        _run(["losetup", "-d", device])


@pytest.fixture
def on(request, make_hsmd, tmp_path):
    """(proxy, daemon, mountpoint): a real hsmd whose repository `fs` sits on a fresh `request.param`."""
    with mounted(str(tmp_path), request.param) as mountpoint:
        daemon = make_hsmd().start()
        proxy = daemon.proxy()
        path = os.path.join(mountpoint, "repository")
        os.mkdir(path)
        ok(proxy.createStorageRepository("localfs-1", {"path": path}, {}))
        ok(proxy.connectStorageRepository("fs", "localfs-1", {"path": path}, {}))
        try:
            yield proxy, daemon, mountpoint
        finally:
            daemon.kill()  # its I/O helper out of the mount before it is unmounted


def copy_of(proxy, image: str, **options) -> str:
    copy = ok(proxy.copyImage("fs", image, "", {}, options))["imageId"]
    wait_image(proxy, "fs", copy)
    return copy


def same_data(a: str, b: str) -> bool:
    done = _run(["qemu-img", "compare", "-U", a, b])
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def shared(path: str) -> bool:
    """Whether any extent of the file is shared with another file (a reflink)."""
    done = _run(["filefrag", "-v", path])
    assert done.returncode == 0, done.stderr
    return "shared" in done.stdout


def free_bytes(mountpoint: str) -> int:
    os.sync()
    st = os.statvfs(mountpoint)
    return st.f_bavail * st.f_frsize


def disk_with_data(proxy) -> tuple[str, str]:
    """A 1 GiB disk holding 64 MiB of data in two places; (its id, its volume's path)."""
    disk = new_disk(proxy, repo="fs")
    path = top_path(proxy, "fs", disk)
    qemu_write(path, 0x11, 0, 32 * MiB)
    qemu_write(path, 0x22, 512 * MiB, 32 * MiB)
    return disk, path


@pytest.mark.parametrize("on", ["xfs", "btrfs", "ext4"], indirect=True)
def test_capabilities_are_found_at_connect_and_listed(on):
    proxy, _, mountpoint = on
    repo = ok(proxy.getStorageRepositoryList())["repos"]["fs"]
    assert repo["capabilities"]["offload"] == MECHANISMS[os.path.basename(mountpoint)]
    backends = ok(proxy.getCapabilities())["info"]["offloadBackends"]  # what any connected repository does
    assert set(MECHANISMS[os.path.basename(mountpoint)]) <= set(backends) <= {"reflink", "copy_file_range"}
    assert "copy_file_range" not in ok(proxy.getStorageRepositoryList())["repos"]["local"]["capabilities"][
        "offload"]  # /tmp's: a local file system
    assert os.listdir(os.path.join(mountpoint, "repository")) == ["images", "repository.json", "reserve",
                                                                   "volumes"] or \
        sorted(os.listdir(os.path.join(mountpoint, "repository"))) == ["images", "repository.json", "reserve",
                                                                       "volumes"]  # no probe left


@pytest.mark.parametrize("on", ["xfs", "btrfs"], indirect=True)
def test_a_whole_copy_is_a_reflink(on):
    proxy, daemon, mountpoint = on
    disk, source = disk_with_data(proxy)
    before = free_bytes(mountpoint)
    copy = copy_of(proxy, disk)
    target = top_path(proxy, "fs", copy)
    assert same_data(source, target)
    qemu_check(target)
    assert shared(target) and shared(source)
    assert before - free_bytes(mountpoint) < 4 * MiB  # 64 MiB of data copied, no new space for it
    assert f"into {copy} of fs by reflink" in daemon.log_text()
    qemu_write(target, 0x33, 0, MiB)  # copy on write: the source keeps its data
    assert qemu_reads(source, 0x11, 0, MiB) and qemu_reads(target, 0x33, 0, MiB)


@pytest.mark.parametrize("on", ["xfs"], indirect=True)
def test_offload_false_makes_a_copy_of_its_own(on):
    proxy, daemon, mountpoint = on
    disk, source = disk_with_data(proxy)
    before = free_bytes(mountpoint)
    copy = copy_of(proxy, disk, offload=False)
    target = top_path(proxy, "fs", copy)
    assert same_data(source, target)
    assert not shared(target) and not shared(source)
    assert before - free_bytes(mountpoint) >= 64 * MiB
    assert f"into {copy} of fs by" not in daemon.log_text()
    assert code(proxy.copyImage("fs", disk, "", {}, {"offload": "no"})) == 1000  # a boolean only


@pytest.mark.parametrize("on", ["xfs"], indirect=True)
def test_a_chain_is_copied_by_qemu_img_and_its_snapshot_by_reflink(on):
    proxy, daemon, mountpoint = on
    disk, _ = disk_with_data(proxy)
    snapshot = new_snapshot(proxy, disk, repo="fs")
    disk_top = top_path(proxy, "fs", disk)
    qemu_write(disk_top, 0x44, 16 * MiB, 32 * MiB)  # over both ranges of the snapshot's data
    copy = copy_of(proxy, disk, strategy="performance")  # whole (space: a copy over the snapshot)
    target = top_path(proxy, "fs", copy)
    assert len(ok(proxy.getImageInfo("fs", copy))["image"]["volumes"]) == 1
    assert same_data(disk_top, target) and not shared(target)
    qemu_check(target)
    assert f"into {copy} of fs by" not in daemon.log_text()
    other = os.path.join(mountpoint, "other")  # a second repository on the same file system
    os.mkdir(other)
    ok(proxy.createStorageRepository("localfs-1", {"path": other}, {}))
    ok(proxy.connectStorageRepository("other", "localfs-1", {"path": other}, {}))
    ok(proxy.copyImage("other", snapshot, "", {}, {}))
    wait_image(proxy, "other", snapshot)
    snap_target = top_path(proxy, "other", snapshot)
    assert same_data(top_path(proxy, "fs", snapshot), snap_target) and shared(snap_target)
    assert f"into {snapshot} of other by reflink" in daemon.log_text()


def virtual_size(path: str) -> int:
    done = _run(["qemu-img", "info", "-U", "--output=json", path])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["virtual-size"]


@pytest.mark.parametrize("on", ["xfs"], indirect=True)
def test_a_disk_made_for_performance_is_a_clone_of_its_snapshot(on):
    """createVirtualDisk with strategy=performance stands alone at once: its top is a reflink of the snapshot's
    one volume, grown to the disk's size; offload=false copies the snapshot in with qemu-img instead."""
    proxy, daemon, mountpoint = on
    disk, _ = disk_with_data(proxy)
    snapshot = new_snapshot(proxy, disk, repo="fs")
    snapshot_top = top_path(proxy, "fs", snapshot)
    before = free_bytes(mountpoint)
    fast = ok(proxy.createVirtualDisk("fs", str(2 * GiB), snapshot, {}, {"strategy": "performance"}))["imageId"]
    wait_image(proxy, "fs", fast)
    info = ok(proxy.getImageInfo("fs", fast))["image"]
    assert len(info["volumes"]) == 1 and info["size"] == str(2 * GiB)
    target = info["volumes"][0]["path"]
    assert virtual_size(target) == 2 * GiB and same_data(snapshot_top, target)  # the 2nd GiB reads zeros
    assert shared(target) and before - free_bytes(mountpoint) < 4 * MiB
    assert f"Made disk {fast} of fs from snapshot {snapshot} by reflink" in daemon.log_text()
    qemu_check(target)
    qemu_write(target, 0x55, 0, MiB)  # the disk's own from now on: the snapshot keeps its data
    assert qemu_reads(snapshot_top, 0x11, 0, MiB) and qemu_reads(target, 0x55, 0, MiB)
    slow = ok(proxy.createVirtualDisk("fs", str(GiB), snapshot, {}, {"strategy": "performance",
                                                                       "offload": False}))["imageId"]
    wait_image(proxy, "fs", slow)
    slow_top = top_path(proxy, "fs", slow)
    assert len(ok(proxy.getImageInfo("fs", slow))["image"]["volumes"]) == 1
    assert same_data(snapshot_top, slow_top) and not shared(slow_top)
    assert f"Made disk {slow}" not in daemon.log_text()


@pytest.mark.parametrize("on", ["xfs", "ext4"], indirect=True)
def test_a_partial_target_left_by_a_crash_is_replaced(on):
    proxy, _, _ = on
    disk, source = disk_with_data(proxy)
    copy = ok(proxy.copyImage("fs", disk, "", {}, {"autoFix": False}))["imageId"]
    target = top_path(proxy, "fs", copy)
    with open(target, "wb") as f:  # what a run cut short may leave
        f.write(b"\xff" * MiB)
    [fix] = ok(proxy.checkStorageRepository("fs"))["fixes"]
    ok(proxy.fixStorageRepository("fs", fix["fix"], {}))
    wait_image(proxy, "fs", copy)
    assert same_data(source, target)
    qemu_check(target)


@pytest.mark.parametrize("on", ["ext4"], indirect=True)
def test_the_fallback_on_ext4_is_qemu_img(on):
    """copy_file_range on ext4 made 0.39-0.79x of the fastest durable qemu-img convert (bench/offload.py)."""
    proxy, daemon, _ = on
    disk, source = disk_with_data(proxy)
    copy = copy_of(proxy, disk)
    target = top_path(proxy, "fs", copy)
    assert f"into {copy} of fs by" not in daemon.log_text()
    assert same_data(source, target)
    qemu_check(target)
    assert os.stat(target).st_blocks * 512 < 80 * MiB  # only the 64 MiB of data written


def test_copy_ops_of_the_io_helper(tmp_path):
    """clone and copy_range never follow a link, never overwrite, and keep holes (ext4 under /tmp:
    no reflink there; copy_range works on it, though the probe does not offer it)."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b"\x01" * MiB)
        f.seek(40 * MiB)
        f.write(b"\x02" * 3 * MiB)
    io = IOProcess("test")
    try:
        assert io.copy_range(src, dst, 0, MiB) == (9 * MiB, 64 * MiB)  # a budget of 1 MiB of data
        offset, size = io.copy_range(src, dst, 9 * MiB, 1 << 40)
        assert offset == size == 64 * MiB
        with open(src, "rb") as a, open(dst, "rb") as b:
            assert a.read() == b.read()
        assert os.stat(dst).st_blocks * 512 <= 5 * MiB
        with pytest.raises(FileExistsError):
            io.copy_range(src, dst, 0, 1 << 40)
        os.symlink(src, str(tmp_path / "link"))
        with pytest.raises(OSError) as raised:
            io.copy_range(str(tmp_path / "link"), str(tmp_path / "other"), 0, 1 << 40)
        assert raised.value.errno == errno.ELOOP
        with pytest.raises(FileExistsError):
            io.clone(src, str(tmp_path / "link"))
        if io.offload_probe(str(tmp_path))["reflink"]:
            pytest.skip("this file system clones")
        with pytest.raises(OSError) as raised:
            io.clone(src, str(tmp_path / "clone"))
        assert raised.value.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL)
        assert not os.path.exists(tmp_path / "clone")  # a refused clone leaves nothing
        assert sorted(os.listdir(tmp_path)) == ["dst", "link", "src"]  # no probe left either
    finally:
        io.close()


def test_copy_file_range_is_offered_only_where_the_server_copies(tmp_path, monkeypatch):
    """On a local file system it moves the data through this host, slower than qemu-img. Kernel NFS mounts do
    not work here: the other side is shown by naming this file system (ext4) as one whose server copies."""
    local = ioworker._fs_type(str(tmp_path))
    assert local not in ioworker.SERVER_SIDE_COPY
    assert ioworker._offload_probe(str(tmp_path))["copyFileRange"] is False
    monkeypatch.setattr(ioworker, "SERVER_SIDE_COPY", frozenset({local}))
    assert ioworker._offload_probe(str(tmp_path))["copyFileRange"] is True
    assert os.listdir(tmp_path) == []  # the probe files removed


@pytest.mark.parametrize("value, good", [(True, True), (False, True), (None, True), ("false", False), (0, False)])
def test_a_copy_intent_offload_is_a_boolean(value, good):
    data = {"op": "copy", "sourceRepo": "r1", "source": "i1", "base": ""}
    if value is not None:
        data["offload"] = value
    if good:
        intent = intents.from_json(data)
        assert isinstance(intent, intents.CopyIntent) and intent.offload is (value is not False)
        assert intents.from_json(intents.to_json(intent)) == intent
    else:
        with pytest.raises(ValueError, match="offload"):
            intents.from_json(data)
