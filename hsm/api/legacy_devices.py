"""VDSM's device and volume group verbs, and extendStorageDomain.

getDeviceInfo and getDevicesVisibility answer from the device list that
getDeviceList gives (supervdsmd's listing). appropriateDevice and
inappropriateDevices (VDSM's VM code, for a VM's direct LUN) have supervdsmd
write and remove the VM's udev rules (supervdsm/udev.py).

createVG, removeVG, getVGList and getVGInfo are VDSM 4.10's (vdsm/storage/hsm.py,
lvm.py): volume groups on the disks getDeviceList offers (their GUID is the
kernel's name), every LVM command through hsm.storage.lvm with a filter naming
exactly those disks. Nothing is cached between calls: each verb reads
supervdsmd's listing afresh. extendStorageDomain adds disks to a block domain's
VG (hsm.storage.engine's extend_repository, as extendStorageRepository does).
"""

from __future__ import annotations

import threading

from hsm.api.devices import DevicesAPI
from hsm.api.dispatch import options_of
from hsm.api.legacy_domains import parse_bool
from hsm.api.verbs import require_str, verb
from hsm.errors import (
    DeviceNotFound,
    InvalidParameterException,
    InvalidPhysDev,
    PhysDevInitializationError,
    StorageDomainNotMemberOfPool,
    StorageDomainTypeError,
    VolumeGroupAlreadyExistsError,
    VolumeGroupDoesNotExist,
    VolumeGroupRemoveError,
    VolumeGroupSizeError,
)
from hsm.storage.block import STORAGE_DOMAIN_TAG, STORAGE_UNREADY_DOMAIN_TAG, BlockRepository, refusal
from hsm.storage.domains import LVM_UUID, TYPE_NAMES, Domains, check_uuid, number
from hsm.storage.lvm import LVM, MiB, PhysicalVolume, VolumeGroup, volume_groups
from hsm.storage.pools import Pools
from supervdsm import udev
from supervdsm.client import SupervdsmClient

MINIMAL_VG_SIZE = 10 * 1024 * MiB  # VDSM's createVG refused smaller device sets (504)
VG_ATTR_BITS = ("permission", "resizeable", "exported", "partial", "allocation", "clustered")  # VDSM's names
# VDSM's storage type of a VG: FCP when all its devices are, else iSCSI (mixed and unknown transports too).
FCP_DOMAIN, ISCSI_DOMAIN = 2, 3


def _vg_uuid(value: object) -> str:
    if not isinstance(value, str) or not LVM_UUID.fullmatch(value):
        raise InvalidParameterException(f"vgUUID={value!r}: expected an LVM UUID")
    return value


def _devlist(value: object) -> list[str]:
    """A list of device GUIDs, as VDSM's clients send it."""
    if not isinstance(value, list) or not value:
        raise InvalidParameterException(f"devlist={value!r}: expected a list of device GUIDs")
    return [require_str("devlist", guid) for guid in value]


def _storage_type(disks: list[dict]) -> int:
    transports = {disk.get("transport", "") for disk in disks}
    return FCP_DOMAIN if transports == {"FCP"} else ISCSI_DOMAIN


def _vg_entry(vg: VolumeGroup, disks: list[dict]) -> dict:
    """One VG as VDSM's getVGList and getVGInfo gave it (hsm.py __getVGsInfo)."""
    return {"name": vg.name, "vgUUID": vg.uuid, "vgsize": str(vg.size), "vgfree": str(vg.free),
            "type": _storage_type(disks), "attr": dict(zip(VG_ATTR_BITS, vg.attr, strict=False)),
            "state": "PARTIAL" if vg.partial else "OK"}


def _pv_entry(pv: PhysicalVolume, disk: dict, vg: VolumeGroup) -> dict:
    """One of getVGInfo's pvlist, VDSM's keys (hsm.py __fillPVDict); no multipath, so no paths."""
    return {"GUID": disk["name"], "pvUUID": pv.uuid, "vgUUID": vg.uuid, "capacity": str(pv.size),
            "devcapacity": disk["size"], "vendorID": disk["vendor"], "productID": disk["model"],
            "serial": disk["serial"], "fwrev": "0000", "devtype": disk.get("transport", ""),
            "pathstatus": [], "pathlist": []}


class LegacyDevicesAPI:
    def __init__(self, supervdsm: SupervdsmClient, domains: Domains, pools: Pools) -> None:
        self._devices = DevicesAPI(supervdsm)  # its getDeviceList is the one device listing
        self._supervdsm = supervdsm
        self._domains = domains
        self._pools = pools
        self._vg_changes = threading.Lock()  # one createVG or removeVG at a time: its checks hold until it is done

    def _guids(self) -> dict[str, dict]:
        return {device["GUID"]: device for device in self._devices.getDeviceList()["devList"]}

    @verb()
    def getDeviceInfo(self, guid: str, options: dict | None = None) -> dict:
        """One entry of getDeviceList; 466 for a device this host does not see."""
        options_of(options)
        guid = require_str("guid", guid)
        device = self._guids().get(guid)
        if device is None:
            raise DeviceNotFound(guid)
        return {"info": device}

    @verb()
    def getDevicesVisibility(self, guids: list, options: dict | None = None) -> dict:
        """{guid: whether this host sees the device now}."""
        options_of(options)
        if not isinstance(guids, list):
            raise InvalidParameterException(f"guids={guids!r}: expected a list of device GUIDs")
        asked = [require_str("guids", guid) for guid in guids]
        seen = self._guids() if asked else {}
        return {"visible": {guid: guid in seen for guid in asked}}

    @verb(mutating=True)
    def appropriateDevice(self, guid: str, thiefId: str) -> dict:
        """Gives the multipath device /dev/mapper/<guid> to VDSM's VM user while VM thiefId runs: a udev
        rule, applied at once. The device need not be there (the rule waits for it)."""
        udev.check_guid(guid)
        check_uuid("thiefId", thiefId)
        self._supervdsm.call("appropriateDevice", guid=guid, thiefId=thiefId)
        return {}

    @verb(mutating=True)
    def inappropriateDevices(self, thiefId: str) -> dict:
        """Removes every rule appropriateDevice wrote for VM thiefId (none: success)."""
        check_uuid("thiefId", thiefId)
        self._supervdsm.call("inappropriateDevices", thiefId=thiefId)
        return {}

    # -- volume groups ------------------------------------------------

    def _disks(self) -> list[dict]:
        """supervdsmd's listing of the disks getDeviceList offers: VDSM's GUIDs name these."""
        return [raw for raw in self._supervdsm.call("listBlockDevices") if raw["devtype"] == "disk"]

    def _vg_of(self, vg_uuid: str) -> tuple[LVM, VolumeGroup, list[dict]]:
        """The VG with this LVM UUID on this host's disks, an LVM over them, and the disks; else 506."""
        disks = [disk for disk in self._disks() if disk["vgUUID"] == vg_uuid]
        if not disks:
            raise VolumeGroupDoesNotExist(f"vg_uuid: {vg_uuid}")
        lvm = LVM(self._supervdsm, disks[0]["vgName"], [disk["devnode"] for disk in disks])
        vg = lvm.vg()
        if vg.uuid != vg_uuid:  # the name was taken by another VG since the listing
            raise VolumeGroupDoesNotExist(f"vg_uuid: {vg_uuid}")
        return lvm, vg, disks

    @verb(mutating=True)
    def createVG(self, vgname: str, devlist: list, force: bool | str = False, options: dict | None = None) -> dict:
        """A VG named `vgname` (a UUID: VDSM named a domain's VG after its sdUUID) on the disks of `devlist`,
        tagged RHAT_storage_domain_UNREADY, with VDSM's 128 MiB extents and metadata: {uuid: its LVM UUID}.

        Checked before anything is written: 466 for a disk this host does not see, 505 for a VG of that
        name on this host, 601 for a disk in a VG or otherwise in use, 504 under 10 GiB in all. A failed
        pvcreate or vgcreate wipes the labels it wrote. force=True (VDSM's pvcreate -ff over a device
        in use) answers 1000: hsm never relabels a device in use.
        """
        options_of(options)
        name = check_uuid("vgname", vgname)
        guids = _devlist(devlist)
        if len(set(guids)) < len(guids):
            raise InvalidParameterException(f"devlist={guids!r}: a device named twice")
        if parse_bool("force", force):
            raise InvalidParameterException("force=True: hsm never relabels a device in use (VDSM's pvcreate "
                                            "-ff); free the devices and call again without force")
        with self._vg_changes:
            disks = self._disks()
            known = {disk["name"]: disk for disk in disks}
            missing = [guid for guid in guids if guid not in known]
            if missing:
                raise InvalidPhysDev(f"no such disk: {', '.join(missing)}")
            if any(disk["vgName"] == name for disk in disks):
                raise VolumeGroupAlreadyExistsError(name)
            chosen = [known[guid] for guid in guids]
            refused = [why for why in map(refusal, chosen) if why]
            if refused:
                raise PhysDevInitializationError("; ".join(refused))
            if sum(int(disk["size"]) for disk in chosen) < MINIMAL_VG_SIZE:
                raise VolumeGroupSizeError(f"VG size must be more than {MINIMAL_VG_SIZE // MiB} MiB")
            lvm = LVM(self._supervdsm, name, [disk["devnode"] for disk in chosen])
            return {"uuid": lvm.create_vg(tags=[STORAGE_UNREADY_DOMAIN_TAG]).uuid}

    @verb(mutating=True)
    def removeVG(self, vgUUID: str, options: dict | None = None) -> dict:
        """Removes the VG (its LVs with it) and wipes its disks' PV labels. A VG this host does not see is
        success, as in VDSM; one VDSM did not make (no RHAT_storage_domain tag) is refused with 508."""
        options_of(options)
        vg_uuid = _vg_uuid(vgUUID)
        with self._vg_changes:
            try:
                lvm, vg, _ = self._vg_of(vg_uuid)
            except VolumeGroupDoesNotExist:
                return {}
            if not {STORAGE_DOMAIN_TAG, STORAGE_UNREADY_DOMAIN_TAG} & set(vg.tags):
                raise VolumeGroupRemoveError(f"{vg.name} ({vg_uuid}) has no {STORAGE_DOMAIN_TAG} tag: "
                                             "hsm removes only volume groups made for storage domains")
            lvm.remove_vg()
        return {}

    @verb()
    def getVGList(self, storageType: int | str | None = None, options: dict | None = None) -> dict:
        """{vglist: [{name, vgUUID, vgsize, vgfree, type, attr, state}]}: every VG on this host's disks
        (one vgs), those of `storageType` (2 FCP, 3 iSCSI) when given."""
        options_of(options)
        wanted = number("storageType", storageType, default=0)
        disks = self._disks()
        found = volume_groups(self._supervdsm, [disk["devnode"] for disk in disks if disk["pvUUID"]])
        vglist = [_vg_entry(vg, [disk for disk in disks if disk["vgUUID"] == vg.uuid]) for vg in found]
        return {"vglist": [entry for entry in vglist if not wanted or entry["type"] == wanted]}

    @verb()
    def getVGInfo(self, vgUUID: str, options: dict | None = None) -> dict:
        """{info: getVGList's entry and pvlist, one entry per PV}; 506 for a VG this host does not see."""
        options_of(options)
        lvm, vg, disks = self._vg_of(_vg_uuid(vgUUID))
        by_node = {disk["devnode"]: disk for disk in disks}
        pvlist = [_pv_entry(pv, by_node[pv.name], vg) for pv in lvm.pvs() if pv.name in by_node]
        return {"info": {**_vg_entry(vg, disks), "pvlist": pvlist}}

    @verb(mutating=True)
    def extendStorageDomain(self, sdUUID: str, spUUID: str, devlist: list, force: bool | str = False,
                            options: dict | None = None) -> dict:
        """Add the disks of `devlist` (GUIDs, as getDeviceList names them) to a block domain's VG: 606 for a
        disk this host does not see, 601 for one in a VG or in use; a file domain has no devices (372).
        force=True (VDSM's pvcreate -ff over a device in use) answers 1000, as createVG does."""
        options_of(options)
        sd_uuid, sp_uuid = check_uuid("sdUUID", sdUUID), check_uuid("spUUID", spUUID)
        guids = _devlist(devlist)
        if parse_bool("force", force):
            raise InvalidParameterException("force=True: hsm never relabels a device in use (VDSM's pvcreate "
                                            "-ff); free the devices and call again without force")
        pool = self._pools.connected(sp_uuid)
        repo = self._domains.get(sd_uuid)
        if repo.uuid not in pool.domains:
            raise StorageDomainNotMemberOfPool(f"{repo.uuid} in pool {pool.uuid}")
        if not isinstance(repo, BlockRepository):
            kind = TYPE_NAMES[self._domains.storage_type(repo)]
            raise StorageDomainTypeError(f"{repo.uuid} is a {kind} domain: only block domains have devices")
        known = {disk["name"]: disk for disk in self._disks()}
        missing = [guid for guid in guids if guid not in known]
        if missing:
            raise InvalidPhysDev(f"no such disk: {', '.join(missing)}")
        self._domains.extend(repo, [known[guid]["devnode"] for guid in guids])
        return {}
