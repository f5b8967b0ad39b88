"""mount and umount under the repository's mount root only.

Every mount is nosuid,nodev,noexec: repositories hold images, data only. Mount
options are allowed per filesystem type, each with a checked value. A source
is what its type needs and no more: server:/export for network filesystems, a
block device under /dev or an image file under the loop roots for local ones,
a folder under the bind roots for `none` with `bind`.
"""

from __future__ import annotations

import os
import re
import stat

from hsm.errors import InvalidParameterException
from supervdsm.command import Check, check_path, run
from supervdsm.command import choice as _choice
from supervdsm.command import matches as _matches

FLAG = None  # an option without a value

FORCED = ("nosuid", "nodev", "noexec")
NETWORK_TYPES = frozenset({"nfs", "nfs4", "glusterfs", "cephfs"})
LOCAL_TYPES = frozenset({"ext4", "ext3", "xfs", "btrfs"})
VFS_TYPES = NETWORK_TYPES | LOCAL_TYPES | {"none"}

MOUNT_FAILED = 32  # mount(8)'s exit code for a failed mount
_NETWORK_SPEC = re.compile(r"^[A-Za-z0-9_.:\[\],-]+:/[A-Za-z0-9_./-]*$")


_NUMBER = _matches(r"[0-9]{1,10}")
_SIZE = _matches(r"[0-9]{1,10}[kKmMgG]?")
_HOSTS = _matches(r"[A-Za-z0-9_.:\[\]-]+(:[A-Za-z0-9_.\[\]-]+)*")
_WORD = _matches(r"[A-Za-z0-9_.-]{1,64}")

GENERIC: dict[str, Check | None] = {name: FLAG for name in (
    "ro", "rw", "noatime", "relatime", "nodiratime", "strictatime", "lazytime", "sync", "async", "dirsync",
    "_netdev", *FORCED)}
_NFS: dict[str, Check | None] = {
    **{name: FLAG for name in ("soft", "hard", "nosharecache", "sharecache", "lock", "nolock", "ac", "noac",
                               "rdirplus", "nordirplus", "cto", "nocto", "intr", "nointr")},
    "vers": _matches(r"[234](\.[0-2])?"), "nfsvers": _matches(r"[234](\.[0-2])?"),
    "minorversion": _choice("0", "1", "2"), "retrans": _NUMBER, "timeo": _NUMBER, "retry": _NUMBER,
    "port": _NUMBER, "mountport": _NUMBER, "rsize": _NUMBER, "wsize": _NUMBER, "actimeo": _NUMBER,
    "proto": _choice("tcp", "udp", "tcp6", "udp6", "rdma", "rdma6"),
    "mountproto": _choice("tcp", "udp", "tcp6", "udp6"),
    "sec": _choice("sys", "krb5", "krb5i", "krb5p"), "lookupcache": _choice("all", "none", "pos", "positive"),
    "local_lock": _choice("all", "flock", "posix", "none"), "clientaddr": _matches(r"[0-9A-Fa-f.:]{2,45}"),
}
_LOCAL: dict[str, Check | None] = {"loop": FLAG, "discard": FLAG, "nodiscard": FLAG}
OPTIONS: dict[str, dict[str, Check | None]] = {
    "nfs": _NFS,
    "nfs4": _NFS,
    # No log-file=: the helper would write it as root.
    "glusterfs": {"backup-volfile-servers": _HOSTS, "backupvolfile-server": _HOSTS,
                  "log-level": _choice("ERROR", "WARNING", "INFO", "DEBUG")},
    # No secretfile=: the helper would read any file as root and send it to the server.
    "cephfs": {"name": _WORD, "mds_namespace": _WORD, "fs": _WORD},
    "ext4": {**_LOCAL, "user_xattr": FLAG, "acl": FLAG, "noacl": FLAG,
             "errors": _choice("continue", "remount-ro"), "data": _choice("ordered", "writeback", "journal")},
    "ext3": {**_LOCAL, "user_xattr": FLAG, "acl": FLAG, "noacl": FLAG,
             "errors": _choice("continue", "remount-ro"), "data": _choice("ordered", "writeback", "journal")},
    "xfs": {**_LOCAL, "inode64": FLAG, "nouuid": FLAG, "largeio": FLAG, "swalloc": FLAG, "logbufs": _NUMBER,
            "logbsize": _SIZE, "allocsize": _SIZE},
    "btrfs": {**_LOCAL, "ssd": FLAG, "nossd": FLAG, "autodefrag": FLAG, "degraded": FLAG,
              "compress": _matches(r"(zlib|lzo|zstd)(:[0-9]{1,2})?|no"), "subvolid": _NUMBER,
              "subvol": _matches(r"/?[A-Za-z0-9_.@/-]{1,255}")},
    "none": {"bind": FLAG},
}


def check_options(vfs_type: str, options: str) -> list[str]:
    """The caller's options, each known to `vfs_type` with an acceptable value; suid, dev and exec refused."""
    if not isinstance(options, str):
        raise InvalidParameterException("options: expected a string")
    allowed = {**GENERIC, **OPTIONS[vfs_type]}
    checked = []
    for option in filter(None, options.split(",")):
        name, has_value, value = option.partition("=")
        if name not in allowed:
            raise InvalidParameterException(f"mount option {name!r} is not accepted for {vfs_type} "
                                            f"(every mount is {','.join(FORCED)})")
        check = allowed[name]
        if (check is FLAG) == bool(has_value) or (check is not FLAG and not check(value)):
            raise InvalidParameterException(f"mount option {option!r} is not acceptable for {vfs_type}")
        checked.append(option)
    return checked


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in map(os.path.realpath, roots))


class SourceMissing(Exception):
    """The source is allowed but not there: a failed mount (a server gone), not a refused call."""


def _open_source(what: str, spec: str, roots: list[str], kind: str) -> int:
    """An O_PATH descriptor of `spec`, a `kind` ('file' or 'folder') whose real place is under `roots`.

    mount is then given /proc/self/fd/N: the object checked is the one mounted,
    whatever is renamed or swapped for a symlink in between.
    """
    check_path("spec", spec)
    if not roots:
        raise InvalidParameterException(f"spec={spec!r}: no {what} roots are configured ([supervdsm] mount_sources)")
    real = os.path.realpath(spec)
    if not _under(real, roots):
        raise InvalidParameterException(f"spec={spec!r}: {what} sources must be under {', '.join(roots)}")
    try:
        fd = os.open(real, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceMissing(f"mount: {spec}: No such file or directory") from None
    except OSError as e:
        raise InvalidParameterException(f"spec={spec!r}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not _under(real, roots):
            raise InvalidParameterException(f"spec={spec!r}: {what} sources must be under {', '.join(roots)}")
        if not (stat.S_ISREG(mode) if kind == "file" else stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise InvalidParameterException(f"spec={spec!r}: expected a {kind}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _root_only(folder: str) -> bool:
    """Only root may change what `folder` holds (not /dev/shm): a checked path in it stays what it was."""
    st = os.lstat(folder)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def _block_device(spec: str) -> str:
    check_path("spec", spec)
    real = os.path.realpath(spec)
    folders = [os.path.dirname(real)]
    while folders[-1] != "/dev" and folders[-1].startswith("/dev/"):
        folders.append(os.path.dirname(folders[-1]))
    try:
        is_block = (real.startswith("/dev/") and stat.S_ISBLK(os.lstat(real).st_mode)
                    and all(_root_only(folder) for folder in folders))
    except OSError:
        is_block = False
    if not is_block:
        raise InvalidParameterException(f"spec={spec!r}: expected a block device under /dev, or an image file "
                                        f"under the loop roots with options=loop")
    return real


def mount(spec: str, mountpoint: str, vfs_type: str, options: str, root: str, timeout: float,
          loop_roots: list[str] | None = None, bind_roots: list[str] | None = None) -> dict:
    if vfs_type not in VFS_TYPES:
        raise InvalidParameterException(f"vfsType {vfs_type!r} is not one of {', '.join(sorted(VFS_TYPES))}")
    checked = check_options(vfs_type, options)
    if vfs_type not in NETWORK_TYPES:
        check_path("spec", spec)
    check_path("mountpoint", mountpoint, [root])
    if os.path.realpath(mountpoint) == os.path.realpath(root):
        raise InvalidParameterException(f"mountpoint={mountpoint!r}: expected a folder below {root}")
    try:
        source, fd, checked = _source(spec, vfs_type, checked, loop_roots or [], bind_roots or [])
    except SourceMissing as e:
        return {"rc": MOUNT_FAILED, "out": "", "err": str(e)}
    try:
        if fd is not None:
            source = f"/proc/self/fd/{fd}"
        os.makedirs(mountpoint, exist_ok=True)
        argv = ["mount", "--no-canonicalize", "-t", vfs_type,
                "-o", ",".join([option for option in checked if option not in FORCED] + list(FORCED))]
        return run(argv + ["--", source, mountpoint], timeout, pass_fds=() if fd is None else (fd,))
    finally:
        if fd is not None:
            os.close(fd)


def _source(spec: str, vfs_type: str, checked: list[str], loop_roots: list[str],
            bind_roots: list[str]) -> tuple[str, int | None, list[str]]:
    """(source, descriptor or None, options) of a mount: what mount is given, checked for its type."""
    names = {option.partition("=")[0] for option in checked}
    if vfs_type in NETWORK_TYPES:
        if not isinstance(spec, str) or not _NETWORK_SPEC.fullmatch(spec) or ".." in spec:
            raise InvalidParameterException(f"spec={spec!r}: expected server:/export")
        return spec, None, checked
    if vfs_type == "none":
        if "bind" not in names:
            raise InvalidParameterException("vfsType none: only a bind mount (options=bind)")
        return "", _open_source("bind", spec, bind_roots, "folder"), checked
    if "loop" in names or os.path.isfile(spec):  # mount loops a regular file by itself: the same rules
        fd = _open_source("loop", spec, loop_roots, "file")
        return "", fd, [option for option in checked if option != "loop"] + ["loop"]
    return _block_device(spec), None, checked


def umount(mountpoint: str, root: str, lazy: bool, force: bool, timeout: float) -> dict:
    check_path("mountpoint", mountpoint, [root])
    argv = ["umount"] + (["-l"] if lazy else []) + (["-f"] if force else [])
    return run(argv + ["--", mountpoint], timeout)
