"""mount and umount under the repository's mount root only."""

from __future__ import annotations

import os
import re

from hsm.errors import InvalidParameterException
from supervdsm.command import check_path, run

VFS_TYPES = frozenset({"nfs", "nfs4", "ext4", "ext3", "xfs", "btrfs", "glusterfs", "cephfs", "none"})
_OPTION = re.compile(r"^[A-Za-z0-9_]+(=[A-Za-z0-9_.:/-]+)?$")
_NFS_SPEC = re.compile(r"^[A-Za-z0-9_.:\[\]-]+:/[A-Za-z0-9_./-]*$")


def check_options(options: str) -> str:
    if not isinstance(options, str):
        raise InvalidParameterException("options: expected a string")
    for option in filter(None, options.split(",")):
        if not _OPTION.match(option) or option.startswith(("helper=", "uhelper=")):
            raise InvalidParameterException(f"mount option {option!r} is not acceptable")
    return options


def mount(spec: str, mountpoint: str, vfs_type: str, options: str, root: str, timeout: float) -> dict:
    if vfs_type not in VFS_TYPES:
        raise InvalidParameterException(f"vfsType {vfs_type!r} is not one of {', '.join(sorted(VFS_TYPES))}")
    if vfs_type.startswith("nfs"):
        if not isinstance(spec, str) or not _NFS_SPEC.match(spec) or ".." in spec:
            raise InvalidParameterException(f"spec={spec!r}: expected server:/export")
    else:
        check_path("spec", spec)
    check_path("mountpoint", mountpoint, [root])
    argv = ["mount", "-t", vfs_type]
    if options:
        argv += ["-o", check_options(options)]
    os.makedirs(mountpoint, exist_ok=True)
    return run(argv + ["--", spec, mountpoint], timeout)


def umount(mountpoint: str, root: str, lazy: bool, force: bool, timeout: float) -> dict:
    check_path("mountpoint", mountpoint, [root])
    argv = ["umount"] + (["-l"] if lazy else []) + (["-f"] if force else [])
    return run(argv + ["--", mountpoint], timeout)

