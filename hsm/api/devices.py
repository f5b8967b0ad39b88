"""Device verbs, answered through supervdsmd's privileged device listing."""

from __future__ import annotations

from hsm.api.verbs import verb
from hsm.errors import InvalidParameterException
from supervdsm.client import SupervdsmClient

# VDSM's storage type numbers that name a transport a device can be seen through.
_TRANSPORTS = {2: "FCP", 3: "iSCSI"}


def _device(raw: dict) -> dict:
    """One entry of VDSM's devList, from supervdsmd's listing."""
    return {
        "GUID": raw["name"], "devnode": raw["devnode"], "capacity": raw["size"], "devtype": raw.get("transport", ""),
        "serial": raw["serial"], "vendorID": raw.get("vendor", ""), "productID": raw.get("model", ""),
        "fsType": raw["fsType"], "backingFile": raw["backingFile"],
        "status": "used" if raw.get("inUse", raw["fsType"]) else "free",
        "pvUUID": raw.get("pvUUID", ""), "vgUUID": raw.get("vgUUID", ""), "pathlist": [], "pathstatus": [],
    }


class DevicesAPI:
    def __init__(self, supervdsm: SupervdsmClient) -> None:
        self._supervdsm = supervdsm

    @verb()
    def getDeviceList(self, storageType: int | str | None = None, options: dict | None = None) -> dict:
        if isinstance(storageType, str) and storageType.isdigit():
            storageType = int(storageType)  # vdsClient passes the word as typed
        if storageType not in (None, "", *_TRANSPORTS) or isinstance(storageType, bool):
            raise InvalidParameterException(f"storageType={storageType!r}: expected none, 2 (FCP) or 3 (iSCSI)")
        devices = [_device(raw) for raw in self._supervdsm.call("listBlockDevices")
                   if raw["devtype"] == "disk"]
        if storageType:
            devices = [d for d in devices if d["devtype"] == _TRANSPORTS[int(storageType)]]
        return {"devList": devices}
