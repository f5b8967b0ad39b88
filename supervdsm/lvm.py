"""The lvm verb: one lvm command, its own allow-listed options, a checked --config string.

Options are allowed per command, with their meaning there: `-f` is `--force`
for vgremove but `--file` for vgcfgbackup, so it is listed for the first and
not the second. Each option is a flag or takes exactly one value, as lvm's own
parser reads it, and that value is checked for what the option means.
"""

from __future__ import annotations

import re

from hsm.errors import InvalidParameterException
from supervdsm import lvmconfig
from supervdsm.command import Check, check_value, run
from supervdsm.command import choice as _choice
from supervdsm.command import matches as _matches

_SIZE = _matches(r"\+?[0-9]+(\.[0-9]+)?[bBsSkKmMgGtTpPeE]?")
_EXTENTS = _matches(r"\+?[0-9]+(%(VG|FREE|PVS|LV|ORIGIN))?")
_COUNT = _matches(r"[0-9]{1,6}")
_TAG = _matches(r"[A-Za-z0-9_+.=:/@][A-Za-z0-9_+.=:/@-]{0,1023}")
# LVM's own rule for VG and LV names (letters, digits, '_', '+', '.', '-'; no leading '-' or '.'), 127 at most,
# and the words LVM keeps for its own hidden or special LVs.
LVM_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,126}")
RESERVED = ("snapshot", "pvmove", "_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage",
            "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
_NAME = _matches(LVM_NAME.pattern)
_UUID = _matches(r"[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}|[A-Za-z0-9]{32}")
_YES_NO = _choice("y", "n")
_FIELDS = _matches(r"\+?[a-z_]+(,[a-z_]+)*")
_SORT = _matches(r"[+-]?[a-z_]+(,[+-]?[a-z_]+)*")
_SELECT = _matches(r"[A-Za-z0-9_ =!<>&|(){}\[\],.:+/%#@~^$*?-]{1,4096}")
_DEVICES = _matches(r"/dev/[A-Za-z0-9_.:/+-]+(,/dev/[A-Za-z0-9_.:/+-]+)*")

FLAG = None  # an option that takes no value

# What every command may take.
_COMMON: dict[str, Check | None] = {"--devices": _DEVICES}
_REPORT: dict[str, Check | None] = {
    "-o": _FIELDS, "--options": _FIELDS, "-O": _SORT, "--sort": _SORT, "-S": _SELECT, "--select": _SELECT,
    "--reportformat": _choice("basic", "json", "json_std"), "--units": _matches(r"[bBsSkKmMgGtTpPeEhHrR]"),
    "--nosuffix": FLAG, "--noheadings": FLAG, "--separator": _choice("|", ",", ";", ":"),
    "--ignoreskippedcluster": FLAG,
}
_AUTOBACKUP: dict[str, Check | None] = {"-A": _YES_NO, "--autobackup": _YES_NO}
_FORCE: dict[str, Check | None] = {"-f": FLAG, "--force": FLAG, "-y": FLAG, "--yes": FLAG}
_TAGS: dict[str, Check | None] = {"--addtag": _TAG, "--deltag": _TAG}
_ACTIVATE: dict[str, Check | None] = {"-a": _choice("y", "n", "ay"), "--activate": _choice("y", "n", "ay"),
                                      "-an": FLAG, "-ay": FLAG}
_LV_SIZE: dict[str, Check | None] = {"-L": _SIZE, "--size": _SIZE, "-l": _EXTENTS, "--extents": _EXTENTS}
_PERMISSION: dict[str, Check | None] = {"-p": _choice("r", "rw"), "--permission": _choice("r", "rw")}

# Each command and the options it may take. vgcfgbackup takes none: its -f is --file.
COMMANDS: dict[str, dict[str, Check | None]] = {
    "pvs": _REPORT,
    "vgs": _REPORT,
    "lvs": _REPORT,
    "fullreport": _REPORT,
    "pvcreate": {**_FORCE, "-ff": FLAG, "--metadatasize": _SIZE, "--metadatacopies": _choice("0", "1", "2"),
                 "--metadataignore": _YES_NO, "--dataalignment": _SIZE, "-u": _UUID, "--uuid": _UUID,
                 "--norestorefile": FLAG},
    "pvremove": {**_FORCE, "-ff": FLAG},
    "pvresize": {"-y": FLAG, "--yes": FLAG},
    "vgcreate": {**_AUTOBACKUP, **_TAGS, "-s": _SIZE, "--physicalextentsize": _SIZE, "-y": FLAG, "--yes": FLAG,
                 "--setautoactivation": _YES_NO},  # n: a shared VG's LVs are not activated at boot
    "vgextend": {**_AUTOBACKUP, "-y": FLAG, "--yes": FLAG},
    "vgreduce": {**_AUTOBACKUP},
    "vgremove": {**_FORCE},
    "vgchange": {**_AUTOBACKUP, **_TAGS, **_ACTIVATE},
    "vgck": {},
    "vgcfgbackup": {},
    "lvcreate": {**_AUTOBACKUP, **_TAGS, **_ACTIVATE, **_LV_SIZE, **_PERMISSION, "-n": _NAME, "--name": _NAME,
                 "-Zn": FLAG, "-Zy": FLAG, "-Z": _YES_NO, "--zero": _YES_NO, "-W": _YES_NO,
                 "--wipesignatures": _YES_NO, "-C": _YES_NO, "--contiguous": _YES_NO, "-y": FLAG, "--yes": FLAG},
    "lvremove": {**_AUTOBACKUP, **_FORCE},
    "lvextend": {**_AUTOBACKUP, **_LV_SIZE, "--alloc": _choice("contiguous", "normal", "inherit")},
    "lvreduce": {**_AUTOBACKUP, **_LV_SIZE, **_FORCE},
    "lvchange": {**_AUTOBACKUP, **_TAGS, **_ACTIVATE, **_PERMISSION, "--refresh": FLAG},
    "lvrename": {**_AUTOBACKUP},
}


def check_name(what: str, name: object) -> str:
    """A VG or LV name LVM takes as it is, and none of the words LVM keeps for itself: the one rule for
    hsmd's LVM layer and supervdsmd's activation verbs."""
    if not isinstance(name, str) or not LVM_NAME.fullmatch(name) or any(word in name for word in RESERVED):
        raise InvalidParameterException(f"{what}={name!r}: not a valid LVM name")
    return name


def check_args(command: str, args: list) -> list[str]:
    """The arguments of `lvm <command>`, each option known to that command and its value checked."""
    allowed = {**_COMMON, **COMMANDS[command]}
    checked: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        if not isinstance(arg, str):
            raise InvalidParameterException(f"lvm argument {arg!r}: expected a string")
        position += 1
        if not arg.startswith("-"):
            checked.append(check_value("lvm argument", arg))
            continue
        if arg not in allowed:
            raise InvalidParameterException(f"lvm option {arg!r} is not allowed for {command}")
        checked.append(arg)
        check = allowed[arg]
        if check is FLAG:
            continue
        value = args[position] if position < len(args) else None
        if not isinstance(value, str) or not check(value):
            raise InvalidParameterException(f"lvm {command} {arg} {value!r}: not an acceptable value")
        checked.append(value)
        position += 1
    return checked


def lvm(command: str, args: list, config: str = "", timeout: float = 120.0) -> dict:
    if command not in COMMANDS:
        raise InvalidParameterException(f"lvm command {command!r} is not allowed")
    argv = ["lvm", command]
    if config:
        argv += ["--config", lvmconfig.canonical(config)]
    argv += check_args(command, args)
    return run(argv, timeout, env={"LVM_SUPPRESS_FD_WARNINGS": "1"})
