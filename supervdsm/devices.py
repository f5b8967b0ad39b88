"""Block devices as supervdsmd sees them: pyudev (udev's database, or sysfs when udevd is not running),
LVM's physical volumes, and wipefs' list of signatures for what neither knows.

Without udevd, pyudev has only the kernel's properties (no ID_SERIAL, no ID_FS_TYPE): sysfs fills in
vendor, model and serial where the driver gives them, and `wipefs --no-act` finds file systems and partition
tables, so that "in use" never rests on udev alone. Loop devices over another block device are LV
activations (supervdsm/activation.py), not devices of their own, and are left out; so are
device-mapper LVs.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from hsm.errors import SupervdsmCallError
from supervdsm import lvmconfig
from supervdsm.command import run

# A kernel block device name hsm puts into an LVM filter: of the characters a regex reads, only "." and "+" (_literal).
_DEVICE_NAME = re.compile(r"[A-Za-z0-9_:+-][A-Za-z0-9_.:+-]{0,127}")
PV_FIELDS = "pv_name,pv_uuid,vg_name,vg_uuid"
REPORT_TIMEOUT = 12.0  # seconds for pvs, and again for wipefs: both within listBlockDevices' 30


def _attribute(device: Any, name: str) -> str:
    try:
        return device.attributes.asstring(name).strip()
    except (KeyError, UnicodeDecodeError):
        return ""


def _int_attribute(device: Any, name: str) -> int:
    try:
        return int(_attribute(device, name))
    except ValueError:
        return 0


def _block_devices() -> list[Any]:
    import pyudev  # only supervdsmd needs it

    return list(pyudev.Context().list_devices(subsystem="block"))


def is_lv_map(device: Any) -> bool:
    """A loop device over another block device (the loop way of activating an LV), or a device-mapper LV."""
    if device.sys_name.startswith("dm-"):
        return _attribute(device, "dm/uuid").startswith("LVM-")
    backing = _attribute(device, "loop/backing_file") if device.sys_name.startswith("loop") else ""
    try:
        return bool(backing) and stat.S_ISBLK(os.stat(backing).st_mode)
    except OSError:
        return False


def _may_hold_pv(device: Any) -> bool:
    node = device.device_node or ""
    if not node.startswith("/dev/") or not _DEVICE_NAME.fullmatch(os.path.basename(node)) or is_lv_map(device):
        return False
    if device.sys_name.startswith("loop") and not _attribute(device, "loop/backing_file"):
        return False  # a loop device with nothing attached
    return _int_attribute(device, "size") > 0


def pv_candidates() -> list[str]:
    """Device nodes LVM may scan for physical volumes: every block device with data but LV maps and LVs,
    so that a PV written by a guest inside an LV is never read as the host's."""
    return [device.device_node for device in _block_devices() if _may_hold_pv(device)]


def lvm_config(devnodes: list[str], activation: bool = False) -> str:
    """An lvm --config string whose filter accepts exactly `devnodes` (names checked here), VDSM's scanning
    settings, and LVM's activation off unless `activation` (the lvm way of activating an LV)."""
    accept = "".join(f'"a|^{_literal(node)}$|", ' for node in devnodes
                     if node.startswith("/dev/") and _DEVICE_NAME.fullmatch(node[5:].replace("/", "_")))
    config = (f'devices {{ filter=[{accept}"r|.*|"] hints="none" obtain_device_list_from_udev=0 '
              'use_devicesfile=0 write_cache_state=0 }')
    return lvmconfig.canonical(config if activation else config + " global { activation=0 }")


def _literal(node: str) -> str:
    """`node` as a regex matching itself; a class rather than a backslash, which LVM's strings would eat."""
    return node.replace(".", "[.]").replace("+", "[+]")


def physical_volumes(devnodes: list[str]) -> dict[int, dict[str, str]]:
    """{device number: pvs' row} of the physical volumes on `devnodes`."""
    if not devnodes:
        return {}
    done = run(["lvm", "pvs", "--config", lvm_config(devnodes), "--reportformat", "json", "-o", PV_FIELDS],
               REPORT_TIMEOUT, env={"LVM_SUPPRESS_FD_WARNINGS": "1"})
    if done["rc"] != 0:
        raise SupervdsmCallError(f"pvs failed (rc {done['rc']}): {done['err'].strip()}")
    found = {}
    for row in json.loads(done["out"])["report"][0]["pv"]:
        try:
            found[os.stat(row["pv_name"]).st_rdev] = row
        except OSError:
            continue  # "[unknown]": a PV LVM knows of but cannot see
    return found


def signatures(devnodes: list[str]) -> dict[str, str]:
    """{device node: the first signature wipefs finds on it (a file system, a partition table, a PV)}, or
    "unreadable" for a device wipefs cannot probe (never offered as free); no entry for blank devices.
    wipefs only lists here (--no-act, no --all). It stops at the first device it cannot probe, so a
    failed run is repeated device by device."""
    if not devnodes:
        return {}
    done = run(["wipefs", "--no-act", "--json", *devnodes], REPORT_TIMEOUT)
    if done["rc"] != 0:
        if len(devnodes) == 1:
            return {devnodes[0]: "unreadable"}
        return {node: kind for one in devnodes for node, kind in signatures([one]).items()}
    by_name = {os.path.basename(node): node for node in devnodes}
    found: dict[str, str] = {}
    for row in json.loads(done["out"] or '{"signatures": []}')["signatures"]:
        node = by_name.get(row.get("device", ""))
        if node and row.get("type"):
            found.setdefault(node, row["type"])
    return found


def _mounted() -> set[int]:
    """Device numbers of mounted file systems."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        numbers = (line.split()[2].split(":") for line in f)
        return {os.makedev(int(major), int(minor)) for major, minor in numbers}


def _describe(device: Any) -> dict:
    properties = device.properties
    sectors = _int_attribute(device, "size")
    backing = _attribute(device, "loop/backing_file") if device.sys_name.startswith("loop") else ""
    serial = properties.get("ID_SERIAL") or _attribute(device, "serial") or _attribute(device, "device/wwid")
    return {
        "name": device.sys_name, "devnode": device.device_node or "", "devtype": device.device_type or "",
        "size": str(sectors * 512), "backingFile": backing, "fsType": properties.get("ID_FS_TYPE", ""),
        "serial": serial,
        "vendor": properties.get("ID_VENDOR") or _attribute(device, "device/vendor"),
        "model": properties.get("ID_MODEL") or _attribute(device, "device/model"),
        "readOnly": _attribute(device, "ro") == "1",
        "logicalBlockSize": _int_attribute(device, "queue/logical_block_size"),
        "physicalBlockSize": _int_attribute(device, "queue/physical_block_size"),
        "holders": sorted(os.listdir(os.path.join(device.sys_path, "holders")))
        if os.path.isdir(os.path.join(device.sys_path, "holders")) else [],
        "pvUUID": "", "vgName": "", "vgUUID": "", "inUse": False, "usedBy": "",
    }


def list_block_devices() -> list[dict]:
    """Every block device but LV maps and LVs: size in bytes (a decimal string), vendor, model, serial,
    which PV and VG it is (LVM's own report), and whether it is in use and by what: `usedBy` is
    "pv", "holders" (something is built on it), "partitions", "mounted", a signature wipefs found
    (a file system or partition table type), "unreadable", or "" when it is free."""
    udev_devices = [device for device in _block_devices() if not is_lv_map(device)]
    described = [(device, _describe(device)) for device in udev_devices]
    pvs = physical_volumes([entry["devnode"] for device, entry in described if _may_hold_pv(device)])
    mounted = _mounted()
    with_partitions = {device.find_parent("block").sys_name for device in udev_devices
                       if device.device_type == "partition" and device.find_parent("block") is not None}
    for device, entry in described:
        pv = pvs.get(device.device_number)
        if pv:
            entry.update(pvUUID=pv["pv_uuid"], vgName=pv["vg_name"], vgUUID=pv["vg_uuid"], usedBy="pv",
                         fsType=entry["fsType"] or "LVM2_member")  # what udev's blkid would say
        elif entry["holders"]:
            entry["usedBy"] = "holders"
        elif device.sys_name in with_partitions:
            entry["usedBy"] = "partitions"
        elif device.device_number in mounted:
            entry["usedBy"] = "mounted"
        elif entry["fsType"]:
            entry["usedBy"] = entry["fsType"]
    unknown = [entry["devnode"] for device, entry in described if not entry["usedBy"] and _may_hold_pv(device)]
    found = signatures(unknown)
    for _, entry in described:
        signature = found.get(entry["devnode"], "")
        if not entry["usedBy"] and signature:
            entry["usedBy"] = signature
            entry["fsType"] = entry["fsType"] or (signature if signature != "unreadable" else "")
        entry["inUse"] = bool(entry["usedBy"])
    return [entry for _, entry in described]
