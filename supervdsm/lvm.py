"""The lvm verb: one lvm command, the caller's --config string, allow-listed options."""

from __future__ import annotations

from hsm.errors import InvalidParameterException
from supervdsm.command import check_value, run

COMMANDS = frozenset({
    "pvcreate", "pvremove", "pvresize", "pvs", "vgcreate", "vgextend", "vgreduce", "vgremove", "vgchange",
    "vgs", "vgck", "vgcfgbackup", "lvcreate", "lvremove", "lvextend", "lvreduce", "lvchange", "lvrename",
    "lvs", "fullreport",
})
# Options a caller may pass; --config comes only through the `config` argument.
OPTIONS = frozenset({
    "-L", "--size", "-l", "--extents", "-n", "--name", "-an", "-ay", "-Zn", "-Zy", "-f", "--force", "-y", "--yes",
    "-p", "--permission", "--addtag", "--deltag", "-o", "--options", "-O", "--sort", "--reportformat",
    "--units", "--nosuffix", "--noheadings", "--separator", "--ignoreskippedcluster", "-s", "--physicalextentsize",
    "--metadatasize", "--dataalignment", "-u", "--uuid", "--norestorefile", "--autobackup", "--select", "-S",
})
# Settings that name programs lvm would run as root: never from a caller.
_FORBIDDEN_CONFIG = ("executable", "dmeventd", "_check", "_repair", "_dump", "_restore")


def check_config(config: str) -> str:
    if not isinstance(config, str) or "\n" in config or "\0" in config:
        raise InvalidParameterException("config: expected one line of LVM configuration")
    lowered = config.lower()
    for word in _FORBIDDEN_CONFIG:
        if word in lowered:
            raise InvalidParameterException(f"config: settings with {word!r} are not accepted")
    return config


def lvm(command: str, args: list, config: str = "", timeout: float = 120.0) -> dict:
    if command not in COMMANDS:
        raise InvalidParameterException(f"lvm command {command!r} is not allowed")
    argv = ["lvm", command]
    if config:
        argv += ["--config", check_config(config)]
    for arg in args:
        if not isinstance(arg, str):
            raise InvalidParameterException(f"lvm argument {arg!r}: expected a string")
        if arg.startswith("-"):
            if arg not in OPTIONS:
                raise InvalidParameterException(f"lvm option {arg!r} is not allowed")
        else:
            check_value("lvm argument", arg)
        argv.append(arg)
    return run(argv, timeout, env={"LVM_SUPPRESS_FD_WARNINGS": "1"})
