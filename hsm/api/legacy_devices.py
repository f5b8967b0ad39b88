"""VDSM's device and volume group verbs, and extendStorageDomain.

getDeviceInfo and getDevicesVisibility answer from the device list that
getDeviceList gives (supervdsmd's listing). appropriateDevice and
inappropriateDevices (VDSM's VM code, for a VM's direct LUN) have supervdsmd
write and remove the VM's udev rules (supervdsm/udev.py). Block storage
domains (LVM volume groups) are not served yet: createVG, removeVG, getVGList,
getVGInfo and extendStorageDomain check their arguments as VDSM did, then
answer VDSM's 372 (StorageDomainTypeError, "Unsupported Storage Domain type"),
never "unknown verb", so a caller learns why.
"""

from __future__ import annotations

import re

from hsm.api.devices import DevicesAPI
from hsm.api.dispatch import options_of
from hsm.api.legacy_domains import parse_bool
from hsm.api.verbs import require_str, verb
from hsm.errors import (
    DeviceNotFound,
    InvalidParameterException,
    StorageDomainNotMemberOfPool,
    StorageDomainTypeError,
)
from hsm.storage.domains import TYPE_NAMES, Domains, check_uuid, number
from hsm.storage.pools import Pools
from supervdsm import udev
from supervdsm.client import SupervdsmClient

# LVM's own UUIDs (a VG's vgUUID): 32 letters and digits grouped 6-4-4-4-4-4-6.
LVM_UUID = re.compile(r"[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}")
BLOCK_NOT_SERVED = "block storage domains (LVM volume groups) are not served by hsm yet"


def _vg_uuid(value: object) -> str:
    if not isinstance(value, str) or not LVM_UUID.fullmatch(value):
        raise InvalidParameterException(f"vgUUID={value!r}: expected an LVM UUID")
    return value


def _devlist(value: object) -> list[str]:
    """A list of device GUIDs, as VDSM's clients send it."""
    if not isinstance(value, list) or not value:
        raise InvalidParameterException(f"devlist={value!r}: expected a list of device GUIDs")
    return [require_str("devlist", guid) for guid in value]


class LegacyDevicesAPI:
    def __init__(self, supervdsm: SupervdsmClient, domains: Domains, pools: Pools) -> None:
        self._devices = DevicesAPI(supervdsm)  # its getDeviceList is the one device listing
        self._supervdsm = supervdsm
        self._domains = domains
        self._pools = pools

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

    # -- block storage: not served yet ------------------------------

    @verb(mutating=True)
    def createVG(self, vgname: str, devlist: list, force: bool | str = False, options: dict | None = None) -> dict:
        options_of(options)
        check_uuid("vgname", vgname)  # VDSM named a domain's VG after its sdUUID
        _devlist(devlist)
        parse_bool("force", force)
        raise StorageDomainTypeError(BLOCK_NOT_SERVED)

    @verb(mutating=True)
    def removeVG(self, vgUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        _vg_uuid(vgUUID)
        raise StorageDomainTypeError(BLOCK_NOT_SERVED)

    @verb()
    def getVGList(self, storageType: int | str | None = None, options: dict | None = None) -> dict:
        options_of(options)
        number("storageType", storageType, default=0)
        raise StorageDomainTypeError(BLOCK_NOT_SERVED)

    @verb()
    def getVGInfo(self, vgUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        _vg_uuid(vgUUID)
        raise StorageDomainTypeError(BLOCK_NOT_SERVED)

    @verb(mutating=True)
    def extendStorageDomain(self, sdUUID: str, spUUID: str, devlist: list, force: bool | str = False,
                            options: dict | None = None) -> dict:
        """Every domain hsm serves is a file domain, which has no devices to add (VDSM's file domains did
        nothing with them): 372 once the domain is known to be one of the pool's."""
        options_of(options)
        sd_uuid, sp_uuid = check_uuid("sdUUID", sdUUID), check_uuid("spUUID", spUUID)
        _devlist(devlist)
        parse_bool("force", force)
        pool = self._pools.connected(sp_uuid)
        repo = self._domains.get(sd_uuid)
        if repo.uuid not in pool.domains:
            raise StorageDomainNotMemberOfPool(f"{repo.uuid} in pool {pool.uuid}")
        kind = TYPE_NAMES[self._domains.storage_type(repo)]
        raise StorageDomainTypeError(f"{repo.uuid} is a {kind} domain; {BLOCK_NOT_SERVED}")
