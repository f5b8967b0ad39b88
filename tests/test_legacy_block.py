"""VDSM's block storage domains, as VDSM's engine made them: createVG on the disks getDeviceList offers,
createStorageDomain (iSCSI, 3) on that VG's UUID, a pool, volumes, extendVolume and extendStorageDomain.
Through vdsm_shim's ServiceProxy to a real hsmd, on real LVM over loop devices through a real supervdsmd
(`lv_activation = loop`, LVM's activation off: no device-mapper here). Data checked with qemu-io.
"""

from __future__ import annotations

import os

from tests.block_helpers import EXTENT, GiB, MiB, detach_loops_over
from tests.images_helpers import code, ok, qemu_reads, qemu_write
from tests.legacy_helpers import BLANK, SP
from tests.lvm_helpers import real_lvm, report
from tests.waiting import wait_for
from vdsm_shim import ServiceProxy

pytestmark = real_lvm

SD = "c1111111-1111-4111-8111-111111111111"
IMG = "a1111111-1111-4111-8111-111111111111"
VOL1 = "b1111111-1111-4111-8111-111111111111"
VOL2 = "b2222222-2222-4222-8222-222222222222"
COW, SPARSE = 4, 2
ISCSI = 3


def run(irs, answer: dict) -> None:
    task = ok(answer)["uuid"]
    status = wait_for(lambda: (s := ok(irs.getTaskStatus(task, BLANK))["taskStatus"])["taskState"] == "finished"
                      and s, timeout=120, what=f"task {task}")
    assert status["code"] == 0, status


def test_a_block_domain_made_as_vdsm_did(block_hsmd, loops, lvm_dir):
    first, second, third = loops(20 * 1024), loops(20 * 1024), loops(8 * 1024)
    irs = ServiceProxy(block_hsmd.address)
    try:
        devices = {os.path.basename(device): device for device in (first, second, third)}
        vg_uuid = ok(irs.createVG(SD, [os.path.basename(first), os.path.basename(second)]))["uuid"]
        # Bad input first: codes, nothing made.
        assert code(irs.createStorageDomain(ISCSI, SD, "blk", "not-a-vg-uuid", 1, 3)) == 1000
        assert code(irs.createStorageDomain(ISCSI, SD, "blk", "Ot0Qfu-4dFn-9LC4-IEC6-xc2m-Pkee-Jl3lE9", 1, 3)) == 506
        ok(irs.createStorageDomain(ISCSI, SD, "blk", vg_uuid, 1, 3))
        ok(irs.createStorageDomain(ISCSI, SD, "blk", vg_uuid, 1, 3))  # the same again: done already
        tags = report(lvm_dir, [first, second], "vgs", "vg", "-o", "vg_tags", SD)[0]["vg_tags"].split(",")
        assert "RHAT_storage_domain" in tags and "RHAT_storage_domain_UNREADY" not in tags
        assert f"HSM_UUID={SD}" in tags
        info = ok(irs.getStorageDomainInfo(SD))["info"]
        assert info["type"] == "ISCSI" and info["vguuid"] == vg_uuid and info["name"] == "blk"
        assert "remotePath" not in info
        stats = ok(irs.getStorageDomainStats(SD))["stats"]
        assert 0 < int(stats["diskfree"]) < int(stats["disktotal"]) <= 40 * GiB
        assert SD in ok(irs.getStorageDomainsList())["domlist"]

        # A volume, its data on an LV; a snapshot over it; extendVolume grows the leaf's LV.
        run(irs, irs.createVolume(SD, BLANK, IMG, 2 * MiB // 512, COW, SPARSE, "DATA", VOL1, "first"))
        path = ok(irs.prepareImage(SD, BLANK, IMG, VOL1))["path"]
        qemu_write(path, 0x3C, 0, MiB)
        ok(irs.teardownImage(SD, BLANK, IMG))
        run(irs, irs.createVolume(SD, BLANK, IMG, 2 * MiB // 512, COW, SPARSE, "DATA", VOL2, "", IMG, VOL1))
        lvs = {lv["lv_name"]: int(lv["lv_size"])
               for lv in report(lvm_dir, [first, second], "lvs", "lv", "-o", "lv_name,lv_size", SD)}
        assert set(lvs) >= {VOL1, VOL2, "metadata"}
        assert code(irs.extendVolume(SD, BLANK, IMG, VOL2, 0)) == 1000
        before = lvs[VOL2]
        ok(irs.extendVolume(SD, BLANK, IMG, VOL2, (before + EXTENT) // MiB))
        grown = {lv["lv_name"]: int(lv["lv_size"])
                 for lv in report(lvm_dir, [first, second], "lvs", "lv", "-o", "lv_name,lv_size", SD)}[VOL2]
        # loop activation keeps an LV one segment: it grows only where the extents after it are free
        assert grown == before + EXTENT or code(irs.extendVolume(SD, BLANK, IMG, VOL2, grown // MiB + 1)) == 560
        path = ok(irs.prepareImage(SD, BLANK, IMG, VOL2))["path"]
        assert qemu_reads(path, 0x3C, 0, MiB)
        ok(irs.refreshVolume(SD, BLANK, IMG, VOL2))
        ok(irs.teardownImage(SD, BLANK, IMG))

        # extendStorageDomain: in a pool; a disk in use, one unknown, force: refused; then the third disk.
        ok(irs.createStoragePool(0, SP, "pool", SD, [SD], 1))
        ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
        total = int(ok(irs.getStorageDomainStats(SD))["stats"]["disktotal"])
        assert code(irs.extendStorageDomain(SD, SP, ["nosuchdisk"])) == 606
        assert code(irs.extendStorageDomain(SD, SP, [os.path.basename(first)])) == 601
        assert code(irs.extendStorageDomain(SD, SP, [os.path.basename(third)], True)) == 1000
        ok(irs.extendStorageDomain(SD, SP, [os.path.basename(third)]))
        assert int(ok(irs.getStorageDomainStats(SD))["stats"]["disktotal"]) > total
        members = {pv["pv_name"] for pv in report(lvm_dir, list(devices.values()), "pvs", "pv", "-o",
                                                   "pv_name,vg_name") if pv["vg_name"] == SD}
        assert members == {first, second, third}
        ok(irs.disconnectStoragePool(SP, 1, "key"))
    finally:
        irs.close()
        detach_loops_over([first, second, third])
