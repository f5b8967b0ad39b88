"""VDSM's volume group verbs (createVG, getVGInfo, getVGList, removeVG) on real LVM over loop devices, through a
real supervdsmd (LVM's activation off, as shared/environment.md says), each flow run twice on the same loop
devices: through vdsm_shim's ServiceProxy to a real hsmd, and in-process with no hsmd. Both must answer the
same, LVM's random UUIDs aside. Each flow leaves the devices as it found them, so the second side starts clean.
"""

from __future__ import annotations

import os
import re
import subprocess

from hsm.storage.lvm import MiB
from tests.images_helpers import code, ok
from tests.legacy_helpers import run_both, sides_with
from tests.lvm_helpers import pv_labels, raw_lvm, real_lvm, report

VG = "f1111111-1111-4111-8111-111111111111"
VG2 = "f2222222-2222-4222-8222-222222222222"
FOREIGN = f"hsmforeign{os.getpid()}"
UNKNOWN_VG = "Ot0Qfu-4dFn-9LC4-IEC6-xc2m-Pkee-Jl3lE9"
LVM_UUID = re.compile(r"[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}")
GiB = 1024 * MiB
EXTENT = 128 * MiB
VDSM_ATTR = {"permission": "w", "resizeable": "z", "exported": "-", "partial": "-", "allocation": "n",
             "clustered": "-"}


def masked(value, uuids: dict):
    """`value` with each LVM UUID named by the order it was first seen: <uuid1>, <uuid2>, ..."""
    if isinstance(value, dict):
        return {key: masked(item, uuids) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item, uuids) for item in value]
    if isinstance(value, str):
        return LVM_UUID.sub(lambda m: uuids.setdefault(m[0], f"<uuid{len(uuids) + 1}>"), value)
    return value


def vg_flow(lvm_dir: str, big1: str, big2: str, small: str, formatted: str, foreign: dict):
    first, second, little, used = (os.path.basename(device) for device in (big1, big2, small, formatted))
    ours = [big1, big2, small]

    def flow(irs, root: str) -> list:
        seen: list = []
        # Bad input: VDSM's codes, and nothing written.
        for verb, args, expected in [
                ("createVG", ("bad", [first]), 1000), ("createVG", (VG, []), 1000), ("createVG", (VG, first), 1000),
                ("createVG", (VG, [first, first]), 1000), ("createVG", (VG, [first], "maybe"), 1000),
                ("createVG", (VG, [first, second], True), 1000), ("createVG", (VG, [first, second], "True"), 1000),
                ("createVG", (VG, [first, "no-such-device"]), 606), ("createVG", (VG, [little]), 504),
                ("createVG", (VG, [first, used]), 601), ("createVG", (FOREIGN, [first, second]), 1000),
                ("createVG", (VG, [first, second], False, "options"), 1000),
                ("removeVG", ("bad",), 1000), ("removeVG", (VG,), 1000), ("getVGInfo", ("../vg",), 1000),
                ("getVGInfo", (UNKNOWN_VG,), 506), ("getVGList", ("x",), 1000), ("getVGList", (3, "x"), 1000)]:
            seen.append(irs.call(verb, *args))
            assert code(seen[-1]) == expected, (verb, args, seen[-1])
        assert "in use (ext4)" in seen[9]["status"]["message"]
        assert pv_labels(lvm_dir, ours) == {}
        ok(irs.removeVG(UNKNOWN_VG))  # as VDSM: a VG this host does not see is success

        # createVG: the VG on both disks, tagged as VDSM tagged it, with its layout.
        uuid = ok(irs.createVG(VG, [first, second], False))["uuid"]
        assert LVM_UUID.fullmatch(uuid)
        assert report(lvm_dir, [big1, big2], "vgs", "vg", "-o", "vg_uuid,vg_name,vg_tags,vg_extent_size") == \
            [{"vg_uuid": uuid, "vg_name": VG, "vg_tags": "RHAT_storage_domain_UNREADY",
              "vg_extent_size": str(EXTENT)}]
        info = ok(irs.getVGInfo(uuid))["info"]
        pvlist = info.pop("pvlist")
        size = int(info["vgsize"])
        assert info == {"name": VG, "vgUUID": uuid, "vgsize": str(size), "vgfree": str(size), "type": 3,
                        "attr": VDSM_ATTR, "state": "OK"}
        assert size % EXTENT == 0 and 11 * GiB < size < 12 * GiB, "two 6 GiB disks, the first's metadata aside"
        assert [(pv["GUID"], pv["vgUUID"], pv["devcapacity"], pv["fwrev"]) for pv in pvlist] == \
            [(first, uuid, str(6 * GiB), "0000"), (second, uuid, str(6 * GiB), "0000")]
        assert all(LVM_UUID.fullmatch(pv["pvUUID"]) and int(pv["capacity"]) <= 6 * GiB for pv in pvlist)
        assert set(pvlist[0]) == {"GUID", "pvUUID", "vgUUID", "capacity", "devcapacity", "vendorID", "productID",
                                  "serial", "fwrev", "devtype", "pathstatus", "pathlist"}
        seen += [info, pvlist]

        # getVGList: every VG on the host's disks, without pvlist; the storage type filters.
        def listed(*args) -> list:
            return [vg for vg in ok(irs.getVGList(*args))["vglist"] if vg["name"] in (VG, FOREIGN)]

        assert listed() == listed("") == listed(3) == listed("3") == [info, foreign]
        assert listed(2) == []  # no FCP disks here
        seen.append(listed())

        # Devices in use, a name taken, a VG VDSM did not make: refused, nothing touched.
        for verb, args, expected in [("createVG", (VG2, [first, little]), 601), ("createVG", (VG, [little]), 505),
                                     ("removeVG", (foreign["vgUUID"],), 508)]:
            seen.append(irs.call(verb, *args))
            assert code(seen[-1]) == expected, (verb, args, seen[-1])
        assert f"{first} belongs to volume group {VG}" in seen[-3]["status"]["message"]
        assert pv_labels(lvm_dir, ours) == {big1: VG, big2: VG}
        assert ok(irs.getVGInfo(foreign["vgUUID"]))["info"]["name"] == FOREIGN

        # removeVG: the VG and the disks' labels go; again is success.
        ok(irs.removeVG(uuid))
        assert pv_labels(lvm_dir, ours) == {}
        seen += [irs.getVGInfo(uuid), irs.removeVG(uuid)]
        assert code(seen[-2]) == 506 and code(seen[-1]) == 0
        assert uuid not in [vg["vgUUID"] for vg in ok(irs.getVGList())["vglist"]]
        return masked(seen, {foreign["vgUUID"]: "<foreign>"})
    return flow


@real_lvm
def test_vg_verbs_on_loop_devices(make_hsmd, tmp_path, lvm_supervdsmd, lvm_dir, loops):
    big1, big2, small, formatted, foreign = loops(6144), loops(6144), loops(2048), loops(64), loops(256)
    subprocess.run(["mkfs.ext4", "-q", formatted], check=True)
    made = raw_lvm(lvm_dir, [foreign], "vgcreate", FOREIGN, foreign)  # a host's VG, say: LVM's defaults, no tag
    assert made.returncode == 0, made.stderr
    row = report(lvm_dir, [foreign], "vgs", "vg", "-o", "vg_uuid,vg_size,vg_free", FOREIGN)[0]
    expected = {"name": FOREIGN, "vgUUID": row["vg_uuid"], "vgsize": row["vg_size"], "vgfree": row["vg_free"],
                "type": 3, "attr": VDSM_ATTR, "state": "OK"}  # VDSM's type for disks of no known transport
    with sides_with(make_hsmd, tmp_path, lvm_supervdsmd) as sides:
        run_both(sides, vg_flow(lvm_dir, big1, big2, small, formatted, expected))
    assert pv_labels(lvm_dir, [foreign]) == {foreign: FOREIGN}, "removeVG left the VG it refused alone"
