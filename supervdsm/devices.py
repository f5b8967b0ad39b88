"""Block device listing through udev's database (or sysfs when udevd is not running)."""

from __future__ import annotations


def list_block_devices() -> list[dict]:
    import pyudev  # only supervdsmd needs it

    devices = []
    for device in pyudev.Context().list_devices(subsystem="block"):
        attributes = device.attributes
        try:
            sectors = int(attributes.asstring("size"))
        except (KeyError, ValueError):
            sectors = 0
        backing = ""
        if device.sys_name.startswith("loop"):
            try:
                backing = attributes.asstring("loop/backing_file").strip()
            except KeyError:
                backing = ""
        devices.append({
            "name": device.sys_name, "devnode": device.device_node or "", "devtype": device.device_type or "",
            "size": str(sectors * 512), "backingFile": backing,
            "fsType": device.properties.get("ID_FS_TYPE", ""), "serial": device.properties.get("ID_SERIAL", ""),
        })
    return devices
