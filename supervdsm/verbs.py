"""The privileged verbs supervdsmd serves: a fixed list, each with typed arguments and a timeout."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hsm.config import Config
from hsm.errors import InvalidParameterException
from supervdsm import devices, iscsi, mount, udev
from supervdsm.activation import LoopActivation, LvmActivation
from supervdsm.command import check_path, check_value, run
from supervdsm.lvm import lvm


@dataclass(frozen=True)
class PrivilegedVerb:
    name: str
    func: Callable[..., Any]
    args: dict[str, type]      # every argument and its JSON type; required unless in `optional`
    timeout: float = 60.0
    optional: frozenset[str] = frozenset()
    redact: Callable[[dict], dict] = lambda args: args  # what of the arguments may be logged
    peer: bool = False  # called with peer=(uid, gid) of the caller, as the kernel saw it connect (never an argument)


def check_args(verb: PrivilegedVerb, args: object) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise InvalidParameterException("args: expected an object")
    unknown = sorted(set(args) - set(verb.args))
    if unknown:
        raise InvalidParameterException(f"{verb.name}: unknown arguments {', '.join(unknown)}")
    missing = sorted(set(verb.args) - set(args) - verb.optional)
    if missing:
        raise InvalidParameterException(f"{verb.name}: missing arguments {', '.join(missing)}")
    for name, kind in verb.args.items():
        if name in args and (not isinstance(args[name], kind) or (kind is int and isinstance(args[name], bool))):
            raise InvalidParameterException(f"{verb.name}: {name}={args[name]!r}: expected {kind.__name__}")
    return args


def ping() -> dict:
    return {"pid": os.getpid(), "uid": os.geteuid()}


def make_verbs(config: Config) -> dict[str, PrivilegedVerb]:
    """The verb table, bound to this host's roots and timeouts."""
    timeout = config.supervdsm.call_timeout
    mount_root = os.path.join(config.irs.repository, "mnt")
    file_roots = [config.irs.repository, config.irs.state_dir]
    bind_roots = list(config.supervdsm.mount_sources)
    rules_dir = config.supervdsm.udev_rules_dir
    loop_roots = [config.irs.repository, *bind_roots]
    lv_loop = LoopActivation(timeout)
    lv_lvm = LvmActivation(timeout)
    lv_args = {"vgName": str, "lvName": str, "readOnly": bool}

    def do_lvm(command: str, args: list, config: str = "") -> dict:
        return lvm(command, args, config, timeout)

    def do_mount(spec: str, mountpoint: str, vfsType: str, options: str = "") -> dict:
        return mount.mount(spec, mountpoint, vfsType, options, mount_root, timeout, loop_roots, bind_roots)

    def do_umount(mountpoint: str, lazy: bool = False, force: bool = False) -> dict:
        return mount.umount(mountpoint, mount_root, lazy, force, timeout)

    def udevadm_settle(timeout: int = 5) -> dict:
        if not 0 < timeout <= 600:
            raise InvalidParameterException(f"timeout={timeout}: 1 to 600 seconds")
        return run(["udevadm", "settle", f"--timeout={timeout}"], timeout + 5)

    def udevadm_trigger(subsystem: str = "block", action: str = "change") -> dict:
        if action not in ("add", "change"):
            raise InvalidParameterException(f"action={action!r}: add or change")
        check_value("subsystem", subsystem)
        return run(["udevadm", "trigger", f"--subsystem-match={subsystem}", f"--action={action}"], 60)

    def chown(path: str, uid: int, gid: int) -> dict:
        check_path("path", path, file_roots)
        os.chown(path, uid, gid, follow_symlinks=False)
        return {}

    def chmod(path: str, mode: int) -> dict:
        check_path("path", path, file_roots)
        if not 0 <= mode <= 0o777:
            raise InvalidParameterException(f"mode={mode:o}: permission bits only")
        os.chmod(path, mode)
        return {}

    def iscsi_node(op: str, target: str, portal: str, iface: str = "default", name: str = "",
                   value: str = "") -> dict:
        return iscsi.node(op, target, portal, iface, name, value, timeout)

    table = [
        PrivilegedVerb("ping", ping, {}, timeout=5),
        PrivilegedVerb("listBlockDevices", devices.list_block_devices, {}, timeout=30),
        PrivilegedVerb("lvm", do_lvm, {"command": str, "args": list, "config": str}, timeout + 5,
                       frozenset({"config"})),
        PrivilegedVerb("mount", do_mount, {"spec": str, "mountpoint": str, "vfsType": str, "options": str},
                       timeout + 5, frozenset({"options"})),
        PrivilegedVerb("umount", do_umount, {"mountpoint": str, "lazy": bool, "force": bool}, timeout + 5,
                       frozenset({"lazy", "force"})),
        PrivilegedVerb("udevadmSettle", udevadm_settle, {"timeout": int}, 620, frozenset({"timeout"})),
        PrivilegedVerb("udevadmTrigger", udevadm_trigger, {"subsystem": str, "action": str}, 65,
                       frozenset({"subsystem", "action"})),
        PrivilegedVerb("iscsiNode", iscsi_node, {"op": str, "target": str, "portal": str, "iface": str,
                                                 "name": str, "value": str}, timeout + 5,
                       frozenset({"iface", "name", "value"}), iscsi.redact),
        PrivilegedVerb("iscsiNodeList", lambda: iscsi.list_nodes(timeout), {}, timeout + 5),
        PrivilegedVerb("iscsiIface", lambda op, name: iscsi.iface(op, name, timeout), {"op": str, "name": str},
                       timeout + 5),
        PrivilegedVerb("iscsiDiscover", lambda portal, iface="default": iscsi.discover(portal, iface, timeout),
                       {"portal": str, "iface": str}, timeout + 5, frozenset({"iface"})),
        PrivilegedVerb("multipathReconfigure", lambda: run(["multipath", "-r"], timeout), {}, timeout + 5),
        PrivilegedVerb("chown", chown, {"path": str, "uid": int, "gid": int}, 10),
        PrivilegedVerb("chmod", chmod, {"path": str, "mode": int}, 10),
        PrivilegedVerb("appropriateDevice", lambda guid, thiefId: udev.appropriate(rules_dir, guid, thiefId),
                       {"guid": str, "thiefId": str}, timeout + 5),
        PrivilegedVerb("inappropriateDevices", lambda thiefId: udev.inappropriate(rules_dir, thiefId),
                       {"thiefId": str}, timeout + 5),
        PrivilegedVerb("loopActivateLV", lv_loop.activate, lv_args, timeout + 5, frozenset({"readOnly"}), peer=True),
        PrivilegedVerb("loopDeactivateLV", lv_loop.deactivate, {"vgName": str, "lvName": str}, timeout + 5),
        PrivilegedVerb("lvmActivateLV", lv_lvm.activate, lv_args, timeout + 5, frozenset({"readOnly"}), peer=True),
        PrivilegedVerb("lvmDeactivateLV", lv_lvm.deactivate, {"vgName": str, "lvName": str}, timeout + 5),
    ]
    return {verb.name: verb for verb in table}
