"""The privileged verbs supervdsmd serves: a fixed list, each with typed arguments."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hsm.errors import InvalidParameterException


@dataclass(frozen=True)
class PrivilegedVerb:
    name: str
    func: Callable[..., Any]
    args: dict[str, type]      # every argument and its JSON type; no others accepted
    timeout: float = 60.0


def check_args(verb: PrivilegedVerb, args: object) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise InvalidParameterException("args: expected an object")
    unknown = sorted(set(args) - set(verb.args))
    if unknown:
        raise InvalidParameterException(f"{verb.name}: unknown arguments {', '.join(unknown)}")
    for name, kind in verb.args.items():
        if name in args and not isinstance(args[name], kind):
            raise InvalidParameterException(f"{verb.name}: {name}={args[name]!r}: expected {kind.__name__}")
    return args


def ping() -> dict:
    return {"pid": os.getpid(), "uid": os.geteuid()}


def list_block_devices() -> list[dict]:
    """Block devices the kernel knows, through udev's database (or sysfs without udevd)."""
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


VERBS: dict[str, PrivilegedVerb] = {v.name: v for v in [
    PrivilegedVerb("ping", ping, {}, timeout=5),
    PrivilegedVerb("listBlockDevices", list_block_devices, {}, timeout=30),
]}
