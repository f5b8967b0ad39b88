"""Giving a VM's direct LUN to VDSM's VM user with a udev rule, and taking it back.

One rules file per device and VM, named as VDSM named them
(`99-vdsm-<guid>-<vmId>.rules`), so that rules VDSM wrote before hsm took over
are removed by the same call. Owner and group are supervdsmd's own (VDSM's
`vdsm:qemu`), never a caller's. The rule runs chown rather than setting
OWNER/GROUP: udev resets a device's SELinux label when a rule sets those,
which paused running VMs (VDSM's fix for rhbz#1147910).
"""

from __future__ import annotations

import os
import re

from hsm.atomicfile import atomic_remove, atomic_write
from hsm.errors import InvalidParameterException, MiscFileWriteException, SupervdsmCallError
from hsm.ids import is_uuid
from supervdsm.command import run

# A device-mapper (multipath) name: letters, digits, '_', '.', '-', at most 127 (DM_NAME_LEN - 1).
# Nothing udev reads as a pattern ('*', '?', '[', '|') nor a quote: the name goes into a rule and a match.
GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,126}")
# The VM's id: a UUID in VDSM's form.

PREFIX, SUFFIX = "99-vdsm-", ".rules"
DEVICE_OWNER, DEVICE_GROUP = "vdsm", "qemu"  # VDSM's DISKIMAGE_USER and DISKIMAGE_GROUP
CHOWN = "/usr/bin/chown"
UDEV_CONTROL = "/run/udev/control"  # udevd's control socket: absent when udevd is not running
SETTLE_TIMEOUT = 30  # seconds; VDSM waited as long for a LUN to become usable


def check_guid(value: object) -> str:
    if not isinstance(value, str) or not GUID.fullmatch(value):
        raise InvalidParameterException(f"guid={value!r}: expected a device-mapper name")
    return value


def check_thief_id(value: object) -> str:
    if not is_uuid(value):
        raise InvalidParameterException(f"thiefId={value!r}: expected a UUID")
    return value


def rule_name(guid: str, thief_id: str) -> str:
    return f"{PREFIX}{check_guid(guid)}-{check_thief_id(thief_id)}{SUFFIX}"


def rule_text(guid: str) -> str:
    """The rule that gives /dev/mapper/<guid> to VDSM's VM user, whenever udev sees the device."""
    return f'SYMLINK=="mapper/{check_guid(guid)}", RUN+="{CHOWN} {DEVICE_OWNER}:{DEVICE_GROUP} $env{{DEVNAME}}"\n'


def appropriate(rules_dir: str, guid: str, thief_id: str) -> dict:
    """Write the rule (atomically), then have udev apply it to the device: {rule: the file's name}."""
    name = rule_name(guid, thief_id)
    try:
        atomic_write(os.path.join(rules_dir, name), rule_text(guid).encode(), 0o644)
    except OSError as e:
        raise MiscFileWriteException(f"{name} in {rules_dir}: {e.strerror}") from None
    _apply([guid])
    return {"rule": name}


def inappropriate(rules_dir: str, thief_id: str) -> dict:
    """Remove every rule of VM `thief_id` and have udev look at those devices again: {removed: [guid]}."""
    check_thief_id(thief_id)
    owned = re.compile(rf"{re.escape(PREFIX)}({GUID.pattern})-{re.escape(thief_id)}{re.escape(SUFFIX)}")
    try:
        names = os.listdir(rules_dir)
    except OSError as e:
        raise MiscFileWriteException(f"{rules_dir}: {e.strerror}") from None
    removed, failed = [], []
    for name in sorted(names):
        match = owned.fullmatch(name)
        if match is None:
            continue
        try:
            atomic_remove(os.path.join(rules_dir, name))
            removed.append(match.group(1))
        except OSError as e:
            failed.append(f"{name}: {e.strerror}")
    if removed:
        _apply(removed)
    if failed:
        raise MiscFileWriteException(f"rules not removed from {rules_dir}: {'; '.join(failed)}")
    return {"removed": removed}


def _apply(guids: list[str]) -> None:
    """Reload udev's rules, send a change event to these device-mapper devices, and wait for udev to finish.

    Without udevd (no control socket) there are no rules to reload and no event is handled; the
    trigger and the settle still run.
    """
    if os.path.exists(UDEV_CONTROL):
        _udevadm(["control", "--reload"], 10)
    matches = [f"--property-match=DM_NAME={guid}" for guid in map(check_guid, guids)]  # any of them
    _udevadm(["trigger", "--action=change", "--subsystem-match=block", *matches], 15)
    _udevadm(["settle", f"--timeout={SETTLE_TIMEOUT}"], SETTLE_TIMEOUT + 5)


def _udevadm(args: list[str], timeout: float) -> None:
    done = run(["udevadm", *args], timeout)
    if done["rc"] != 0:
        raise SupervdsmCallError(f"udevadm {args[0]} failed (rc {done['rc']}): {done['err'].strip()}")
