"""block-1 repositories on real LVM over loop devices, through a real supervdsmd and a real hsmd.

LVM runs with activation off (LVM_SYSTEM_DIR, as shared/environment.md says: no device-mapper here), so
hsmd runs with `[irs] lv_activation = loop`: each LV is used through a loop device over its extents.
The data checks read the bytes back through a second loop device over the PV, not through hsm.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid

import pytest

from hsm.storage.block import IDS_LV, LEASES_LV, METADATA_LV
from tests.block_helpers import EXTENT, GiB, MetadataSlots, MiB, detach_loops_over, lv_place
from tests.images_helpers import code, new_disk, new_snapshot, ok, qemu_check, qemu_reads, qemu_write, wait_image
from tests.lvm_helpers import raw_lvm, real_lvm, report
from tests.tgtd import Tgtd
from tests.waiting import wait_for

pytestmark = real_lvm


def lvs(lvm_dir, devices, vg):
    return {lv["lv_name"]: lv for lv in report(lvm_dir, devices, "lvs", "lv", "-o", "lv_name,lv_size,lv_tags", vg)}


class SecondLoop:
    """A read-only loop device over an LV's extents on the PV: the bytes as they are on the disk."""

    def __init__(self, pv: str, offset: int, size: int) -> None:
        done = subprocess.run(["losetup", "-f", "--show", "-r", "-o", str(offset), "--sizelimit", str(size), pv],
                              capture_output=True, text=True, check=True)
        self.device = done.stdout.strip()

    def __enter__(self) -> str:
        return self.device

    def __exit__(self, *exc) -> None:
        subprocess.run(["losetup", "-d", self.device], check=False)


def test_create_connect_layout(block_repo, lvm_dir):
    """The VG carries hsm's tags; the metadata, ids and leases LVs are there; the repository lists as block-1
    with its space, and its lockspace joined with this host's id."""
    proxy, vg, pvs, repo_uuid = block_repo
    tags = report(lvm_dir, pvs, "vgs", "vg", "-o", "vg_tags", vg)[0]["vg_tags"].split(",")
    assert "HSM_FORMAT=block-1" in tags and f"HSM_UUID={repo_uuid}" in tags
    assert set(lvs(lvm_dir, pvs, vg)) == {METADATA_LV, IDS_LV, LEASES_LV}
    wait_for(lambda: ok(proxy.getStorageRepositoryList())["repos"]["blk"]["leases"]["joined"], timeout=60,
             what="the lockspace join")
    repos = ok(proxy.getStorageRepositoryList())["repos"]
    assert repos["blk"]["capabilities"]["leases"] and repos["blk"]["leases"]["hostId"] == 1
    assert repos["blk"]["format"] == "block-1" and repos["blk"]["uuid"] == repo_uuid
    assert repos["blk"]["vgName"] == vg
    assert "block-1" in ok(proxy.getCapabilities())["info"]["repoFormats"]


def test_disk_data_lands_on_the_pv(block_repo, lvm_dir):
    """A disk's volume is an LV tagged with its image; what qemu-io writes through prepareImage's path is on
    the PV's extents of that LV, read back through a second loop device; teardown deactivates it."""
    proxy, vg, pvs, _ = block_repo
    disk = new_disk(proxy, repo="blk", size=GiB)
    wait_image(proxy, "blk", disk)
    info = ok(proxy.getImageInfo("blk", disk))["image"]
    (volume,) = info["volumes"]
    lv = lvs(lvm_dir, pvs, vg)[volume["id"]]
    assert f"IU_{disk}" in lv["lv_tags"].split(",")
    # loop devices map one segment: the LV takes all a qcow2 of 1 GiB can, so no fix ever needs to grow it
    full = json.loads(subprocess.run(["qemu-img", "measure", "--output=json", "-O", "qcow2", "--size", str(GiB)],
                                     capture_output=True, text=True, check=True).stdout)["fully-allocated"]
    assert int(lv["lv_size"]) == -(-full // EXTENT) * EXTENT
    path = ok(proxy.prepareImage("blk", disk))["path"]
    qemu_write(path, 0x5A, 0, MiB)
    assert qemu_reads(path, 0x5A, 0, MiB)
    ok(proxy.teardownImage("blk", disk))
    assert not os.path.exists(path)
    with SecondLoop(*lv_place(lvm_dir, pvs, vg, volume["id"])) as device:
        qemu_check(device)
        assert qemu_reads(device, 0x5A, 0, MiB)


def test_snapshot_copy_remove_merge(block_repo, lvm_dir):
    """Snapshot, a disk on it, a copy, remove the snapshot: the merge folds it in, its LV goes, data stays."""
    proxy, vg, pvs, _ = block_repo
    disk = new_disk(proxy, repo="blk", size=GiB)
    wait_image(proxy, "blk", disk)
    path = ok(proxy.prepareImage("blk", disk))["path"]
    qemu_write(path, 0x11, 0, MiB)
    ok(proxy.teardownImage("blk", disk))
    snap = new_snapshot(proxy, disk, repo="blk")
    wait_image(proxy, "blk", snap)
    child = new_disk(proxy, repo="blk", size=GiB, base=snap)
    wait_image(proxy, "blk", child)
    copy = ok(proxy.copyImage("blk", child))["imageId"]
    wait_image(proxy, "blk", copy)
    snap_volume = ok(proxy.getImageInfo("blk", snap))["image"]["volumes"][0]["id"]
    ok(proxy.removeImage("blk", snap))
    for image in (disk, child):
        wait_image(proxy, "blk", image)
    assert wait_for_no_fix(proxy, "blk")
    assert snap_volume not in lvs(lvm_dir, pvs, vg)
    for image in (disk, child, copy):
        info = ok(proxy.getImageInfo("blk", image))["image"]
        assert snap_volume not in [vol["id"] for vol in info["volumes"]]
        path = ok(proxy.prepareImage("blk", image))["path"]
        assert qemu_reads(path, 0x11, 0, MiB), image
        ok(proxy.teardownImage("blk", image))


def wait_for_no_fix(proxy, repo, timeout=120.0):
    """Check until it lists nothing to do (the fixes verbs started have run)."""
    seen: list = []

    def settled() -> bool:
        seen[:] = [f for f in ok(proxy.checkStorageRepository(repo))["fixes"] if f.get("fixable", True)]
        return not seen
    return wait_for(settled, timeout=timeout, what=lambda: f"repository with nothing to fix: {seen}")


def test_remove_gives_extents_back_and_restart_keeps_records(block_repo, block_hsmd, lvm_dir):
    """removeImage's clean removes the LV; the records survive a kill -9 of hsmd (they are in the metadata
    LV, not in hsmd's memory)."""
    proxy, vg, pvs, _ = block_repo
    keep = ok(proxy.createVirtualDisk("blk", str(GiB), "", {"name": "keep"}, {}))["imageId"]
    gone = new_disk(proxy, repo="blk", size=GiB)
    for image in (keep, gone):
        wait_image(proxy, "blk", image)
    gone_volume = ok(proxy.getImageInfo("blk", gone))["image"]["volumes"][0]["id"]
    ok(proxy.removeImage("blk", gone))
    assert wait_for_no_fix(proxy, "blk")
    assert gone_volume not in lvs(lvm_dir, pvs, vg)
    block_hsmd.kill()
    block_hsmd.start()
    proxy = block_hsmd.proxy()
    ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": vg}))
    assert ok(proxy.getImageList("blk"))["images"] == [keep]
    assert ok(proxy.getImageInfo("blk", keep))["image"]["userData"] == {"name": "keep"}
    assert code(proxy.getImageInfo("blk", gone)) == 268


def test_bad_input(block_hsmd, pvs, loops, lvm_dir):
    """Devices in another VG (601), a device the host does not see (606), a VG that is no repository, a VG
    name taken: each refused with its code, nothing made."""
    proxy = block_hsmd.proxy()
    other = loops(2048)
    raw_lvm(lvm_dir, [other], "pvcreate", other)
    done = raw_lvm(lvm_dir, [other], "vgcreate", "foreignvg", other)
    assert done.returncode == 0, done.stderr
    assert code(proxy.createStorageRepository("block-1", {"vgName": "newvg", "devices": [pvs[0], other]})) == 601
    assert code(proxy.createStorageRepository("block-1", {"vgName": "newvg", "devices": ["/dev/nosuch"]})) == 606
    assert code(proxy.createStorageRepository("block-1", {"vgName": "bad/name", "devices": pvs})) == 1000
    assert code(proxy.createStorageRepository("block-1", {"vgName": "foreignvg", "devices": pvs})) == 505
    assert code(proxy.connectStorageRepository("f", "block-1", {"vgName": "foreignvg"})) == 372
    assert code(proxy.connectStorageRepository("f", "block-1", {"vgName": "novg"})) == 358
    labels = {pv["pv_name"]: pv["vg_name"] for pv in report(lvm_dir, pvs, "pvs", "pv", "-o", "pv_name,vg_name")}
    assert labels == {}, labels


def test_extend_with_a_device(block_repo, loops, lvm_dir):
    proxy, vg, pvs, _ = block_repo
    before = int(ok(proxy.getStorageRepositoryList())["repos"]["blk"]["totalBytes"])
    extra = loops(4096)
    answer = ok(proxy.extendStorageRepository("blk", [extra]))
    assert int(answer["totalBytes"]) > before
    assert report(lvm_dir, [*pvs, extra], "pvs", "pv", "-o", "pv_name,vg_name", extra)[0]["vg_name"] == vg
    assert code(proxy.extendStorageRepository("blk", [extra])) == 601


def test_a_pv_uevent_makes_hsmd_read_lvm_again(block_repo, lvm_dir):
    """An admin grows a volume's LV behind hsmd's back; the kernel's uevent for the PV (as a rescan or
    resize sends) makes hsmd read LVM again, so getImageInfo shows the new allocation."""
    proxy, vg, pvs, _ = block_repo
    disk = new_disk(proxy, repo="blk", size=GiB)
    volume = ok(proxy.getImageInfo("blk", disk))["image"]["volumes"][0]
    before = int(volume["allocated"])
    done = raw_lvm(lvm_dir, pvs, "lvextend", "--autobackup", "n", "-l", "+1", f"{vg}/{volume['id']}")
    assert done.returncode == 0, done.stderr
    for pv in pvs:
        with open(f"/sys/block/{os.path.basename(pv)}/uevent", "w") as f:
            f.write("change")
    wait_for(lambda: int(ok(proxy.getImageInfo("blk", disk))["image"]["volumes"][0]["allocated"]) == before + EXTENT,
             timeout=30, what="the LV's new size")


def test_a_record_too_large_for_its_slot_is_refused_and_nothing_is_written(block_repo):
    proxy, vg, pvs, _ = block_repo
    answer = proxy.createVirtualDisk("blk", str(GiB), "", {"notes": "x" * (20 << 10)}, {})
    assert code(answer) == 208 and "too large" in answer["status"]["message"]
    assert ok(proxy.getImageList("blk"))["images"] == []
    small = new_disk(proxy, repo="blk", size=GiB)
    assert ok(proxy.getImageList("blk"))["images"] == [small]


def test_a_repository_on_an_iscsi_lun_read_back_over_iscsi(block_hsmd, tmp_path, lvm_dir):
    """A LUN exported by a real tgtd: the kernel's initiator cannot log in here (no iscsi_tcp), so a loop
    device over the LUN's backing file stands in for the disk it would make (the same bytes). hsm makes a
    block-1 repository on it; what qemu-io writes into a disk is then read back over iSCSI by libiscsi
    (qemu's iscsi driver), at the LV's extents on the LUN."""
    target = Tgtd(str(tmp_path), "iqn.2026-11.org.hsm.test:blocklun").start(lun_bytes=8 << 30)
    lun = subprocess.run(["losetup", "-f", "--show", os.path.join(str(tmp_path), "lun1.img")], capture_output=True,
                         text=True, check=True).stdout.strip()
    vg = f"hsmiscsi{uuid.uuid4().hex[:6]}"
    try:
        proxy = block_hsmd.proxy()
        ok(proxy.createStorageRepository("block-1", {"vgName": vg, "devices": [lun]}))
        ok(proxy.connectStorageRepository("lun", "block-1", {"vgName": vg}))
        disk = new_disk(proxy, repo="lun", size=GiB)
        path = ok(proxy.prepareImage("lun", disk))["path"]
        qemu_write(path, 0x6B, 0, MiB)
        ok(proxy.teardownImage("lun", disk))
        volume = ok(proxy.getImageInfo("lun", disk))["image"]["volumes"][0]["id"]
        _, offset, size = lv_place(lvm_dir, [lun], vg, volume)
        over_iscsi = json.dumps({"driver": "qcow2", "file": {
            "driver": "raw", "offset": offset, "size": size, "file": {
                "driver": "iscsi", "transport": "tcp", "portal": f"127.0.0.1:{target.port}", "target": target.iqn,
                "lun": 1}}})
        done = subprocess.run(["qemu-io", "-r", "-c", f"read -P {0x6B} 0 {MiB}", f"json:{over_iscsi}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout + done.stderr
        ok(proxy.disconnectStorageRepository("lun"))
    finally:
        detach_loops_over([lun])
        raw_lvm(lvm_dir, [lun], "vgremove", "-f", vg)
        raw_lvm(lvm_dir, [lun], "pvremove", "-y", lun)
        subprocess.run(["losetup", "-d", lun], check=False)
        target.stop()


def test_a_create_that_fails_half_way_leaves_the_devices_as_they_were(block_hsmd, loops, lvm_dir):
    """A 1 GiB device takes the VG but not the 1 GiB metadata LV: the create answers LVM's failure with
    VDSM's number, and the VG and PV labels it made are gone again."""
    proxy = block_hsmd.proxy()
    small = loops(1024)
    answer = proxy.createStorageRepository("block-1", {"vgName": "hsmsmall", "devices": [small]})
    assert code(answer) == 504 and "metadata" in answer["status"]["message"], answer  # VolumeGroupSizeError
    assert report(lvm_dir, [small], "pvs", "pv", "-o", "pv_name,vg_name") == []
    assert code(proxy.connectStorageRepository("s", "block-1", {"vgName": "hsmsmall"})) == 358


@pytest.mark.timeout(1800)  # about 3 minutes alone (making 1,000 LVs), 3 times that on a busy 2-core machine
def test_a_repository_of_a_thousand_lvs(block_hsmd, loops, lvm_dir):
    """1,000 disks, each an LV: all listed and checked clean, all back after a kill -9 and a connect; of two
    LVs made behind hsmd's back, the one named as hsm names volumes is the left-over check finds, and its
    fix removes only it (an LV named otherwise is never hsm's)."""
    pvs = [loops(100 * 1024), loops(100 * 1024)]
    vg = f"hsmk{uuid.uuid4().hex[:8]}"
    proxy = block_hsmd.proxy()
    ok(proxy.createStorageRepository("block-1", {"vgName": vg, "devices": pvs}))
    ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": vg}))
    try:
        made: list[str] = []

        def client(count: int) -> None:
            mine = block_hsmd.proxy(timeout=120)

            def create() -> str | None:
                answer = mine.createVirtualDisk("blk", str(MiB), "", {}, {})
                return None if code(answer) == 405 else ok(answer)["imageId"]  # a full task queue: again later
            for _ in range(count):
                made.append(wait_for(create, timeout=1200, what="room in the task queue", poll=0.2))

        workers = [threading.Thread(target=client, args=(125,)) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(made) == 1000
        wait_for_no_fix(proxy, "blk", timeout=1500)
        volumes = {ok(proxy.getImageInfo("blk", image))["image"]["volumes"][0]["id"] for image in made}
        assert volumes <= set(lvs(lvm_dir, pvs, vg)) and len(lvs(lvm_dir, pvs, vg)) == 1003  # and the AREAS
        stray = str(uuid.uuid4())  # named as hsm names volumes, but no record owns it
        for name in (stray, "adminsvolume"):  # the second is not hsm's to remove
            done = raw_lvm(lvm_dir, pvs, "lvcreate", "--autobackup", "n", "-an", "-Zn", "-l", "1", "-n", name, vg)
            assert done.returncode == 0, done.stderr
        block_hsmd.kill()
        block_hsmd.start()
        proxy = block_hsmd.proxy()
        ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": vg}))
        assert sorted(ok(proxy.getImageList("blk"))["images"]) == sorted(made)
        fixes = ok(proxy.checkStorageRepository("blk"))["fixes"]
        assert [(f["type"], json.loads(f["fix"])["files"]) for f in fixes] == [("clean", [f"volumes/{stray}"])]
        task = ok(proxy.fixStorageRepository("blk", fixes[0]["fix"]))["taskId"]
        wait_for(lambda: ok(proxy.getTaskStatus(task))["taskStatus"]["state"] == "finished", timeout=120,
                 what="the orphans fix")
        left = set(lvs(lvm_dir, pvs, vg))
        assert stray not in left and "adminsvolume" in left and volumes <= left
    finally:
        detach_loops_over(pvs)


def test_a_record_naming_a_non_volume_lv_is_unreadable_and_that_lv_untouched(block_repo, block_hsmd, lvm_dir):
    """A record (from another host, or damaged) whose volume is the metadata LV: hsm never hands that LV to a
    VM nor removes it; the image answers 207, and the repository keeps working."""
    proxy, vg, pvs, repo_uuid = block_repo
    disk = new_disk(proxy, repo="blk", size=GiB)
    other = new_disk(proxy, repo="blk", size=GiB)
    block_hsmd.kill()
    slots = MetadataSlots(lvm_dir, pvs, vg, repo_uuid)
    record = json.loads(slots.records()[disk])
    record["volumes"][0]["id"] = METADATA_LV
    slots.write(disk, json.dumps(record).encode())
    block_hsmd.start()
    proxy = block_hsmd.proxy()
    ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": vg}))
    assert code(proxy.prepareImage("blk", disk)) == 207
    assert code(proxy.removeImage("blk", disk)) == 207
    assert [f["code"] for f in ok(proxy.checkStorageRepository("blk"))["fixes"] if not f["fixable"]] == [207]
    assert METADATA_LV in lvs(lvm_dir, pvs, vg)
    path = ok(proxy.prepareImage("blk", other))["path"]  # the records still read and write
    qemu_write(path, 0x21, 0, MiB)
    ok(proxy.teardownImage("blk", other))
    assert ok(proxy.getImageStatus("blk", other))["image"]["state"] == "optimized"
