"""Making one LV usable as a block device, and unusable again: the two ways of `[irs] lv_activation`.

`loop` (hosts without device-mapper): supervdsmd reads the LV's place on its PV from LVM itself (one
JSON report, activation off, a filter naming the devices that may hold PVs) and attaches a loop device
over exactly those bytes: offset pe_start + (first physical extent) * extent_size, size the LV's size.
Only an LV of one linear segment on one PV can be mapped so; anything else is refused. The caller names
the VG and the LV, never a device or an offset.

`lvm` (hosts with device-mapper): `lvchange -ay` / `-an`, then a check that /dev/<vg>/<lv> is there (or
gone): with LVM's activation off, lvchange answers 0 and does nothing, and that must not read as success.

Both are idempotent: activating an active LV answers its device again; deactivating an inactive one
does nothing. The device is handed to the caller (owner its uid and gid, mode 0660: what VDSM's udev
rules did for vdsm), so an unprivileged hsmd runs qemu-img on it; a loop device detached goes back to
root.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass

from hsm.errors import (
    CannotActivateLogicalVolume,
    CannotDeactivateLogicalVolume,
    LogicalVolumeDoesNotExistError,
    SupervdsmCallError,
)
from supervdsm import devices
from supervdsm.command import run
from supervdsm.lvm import check_name

SEGMENT_FIELDS = "pv_name,pe_start,pvseg_start,pvseg_size,vg_name,vg_extent_size,lv_name,lv_size,segtype"
_LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def hand_over(path: str, peer: tuple[int, int] | None) -> None:
    """Give the device node to the caller (uid, gid): it alone, besides root, may read and write it."""
    uid, gid = peer if peer is not None else (0, 0)
    node = os.path.realpath(path)
    os.chown(node, uid, gid)
    os.chmod(node, 0o660)


def check_names(vg_name: str, lv_name: str) -> tuple[str, str]:
    return check_name("vgName", vg_name), check_name("lvName", lv_name)


@dataclass(frozen=True)
class LinearSegment:
    """Where an LV's bytes are: `size` bytes from `offset` on the PV `pv`."""
    pv: str
    offset: int
    size: int


def linear_segment(vg_name: str, lv_name: str, timeout: float) -> LinearSegment:
    """The LV's one linear segment on one PV, as LVM reports it now; 610 if there is no such LV, 558 if it
    is not one linear segment on one PV."""
    lv = f"{vg_name}/{lv_name}"
    done = run(["lvm", "pvs", "--config", devices.lvm_config(devices.pv_candidates()), "--segments",
                "--reportformat", "json", "--units", "b", "--nosuffix", "-o", SEGMENT_FIELDS,
                "--select", f'vg_name="{vg_name}" && lv_name="{lv_name}"'], timeout, env=_LVM_ENV)
    if done["rc"] != 0:
        raise SupervdsmCallError(f"pvs for {lv} failed (rc {done['rc']}): {done['err'].strip()}")
    rows = [row for row in json.loads(done["out"])["report"][0]["pvseg"]
            if row["vg_name"] == vg_name and row["lv_name"] == lv_name]
    if not rows:
        raise LogicalVolumeDoesNotExistError(lv)
    if len(rows) != 1:
        raise CannotActivateLogicalVolume(f"{lv} has {len(rows)} segments; a loop device maps one linear "
                                          "segment on one PV")
    row = rows[0]
    extent, size = int(row["vg_extent_size"]), int(row["lv_size"])
    if row["segtype"] != "linear" or int(row["pvseg_size"]) * extent != size:
        raise CannotActivateLogicalVolume(f"{lv} is a {row['segtype']} LV; a loop device maps one linear "
                                          "segment on one PV")
    if not row["pv_name"].startswith("/dev/"):
        raise CannotActivateLogicalVolume(f"{lv}: its PV {row['pv_name']} is missing")
    return LinearSegment(row["pv_name"], int(row["pe_start"]) + int(row["pvseg_start"]) * extent, size)


def _loop_devices(timeout: float) -> list[dict]:
    done = run(["losetup", "--json", "--list"], timeout)
    if done["rc"] != 0:
        raise SupervdsmCallError(f"losetup --list failed (rc {done['rc']}): {done['err'].strip()}")
    return json.loads(done["out"])["loopdevices"] if done["out"].strip() else []


def _maps(segment: LinearSegment, timeout: float) -> list[dict]:
    """Loop devices over the segment's first byte, whatever their size (an LV extended since keeps its start)."""
    return [loop for loop in _loop_devices(timeout)
            if loop.get("back-file") == segment.pv and int(loop.get("offset") or 0) == segment.offset]


class LoopActivation:
    """The `loop` way. One lock keeps two callers from attaching two loop devices over one LV."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()

    def activate(self, vgName: str, lvName: str, readOnly: bool = False,
                 peer: tuple[int, int] | None = None) -> dict:
        """{path: the loop device}: the one already over the LV if there is one, else a new one; the
        caller (`peer`) owns it."""
        vg_name, lv_name = check_names(vgName, lvName)
        segment = linear_segment(vg_name, lv_name, self._timeout)
        with self._lock:
            for loop in _maps(segment, self._timeout):
                if int(loop.get("sizelimit") or 0) != segment.size or loop.get("autoclear"):
                    continue  # stale (the LV changed size), or on its way out (detached while open)
                if bool(loop.get("ro")) != readOnly:
                    raise CannotActivateLogicalVolume(
                        f"{vg_name}/{lv_name} is active {'read-only' if loop.get('ro') else 'read-write'} on "
                        f"{loop['name']}; deactivate it first")
                hand_over(loop["name"], peer)
                return {"path": loop["name"]}
            argv = ["losetup", "--find", "--show", "--offset", str(segment.offset), "--sizelimit",
                    str(segment.size), *(["--read-only"] if readOnly else []), segment.pv]
            done = run(argv, self._timeout)
            path = done["out"].strip()
            if done["rc"] != 0 or not path.startswith("/dev/loop"):
                raise CannotActivateLogicalVolume(f"{vg_name}/{lv_name}: losetup failed (rc {done['rc']}): "
                                                  f"{done['err'].strip()}")
            hand_over(path, peer)
        return {"path": path}

    def deactivate(self, vgName: str, lvName: str) -> dict:
        """{detached: [loop devices]}; none is no error. A device still open is detached by the kernel when
        its last user closes it."""
        vg_name, lv_name = check_names(vgName, lvName)
        segment = linear_segment(vg_name, lv_name, self._timeout)
        detached, failed = [], []
        with self._lock:
            for loop in _maps(segment, self._timeout):
                done = run(["losetup", "--detach", loop["name"]], self._timeout)
                if done["rc"] == 0:
                    with contextlib.suppress(OSError):
                        hand_over(loop["name"], None)
                    detached.append(loop["name"])
                else:
                    failed.append(f"{loop['name']}: {done['err'].strip()}")
        if failed:
            raise CannotDeactivateLogicalVolume(f"{vg_name}/{lv_name}: {'; '.join(failed)}")
        return {"detached": detached}


class LvmActivation:
    """The `lvm` way: device-mapper through lvchange; the device node is checked, not assumed."""

    def __init__(self, timeout: float, dev_root: str = "/dev") -> None:
        self._timeout = timeout
        self._dev_root = dev_root

    def _lvchange(self, flag: str, vg_name: str, lv_name: str, read_only: bool = False) -> dict:
        config = devices.lvm_config(devices.pv_candidates(), activation=True)
        if read_only:
            config += f' activation {{ read_only_volume_list=["{vg_name}/{lv_name}"] }}'
        return run(["lvm", "lvchange", "--config", config, flag, f"{vg_name}/{lv_name}"], self._timeout,
                   env=_LVM_ENV)

    def activate(self, vgName: str, lvName: str, readOnly: bool = False,
                 peer: tuple[int, int] | None = None) -> dict:
        """{path: /dev/<vg>/<lv>}, once the node is there; the caller (`peer`) owns it."""
        vg_name, lv_name = check_names(vgName, lvName)
        path = os.path.join(self._dev_root, vg_name, lv_name)
        done = self._lvchange("-ay", vg_name, lv_name, readOnly)
        if done["rc"] != 0:
            raise CannotActivateLogicalVolume(f"lvchange -ay {vg_name}/{lv_name} failed (rc {done['rc']}): "
                                              f"{done['err'].strip()}")
        if not os.path.exists(path):
            raise CannotActivateLogicalVolume(
                f"lvchange -ay {vg_name}/{lv_name} answered 0 but {path} is not there: LVM's activation is off "
                "on this host (global/activation=0, or no device-mapper); [irs] lv_activation = loop serves such hosts")
        hand_over(path, peer)
        return {"path": path}

    def deactivate(self, vgName: str, lvName: str) -> dict:
        vg_name, lv_name = check_names(vgName, lvName)
        path = os.path.join(self._dev_root, vg_name, lv_name)
        was_active = os.path.exists(path)
        done = self._lvchange("-an", vg_name, lv_name)
        if done["rc"] != 0:
            raise CannotDeactivateLogicalVolume(f"lvchange -an {vg_name}/{lv_name} failed (rc {done['rc']}): "
                                                f"{done['err'].strip()}")
        if os.path.exists(path):
            raise CannotDeactivateLogicalVolume(f"lvchange -an {vg_name}/{lv_name} answered 0 but {path} is "
                                                "still there")
        return {"detached": [path] if was_active else []}
